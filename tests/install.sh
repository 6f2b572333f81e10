#!/usr/bin/env bash
# install.sh: what the demo and the tests need on this machine (root, Debian 12), and nothing by
# hand. One package list serves tests/demo.sh and tests/run.sh. Python packages go into a virtual
# environment (default: .venv in the checkout; SLURM_SGLANG_VENV=DIR to choose another), made with
# the first python3 on PATH, so Debian's own python3 (which refuses `pip install`) works as well
# as any other. Prints the venv's python as its last line.
#
# Usage: bash tests/install.sh [--tests]   (--tests adds what only the tests use: CPU torch for
#                                          the NCCL/gloo pre-flight, sglang's real argument parser
#                                          and its benchmark client)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly VENV=${SLURM_SGLANG_VENV:-${REPO}/.venv}
# The sandbox (SLURM, munge, podman with catatonit for `podman run --init`), the tests' own tools
# (shellcheck, sshd, prometheus to scrape a job), and python3-venv for the virtual environment.
readonly APT_PACKAGES=(slurmctld slurmd slurm-client munge podman runc catatonit pigz debootstrap
  iproute2 iptables curl util-linux mount procps shellcheck openssh-server openssh-client
  python3 python3-venv prometheus)

err() {
  printf 'tests/install.sh: %s\n' "$*" >&2
}

install_apt_packages() {
  local missing=() package
  for package in "${APT_PACKAGES[@]}"; do
    # dpkg-query answers in one word; `dpkg -s | grep -q` under pipefail failed on SIGPIPE.
    [[ $(dpkg-query -W -f='${Status}' "${package}" 2>/dev/null) == "install ok installed" ]] \
      || missing+=("${package}")
  done
  ((${#missing[@]})) || return 0
  err "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
}

make_venv() {
  if [[ ! -x ${VENV}/bin/python ]] || ! "${VENV}/bin/python" -m pip --version >/dev/null 2>&1; then
    err "creating the virtual environment ${VENV} with $(command -v python3)"
    rm -rf "${VENV}"
    python3 -m venv "${VENV}"
  fi
}

install_python_packages() {
  local tests=$1 pip=("${VENV}/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" -e "${REPO}[test,plot]"
  ((tests)) || return 0
  # CPU torch for the NCCL/gloo pre-flight tests (this machine kind keeps a CPU wheel of 2.13.0).
  "${VENV}/bin/python" -c 'import torch' 2>/dev/null || "${pip[@]}" torch==2.13.0
  # sglang's real argument parser, without its GPU dependencies (its own cached venv).
  bash "${REPO}/tests/sglang_parser/install.sh" >/dev/null
  # sglang's own benchmark client for `bench` (a cached venv on top of the parser's).
  bash "${REPO}/tests/sglang_bench/install.sh" >/dev/null
}

main() {
  local tests=0
  [[ ${1:-} == --tests ]] && tests=1
  [[ $(id -u) == 0 ]] || { err "run as root: it installs Debian packages"; exit 2; }
  install_apt_packages
  make_venv
  install_python_packages "${tests}"
  echo "${VENV}/bin/python"
}

main "$@"
