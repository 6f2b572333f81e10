#!/usr/bin/env bash
# The floor launcher: the least a launcher can do to serve sglang across the nodes of a SLURM
# allocation with podman, as the yardstick for run.sbatch's time to ready
# (benchmarks/ready_vs_floor.py; issue 24, item 5).
#
# Inside an allocation it runs ONE srun over all nodes, one task per node; each task starts one
# container running sglang with the given arguments plus --nnodes, --node-rank, --dist-init-addr
# (the head's address), --host and --port; the head's task polls its own /health and prints
# "ready: http://HEAD_IP:PORT". No pre-flight, no image check or load (the image must already
# be on every node), no port choice, no supervision beyond srun's own. Each task removes its
# container when it ends, however it ends. The containers' output goes to
# DIR/floor-JOB-RANK.log with --log-dir (a directory every node sees), else to stderr.
#
# Run (inside an allocation):
#   salloc -N 2 -p sandbox bash benchmarks/floor_launcher.sh --image REF [--mount DIR]... \
#     [--port 30000] [--dist-port 20000] [--log-dir DIR] -- --model-path PATH --tp 2
# Containers are named slurm-sglang-floor-JOB-RANK and labelled slurm-sglang-floor.job=JOB
# (never the toolkit's own slurm-sglang.* labels, so neither cleans up the other's).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# floor_task SGLANG_ARGS...: one node's task; its container is removed on the way out.
floor_task() {
  set -euo pipefail
  local name="slurm-sglang-floor-${SLURM_JOB_ID}-${SLURM_NODEID}" mount var code=0 pid log=/dev/stderr
  local -a run_args mounts
  # TERM from srun or scancel: leave through the EXIT trap, which removes the container
  # (sglang's workers ignore SIGTERM, so the container is stopped at once, not asked).
  trap 'exit 143' TERM INT HUP
  trap 'podman rm -f -t 0 "${name}" >/dev/null 2>&1 || true' EXIT
  run_args=(run --rm --init --name "${name}" --label "slurm-sglang-floor.job=${SLURM_JOB_ID}"
    --net=host --ipc=host)
  mapfile -t mounts <<<"${FLOOR_MOUNTS}"
  for mount in "${mounts[@]}"; do
    [[ -z ${mount} ]] || run_args+=(-v "${mount}:${mount}")
  done
  # The same settings reach the container as under run.sbatch: sglang's by name, and the GPUs
  # SLURM gave this step (the sandbox's GPUs mode "env").
  while IFS= read -r var; do
    case ${var} in SGLANG_*) run_args+=(--env "${var}") ;; esac
  done < <(compgen -e)
  if [[ -n ${SLURM_STEP_GPUS:-${CUDA_VISIBLE_DEVICES:-}} ]]; then
    export CUDA_VISIBLE_DEVICES=${SLURM_STEP_GPUS:-${CUDA_VISIBLE_DEVICES}}
    run_args+=(--env CUDA_VISIBLE_DEVICES)
  fi
  # A file like run.sbatch's rank logs: the ranks' chatter stays off srun's own output path.
  [[ -z ${FLOOR_LOG_DIR} ]] || log="${FLOOR_LOG_DIR}/floor-${SLURM_JOB_ID}-${SLURM_NODEID}.log"
  podman "${run_args[@]}" "${FLOOR_IMAGE}" python3 -m sglang.launch_server "$@" \
    --nnodes "${SLURM_JOB_NUM_NODES}" --node-rank "${SLURM_NODEID}" \
    --dist-init-addr "${FLOOR_HEAD_IP}:${FLOOR_DIST_PORT}" --host 0.0.0.0 \
    --port "${FLOOR_PORT}" </dev/null >>"${log}" 2>&1 &
  pid=$!
  if ((SLURM_NODEID == 0)); then
    # Every 0.1 s, as run.sbatch's head does, so the two detect readiness alike.
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
      "http://127.0.0.1:${FLOOR_PORT}/health" || true) == 200 ]]; do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "${pid}" 2>/dev/null && printf 'ready: http://%s:%s\n' "${FLOOR_HEAD_IP}" "${FLOOR_PORT}"
  fi
  wait "${pid}" || code=$?
  exit "${code}"
}

main() {
  local head
  FLOOR_IMAGE="" FLOOR_MOUNTS="" FLOOR_PORT=30000 FLOOR_DIST_PORT=20000 FLOOR_LOG_DIR=""
  while (($#)); do
    case $1 in
      --image) FLOOR_IMAGE=$2; shift 2 ;;
      --mount) FLOOR_MOUNTS+="$2"$'\n'; shift 2 ;;
      --port) FLOOR_PORT=$2; shift 2 ;;
      --dist-port) FLOOR_DIST_PORT=$2; shift 2 ;;
      --log-dir) FLOOR_LOG_DIR=$2; shift 2 ;;
      --) shift; break ;;
      -h | --help) usage ;;
      *) printf 'floor_launcher: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
  done
  [[ -n ${FLOOR_IMAGE} && -n ${SLURM_JOB_ID:-} ]] || usage
  # The head is the allocation's first node, as SLURM_NODEID 0 is; its address is looked up
  # here once, so that one srun is all the launch needs.
  head=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
  FLOOR_HEAD_IP=$(getent ahostsv4 "${head}" | head -n 1)
  FLOOR_HEAD_IP=${FLOOR_HEAD_IP%% *}
  [[ -n ${FLOOR_HEAD_IP} ]] || { printf 'floor_launcher: no address for %s\n' "${head}" >&2; exit 1; }
  printf 'floor: job %s on %s, head %s (%s)\n' "${SLURM_JOB_ID}" "${SLURM_JOB_NODELIST}" \
    "${head}" "${FLOOR_HEAD_IP}"
  [[ -z ${FLOOR_LOG_DIR} ]] || mkdir -p "${FLOOR_LOG_DIR}"
  export FLOOR_IMAGE FLOOR_MOUNTS FLOOR_PORT FLOOR_DIST_PORT FLOOR_HEAD_IP FLOOR_LOG_DIR
  export -f floor_task
  # exec: srun gets salloc's and scancel's signals itself and passes them to every task.
  exec srun --nodes="${SLURM_JOB_NUM_NODES}" --ntasks="${SLURM_JOB_NUM_NODES}" \
    --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL --job-name=sglang-floor \
    bash -c 'floor_task "$@"' floor_task "$@"
}

main "$@"
