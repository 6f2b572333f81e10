#!/usr/bin/env bash
# run.sh: every test of slurm-sglang on this machine (root, Debian 12).
# Installs what the tests need (tests/install.sh: apt, and pip into .venv), brings the local SLURM
# sandbox up (4 nodes, each in its own network namespace), runs the unit and integration tests, and brings the sandbox down
# again, also on failure. Arguments go to pytest (e.g. bash tests/run.sh -k data_plane).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
PYTHON=

err() {
  printf 'tests/run.sh: %s\n' "$*" >&2
}

# run_from_node_visible_copy ARGS...: the sandbox gives each node its own /tmp, as real nodes
# have; a checkout under /tmp would be invisible to the jobs (submitit imports this package
# there), so the tests run from a copy under /var/tmp instead.
run_from_node_visible_copy() {
  local copy=/var/tmp/slurm-sglang-checkout
  case ${REPO} in
    /tmp | /tmp/*)
      err "the checkout is under /tmp, which the sandbox's nodes do not share: running from ${copy}"
      rm -rf "${copy}"
      mkdir -p "${copy}"
      cp -a "${REPO}/." "${copy}/"
      exec bash "${copy}/tests/run.sh" "$@"
      ;;
  esac
}

main() {
  [[ $(id -u) == 0 ]] || { err "run as root: the sandbox creates network namespaces and runs slurmd"; exit 2; }
  run_from_node_visible_copy "$@"
  cd "${REPO}"
  local started=${SECONDS} code=0
  PYTHON=$(bash "${REPO}/tests/install.sh" --tests)
  err "packages ready after $((SECONDS - started)) s (python: ${PYTHON})"
  "${PYTHON}" -m slurm_sglang sandbox up --nodes 4
  trap '"${PYTHON}" -m slurm_sglang sandbox down || true' EXIT
  err "sandbox up after $((SECONDS - started)) s"
  "${PYTHON}" -m pytest -p no:cacheprovider "$@" tests || code=$?
  err "tests finished after $((SECONDS - started)) s with code ${code}"
  return "${code}"
}

main "$@"
