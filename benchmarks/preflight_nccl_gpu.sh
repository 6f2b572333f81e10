#!/usr/bin/env bash
# The NCCL pre-flight on real GPUs, started exactly as the data plane starts it: the rendered
# run.sbatch itself, unmodified, runs `--preflight-nccl-only` with runtime `none`, and only
# SLURM's commands are stand-ins (srun, scontrol, `hostname -s`), so N "nodes" are N task
# groups of one host, one GPU each, rendezvousing over loopback. Everything between the
# driver and the check (the copy of slurm-sglang/preflight_nccl.py into the log directory,
# the port choice, preflight_nccl_node's arguments, fabric_setup's environment, rank_launch,
# the verdicts and the head's table) is the script's own code. docs/performance.md has the
# figures.
#
#   benchmarks/preflight_nccl_gpu.sh render DIR [REV]  # here: one run.sbatch per profile below,
#                                                      # from the working tree or commit REV
#   benchmarks/preflight_nccl_gpu.sh run DIR CASE...   # on the GPU machine; CASE = KIND:NODES
#
# KIND (the profile: runtime none, python3, fabric tcp on `lo` unless said):
#   nvlink   NCCL's default paths (NVLink between the GPUs of the host)
#   tcp      fabric.env NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1: NCCL's socket transport, the
#            path that crosses a TCP network between real nodes (as measured on 2026-11-25)
#   badif    fabric.env NCCL_SOCKET_IFNAME=xyz0 on every node
#   badif1   NCCL_SOCKET_IFNAME=xyz0 on node 1 only (a profile activation line sets it there)
#   shared   every node is given GPU 0 (NCCL refuses two ranks on one GPU)
#   nojoin   the last node's check task never starts (SLURM_SGLANG_PREFLIGHT_NCCL_JOIN_TIMEOUT=10)
# NODES: how many one-GPU nodes (default 2); node i gets GPU i modulo the GPUs present.
# nvlink and tcp need NODES <= the GPUs present (else the case is skipped, saying so).
#
# Environment: SLURM_SGLANG_PREFLIGHT_NCCL_SIZES (the script's own knob; default here
# 1M,16M,64M,256M,1G to compare with 2026-11-25), OUT (logs are copied there when set).
# NVLink multicast stays off: NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# NVSHMEM_DISABLE_NVLS=1 are exported for every case.
set -Eeuo pipefail

KINDS=(nvlink tcp badif badif1)

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

# profile KIND: the cluster profile that case renders with.
profile() {
  cat <<'EOF'
name: preflight-gpu
description: runtime none on one host, tcp fabric on lo (benchmarks/preflight_nccl_gpu.sh)
slurm:
  gpus_per_node: 1
  exclusive: false
container:
  runtime: none
  python: python3
EOF
  case $1 in
    badif1) printf '  activate:\n    - %s\n' \
      "'if [[ \${SLURM_NODEID:-0} == 1 ]]; then export NCCL_SOCKET_IFNAME=xyz0; fi'" ;;
  esac
  printf 'fabric:\n  kind: tcp\n  socket_interface: lo\n'
  case $1 in
    tcp) printf '  env:\n    NCCL_P2P_DISABLE: "1"\n    NCCL_SHM_DISABLE: "1"\n' ;;
    badif) printf '  env:\n    NCCL_SOCKET_IFNAME: xyz0\n' ;;
  esac
}

render() {
  local dir=$1 rev=${2:-} kind repo src
  repo=$(cd "$(dirname "$0")/.." && pwd)
  src=${repo}
  mkdir -p "${dir}"
  dir=$(cd "${dir}" && pwd)
  if [[ -n ${rev} ]]; then
    # A commit's own code, whatever the working tree holds; its templates/ is found as the
    # package slurm_sglang.templates, as a wheel installs it.
    src=$(mktemp -d "${TMPDIR:-/tmp}/preflight-gpu-src.XXXXXX")
    git -C "${repo}" archive "${rev}" | tar -x -C "${src}"
    ln -s ../templates "${src}/slurm_sglang/templates"
    git -C "${repo}" rev-parse "${rev}" >"${dir}/REVISION"
  else
    echo "working tree of $(git -C "${repo}" rev-parse HEAD)" >"${dir}/REVISION"
  fi
  for kind in "${KINDS[@]}"; do
    profile "${kind}" >"${dir}/${kind}.yaml"
    mkdir -p "${dir}/${kind}"
    (cd "${src}" && "${PYTHON:-${repo}/.venv/bin/python}" -m slurm_sglang render \
      --cluster "${dir}/${kind}.yaml" -o "${dir}/${kind}/run.sbatch")
    # render -o copies the check beside the script, as users get it.
    [[ -f ${dir}/${kind}/slurm-sglang/preflight_nccl.py ]] || {
      echo "render wrote no slurm-sglang/preflight_nccl.py beside ${dir}/${kind}/run.sbatch" >&2
      exit 1
    }
  done
  [[ ${src} == "${repo}" ]] || rm -rf "${src}"
  echo "rendered into ${dir} from $(cat "${dir}/REVISION"): ${KINDS[*]}" >&2
}

