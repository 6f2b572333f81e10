#!/usr/bin/env bash
# Installs sglang's real argument parser, without its GPU dependencies, into a venv.
#
# Usage: tests/sglang_parser/install.sh [VENV_DIR]
#   VENV_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/slurm-sglang/sglang-0.5.23-parser.
# A venv that an earlier run completed is reused as is. Prints the venv's python last.
#
# `pip install sglang` pulls several GB (CUDA torch, kernels). The parser needs far less:
# sglang itself with --no-deps, CPU torch, and the packages below, each one found by
# importing `sglang.srt.server_args` until it stopped failing. triton is the big one
# (about 1 GB installed): sglang.srt.utils.common imports it at module level.
set -Eeuo pipefail

readonly SGLANG_VERSION="0.5.23"
readonly DEFAULT_VENV="${XDG_CACHE_HOME:-${HOME}/.cache}/slurm-sglang/sglang-${SGLANG_VERSION}-parser"
# What `from sglang.srt.server_args import prepare_server_args` imports, and nothing more.
readonly PARSER_PACKAGES=(
  "torch==2.13.0"
  "triton==3.8.0"
  "numpy==2.4.6"
  "orjson==3.13.0"
  "psutil==7.2.2"
  "pybase64==1.5.1"
  "requests==2.34.2"
  "packaging==26.4"
  "pillow==13.0.0"
  "starlette==1.10.0"
  "msgspec==0.22.0"
  "pyzmq==27.3.0"
  "tqdm==4.70.1"
  "ipython==9.18.1"
  "pydantic==2.14.4"
  "aiohttp==3.14.5"
  # Not imported by the module, but by prepare_server_args when the argv has --config.
  "pyyaml==6.0.3"
)
readonly COMPLETE_MARKER=".slurm-sglang-parser-complete"

err() {
  echo "install.sh: $*" >&2
}

marker_text() {
  printf '%s\n' "sglang==${SGLANG_VERSION}" "${PARSER_PACKAGES[@]}"
}

is_complete() {
  local venv_dir="$1"
  [[ -x "${venv_dir}/bin/python" && -f "${venv_dir}/${COMPLETE_MARKER}" ]] \
    && [[ "$(cat "${venv_dir}/${COMPLETE_MARKER}")" == "$(marker_text)" ]]
}

install_parser() {
  local venv_dir="$1"
  rm -rf "${venv_dir}"
  mkdir -p "$(dirname "${venv_dir}")"
  python3 -m venv "${venv_dir}"
  local pip=("${venv_dir}/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" "${PARSER_PACKAGES[@]}"
  # --no-deps: sglang's own requirements are the GPU stack this script exists to avoid.
  "${pip[@]}" --no-deps "sglang==${SGLANG_VERSION}"
}

check_import() {
  local venv_dir="$1"
  "${venv_dir}/bin/python" -c \
    'from sglang.srt.server_args import prepare_server_args; import sglang; print(sglang.__version__)'
}

main() {
  local venv_dir="${1:-${DEFAULT_VENV}}"
  if is_complete "${venv_dir}"; then
    err "reusing ${venv_dir}"
  else
    err "installing sglang ${SGLANG_VERSION}'s parser into ${venv_dir}"
    install_parser "${venv_dir}"
  fi
  local version
  if ! version="$(check_import "${venv_dir}")"; then
    err "sglang.srt.server_args does not import in ${venv_dir}"
    exit 1
  fi
  if [[ "${version}" != "${SGLANG_VERSION}" ]]; then
    err "expected sglang ${SGLANG_VERSION}, found ${version} in ${venv_dir}"
    exit 1
  fi
  marker_text > "${venv_dir}/${COMPLETE_MARKER}"
  echo "${venv_dir}/bin/python"
}

main "$@"
