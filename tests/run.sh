#!/usr/bin/env bash
# run.sh: every test of slurm-sglang on this machine (root, Debian 12).
# Installs what the tests need (apt and pip), brings the local SLURM sandbox up (4 nodes, each in
# its own network namespace), runs the unit and integration tests, and brings the sandbox down
# again, also on failure. Arguments go to pytest (e.g. bash tests/run.sh -k data_plane).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly APT_PACKAGES=(slurmctld slurmd slurm-client munge podman runc catatonit pigz shellcheck
  openssh-server openssh-client debootstrap iproute2 iptables curl util-linux procps)

err() {
  printf 'tests/run.sh: %s\n' "$*" >&2
}

install_packages() {
  local missing=() package
  for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "${package}" >/dev/null 2>&1 || missing+=("${package}")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  python3 -m pip install -q -e "${REPO}[test]"
  # CPU torch for the NCCL/gloo pre-flight tests (a local wheel on this kind of machine).
  python3 -c 'import torch' 2>/dev/null || python3 -m pip install -q torch==2.13.0
  # sglang's real argument parser, without its GPU dependencies (cached venv).
  bash "${REPO}/tests/sglang_parser/install.sh" >/dev/null
  if [[ -f ${REPO}/tests/router/install.sh ]]; then
    bash "${REPO}/tests/router/install.sh" >/dev/null
  fi
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
  install_packages
  err "packages ready after $((SECONDS - started)) s"
  python3 -m slurm_sglang sandbox up --nodes 4
  trap 'python3 -m slurm_sglang sandbox down || true' EXIT
  err "sandbox up after $((SECONDS - started)) s"
  python3 -m pytest -p no:cacheprovider "$@" tests || code=$?
  err "tests finished after $((SECONDS - started)) s with code ${code}"
  return "${code}"
}

main "$@"