# stubs DIR: srun, scontrol and hostname as SLURM would answer for this fake allocation.
stubs() {
  local bin=$1/bin
  mkdir -p "${bin}"
  # srun [options] COMMAND...: COMMAND once per node of --nodelist (default: every node), in
  # parallel, with the variables a task of SLURM gets and, as srun does by default, srun's
  # stdin copied to every task (the job's step reads the driver's commands there); exit
  # status: the worst task's.
  cat >"${bin}/srun" <<'EOF'
#!/usr/bin/env bash
nodelist="" code=0
pids=() inputs=()
fifos=$(mktemp -d "${TMPDIR:-/tmp}/fake-srun.XXXXXX")
while (($#)) && [[ $1 == -* ]]; do
  case $1 in
    --nodelist=*) nodelist=${1#*=} ;;
    --help) exit 0 ;;
  esac
  shift
done
IFS=, read -ra all <<<"${SLURM_JOB_NODELIST}"
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
for i in "${!all[@]}"; do
  node=${all[i]}
  [[ -z ${nodelist} || ,${nodelist}, == *,${node},* ]] || continue
  # A node whose check task never starts (the other steps reach it).
  [[ ,${FAKE_SLURM_DEAD:-}, != *,${node},* || $* != *preflight_nccl_node* ]] || continue
  gpu=$((i % ${FAKE_SLURM_GPUS:-1}))
  ((FAKE_SLURM_SHARED_GPU)) && gpu=0
  mkfifo "${fifos}/${i}"
  inputs+=("${fifos}/${i}")
  SLURM_NODEID=${i} SLURM_PROCID=${i} SLURM_LOCALID=0 SLURMD_NODENAME=${node} \
    SLURM_STEP_GPUS=${gpu} SLURM_STEPID=0 "$@" <"${fifos}/${i}" &
  pids+=($!)
done
# A task that ends early closes its copy; the others keep theirs (-p).
tee -p "${inputs[@]}" >/dev/null <&0 &
for i in "${pids[@]}"; do wait "${i}" || { c=$?; ((c > code)) && code=${c}; }; done
rm -rf "${fifos}"
exit "${code}"
EOF
  cat >"${bin}/scontrol" <<'EOF'
#!/usr/bin/env bash
[[ $1 == show && $2 == hostnames ]] || exit 1
tr ',' '\n' <<<"$3"
EOF
  cat >"${bin}/hostname" <<EOF
#!/usr/bin/env bash
if [[ \$1 == -s && -n \${SLURMD_NODENAME:-} ]]; then echo "\${SLURMD_NODENAME}"; exit 0; fi
exec $(command -v hostname) "\$@"
EOF
  if ! command -v ip >/dev/null; then
    # resolve_node_address reads lo's address with `ip -4 -o addr show dev lo`.
    echo "preflight_nccl_gpu: no ip command here: a stand-in answers for lo (127.0.0.1)" >&2
    printf '#!/bin/sh\necho "1: lo    inet 127.0.0.1/8 scope host lo"\n' >"${bin}/ip"
  fi
  chmod +x "${bin}"/*
}

# one_case DIR KIND NODES JOBID: run.sbatch --preflight-nccl-only on NODES fake nodes.
one_case() {
  local dir=$1 kind=$2 nodes=$3 job=$4 profile_kind=$2 i list="" work start code=0 gpus
  local -a extra=()
  case ${kind} in
    shared | nojoin) profile_kind=nvlink ;;
  esac
  gpus=${PREFLIGHT_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}
  if [[ ${kind} == nvlink || ${kind} == tcp ]] && ((nodes > gpus)); then
    printf '\n=== %s:%s skipped: %s GPU(s) here, one per node needed\n' "${kind}" "${nodes}" "${gpus}"
    return 0
  fi
  for ((i = 0; i < nodes; i++)); do list+="${list:+,}node${i}"; done
  work=$(mktemp -d "${TMPDIR:-/tmp}/preflight-gpu.XXXXXX")
  extra=(FAKE_SLURM_SHARED_GPU=0 FAKE_SLURM_DEAD=)
  export FAKE_SLURM_GPUS=$((gpus > 0 ? gpus : 1))
  [[ ${kind} != shared ]] || extra=(FAKE_SLURM_SHARED_GPU=1 FAKE_SLURM_DEAD=)
  [[ ${kind} != nojoin ]] ||
    extra=(FAKE_SLURM_SHARED_GPU=0 "FAKE_SLURM_DEAD=node$((nodes - 1))" SLURM_SGLANG_PREFLIGHT_NCCL_JOIN_TIMEOUT=10)
  printf '\n=== %s:%s (profile %s, job %s, nodes %s)\n' "${kind}" "${nodes}" "${profile_kind}" "${job}" "${list}"
  start=${EPOCHREALTIME}
  # The command line each node's check runs with, read off the process table once it starts.
  (local want=${nodes} seen
    [[ ${kind} != nojoin ]] || want=$((nodes - 1))
    for ((i = 0; i < 300; i++)); do
      seen=$(pgrep -af "${work}/logs/${job}/preflight_nccl[.]py --nnodes" | grep -v -- --worker- || true)
      [[ $(grep -c . <<<"${seen}") -le $(grep -c . "${work}/argv.txt" 2>/dev/null || echo 0) ]] ||
        printf '%s\n' "${seen}" >"${work}/argv.txt"
      (($(grep -c . <<<"${seen}") < want)) || break
      sleep 0.1
    done) &
  env "${extra[@]}" PATH="${dir}/bin:${PATH}" SLURM_JOB_ID="${job}" SLURM_JOB_NODELIST="${list}" \
    SLURM_JOB_NUM_NODES="${nodes}" SLURM_NNODES="${nodes}" SLURM_GPUS_PER_NODE=1 \
    bash "${dir}/${profile_kind}/run.sbatch" --preflight-nccl-only --workspace "${work}" || code=$?
  start=$(((${EPOCHREALTIME/[.,]/} - ${start/[.,]/}) / 100000))
  printf '=== %s:%s exit %s after %d.%d s (the whole script, torch imports included)\n' \
    "${kind}" "${nodes}" "${code}" $((start / 10)) $((start % 10))
  wait
  # What each node ran with and printed.
  sed 's/^[0-9]* /argv: /' "${work}/argv.txt" 2>/dev/null || true
  for i in "${work}"/logs/"${job}"/preflight-nccl-*.log; do
    [[ -f ${i} ]] || continue
    printf -- '--- %s\n' "${i##*/}"
    grep -E '^(preflight|  [A-Z_]+=|    size|  +[0-9]+[KMG] )|FAILED|Traceback' "${i}" | head -n 40 || true
  done
  if [[ -n ${OUT:-} ]]; then
    tar -C "${work}/logs" -czf "${OUT}/logs-${kind}-${nodes}.tgz" "${job}" 2>/dev/null || true
  fi
}

run() {
  local dir=$1 case kind nodes job=9100
  shift
  dir=$(cd "${dir}" && pwd)
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  export SLURM_SGLANG_PREFLIGHT_NCCL_SIZES=${SLURM_SGLANG_PREFLIGHT_NCCL_SIZES:-1M,16M,64M,256M,1G}
  stubs "${dir}"
  for case in "$@"; do
    kind=${case%%:*}
    nodes=2
    [[ ${case} != *:* ]] || nodes=${case#*:}
    case ${kind} in
      nvlink | tcp | badif | badif1 | shared | nojoin) ;;
      *) echo "unknown case ${case}" >&2; exit 2 ;;
    esac
    one_case "${dir}" "${kind}" "${nodes}" "$((job++))"
  done
}

case ${1:-} in
  render) (($# == 2 || $# == 3)) || usage; shift; render "$@" ;;
  run) (($# >= 3)) || usage; shift; run "$@" ;;
  *) usage ;;
esac
