#!/usr/bin/env bash
# Installs what sglang 0.5.23's serving benchmark client needs on top of the parser venv.
#
# Usage: tests/sglang_bench/install.sh [VENV_DIR]
#   VENV_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/slurm-sglang/sglang-0.5.23-bench.
# Prints the venv's python last. A venv that an earlier run completed is reused as is.
#
# The parser venv (tests/sglang_parser/install.sh) already holds sglang, CPU torch and
# triton (about 2 GB). This venv sees them through a .pth file instead of installing them
# again, and adds only the packages `import sglang.benchmark.serving` still missed (found by
# importing until it stopped failing). Its own packages sit in front of the parser's on
# sys.path, so nothing here changes what the parser venv resolves.
set -Eeuo pipefail

readonly SGLANG_VERSION="0.5.23"
readonly CACHE="${XDG_CACHE_HOME:-${HOME}/.cache}/slurm-sglang"
readonly DEFAULT_VENV="${CACHE}/sglang-${SGLANG_VERSION}-bench"
readonly BENCH_PACKAGES=(
  "transformers==5.19.0"
  "datasets==5.0.1"
  # The release for torch 2.13.0; unpinned it pulls a CUDA torch. Only PyPI's CUDA build is
  # reachable here (the CPU build lives on download.pytorch.org): see cpu_only_torchvision.
  "torchvision==0.28.0"
  "apache-tvm-ffi"
  "sentencepiece"
  "compressed-tensors"
  "gguf"
  # The picture `bench --plot` draws.
  "matplotlib"
)
readonly COMPLETE_MARKER=".slurm-sglang-bench-complete"
readonly HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

err() {
  echo "install.sh: $*" >&2
}

marker_text() {
  printf '%s\n' "sglang==${SGLANG_VERSION}" "$1" "${BENCH_PACKAGES[@]}"
}

# sglang imports torchvision only for image transforms of multimodal configs; the client never
# runs a torchvision operator. PyPI's build ships a CUDA extension that cannot load against CPU
# torch, and then registers fake kernels for operators that were never defined, so the import
# fails. Without the extension, and with those two registrations made conditional (as the
# file's other registrations already are), the pure-Python part imports.
cpu_only_torchvision() {
  local site="$1"
  rm -f "${site}/torchvision/_C.so"
  sed -i 's|^@torch.library.register_fake("torchvision::\([a-z]*\)")$|@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))|' \
    "${site}/torchvision/_meta_registrations.py"
}

main() {
  local venv_dir="${1:-${DEFAULT_VENV}}"
  local parser_python parser_site
  parser_python="$(bash "${HERE}/../sglang_parser/install.sh" | tail -n 1)"
  parser_site="$("${parser_python}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [[ -x "${venv_dir}/bin/python" && -f "${venv_dir}/${COMPLETE_MARKER}" ]] \
      && [[ "$(cat "${venv_dir}/${COMPLETE_MARKER}")" == "$(marker_text "${parser_site}")" ]]; then
    err "reusing ${venv_dir}"
  else
    err "installing sglang ${SGLANG_VERSION}'s benchmark client into ${venv_dir}"
    rm -rf "${venv_dir}"
    "${parser_python}" -m venv --without-pip "${venv_dir}"
    local own_site
    own_site="$("${venv_dir}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "${parser_site}" > "${own_site}/zz-sglang-parser.pth"
    # The parser venv's pip, pointed at this venv: it sees torch through the .pth and keeps it.
    "${parser_python}" -m pip install --quiet --disable-pip-version-check \
      --prefix "${venv_dir}" "${BENCH_PACKAGES[@]}"
    cpu_only_torchvision "${own_site}"
  fi
  if ! "${venv_dir}/bin/python" -c 'import sglang.benchmark.serving' >/dev/null; then
    err "sglang.benchmark.serving does not import in ${venv_dir}"
    exit 1
  fi
  marker_text "${parser_site}" > "${venv_dir}/${COMPLETE_MARKER}"
  echo "${venv_dir}/bin/python"
}

main "$@"
