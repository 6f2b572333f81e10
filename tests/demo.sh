#!/usr/bin/env bash
# demo.sh: the local demo (root, Debian 12). Installs what it needs (tests/install.sh), brings a 2-node SLURM sandbox
# up on this machine, serves the sglang stand-in across both nodes with --tp 2 through
# sbatch/run.sbatch under salloc, prints the ready line and one chat completion, then releases
# the allocation. The sandbox stays up: `.venv/bin/python -m slurm_sglang sandbox down` removes it.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO

main() {
  [[ $(id -u) == 0 ]] || { echo "demo.sh: run as root (the sandbox creates network namespaces)" >&2; exit 2; }
  cd "${REPO}"
  local python
  python=$(bash "${REPO}/tests/install.sh")
  if ! "${python}" -m slurm_sglang sandbox status >/dev/null 2>&1; then
    "${python}" -m slurm_sglang sandbox up --nodes 2
  fi
  "${python}" -m slurm_sglang sandbox demo
}

main "$@"
