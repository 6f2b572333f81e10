"""The rendered script's failure-handling functions, run in bash with the rest stubbed out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang.profile import ClusterProfile, load_profile, merge_profile_data
from slurm_sglang.render import render_script

# Every function of the script, without its last line (`main "$@"`).
PRELUDE = 'source <(sed \'$d\' "$1")\nset +e\nshift\n'


def _script(tmp_path: Path, name: str, **overrides: Any) -> Path:
    data = merge_profile_data(load_profile("default").model_dump(), overrides)
    path = tmp_path / f"{name}.sbatch"
    path.write_text(render_script(ClusterProfile.model_validate(data)))
    return path


def _bash(script: Path, body: str, *args: str, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script), *args],
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                          env=env)


def test_rank_kill_after_the_rank_exited_spares_its_own_session(tmp_path: Path) -> None:
    script = _script(tmp_path, "none", container={"runtime": "none"})
    # In a session of its own, as a node's supervisor is: a sibling (the router, another
    # replica's supervisor) must outlive the kill of a rank that has already gone.
    body = """
sleep 30 &
sibling=$!
true &
RANK_PID=$!
wait "${RANK_PID}"
rank_kill
sleep 0.2
kill -0 "${sibling}" && echo sibling-alive
kill "${sibling}"
echo supervisor-alive
"""
    done = subprocess.run(["setsid", "bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["sibling-alive", "supervisor-alive"], done.stderr


def test_rank_kill_ends_the_ranks_whole_session(tmp_path: Path) -> None:
    script = _script(tmp_path, "none", container={"runtime": "none"})
    body = """
setsid bash -c 'sleep 30 & exec sleep 30' &
RANK_PID=$!
sleep 0.3
child=$(pgrep -s "${RANK_PID}" -x sleep | grep -vx "${RANK_PID}" | head -n 1)
rank_kill
sleep 0.2
# A killed child may linger as a zombie where nothing reaps orphans: it counts as gone.
[[ $(ps -o stat= -p "${child}" 2>/dev/null) == [^Z]* ]] && echo child-alive || echo child-gone
"""
    done = subprocess.run(["setsid", "bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["child-gone"], done.stderr


DISK_CHECK = """
df() { printf 'Filesystem 1024-blocks Used Available Capacity Mounted\\nfs 1 1 %s 1%% /\\n' "$2"; }
runtime_check() { return 0; }
broadcast_wanted() { return 1; }
NODE_NAME=n SLURM_NODEID=0 MODEL_PATH=m IMAGE=i IMAGE_FILE=0 GPUS_PER_RANK=0 NODE_GPUS=
WORKSPACE=$1 LOG_DIR=$PWD
preflight_node
"""


@pytest.mark.parametrize(("gb", "free_kb", "fails"), [
    (1e6, 10**12, True),  # rendered as 1e+06 before: bash arithmetic failed, the check passed
    (0.5, 1000, True),  # rendered as 0.5 then cut to 0: never failed
    (0.5, 600_000, False),
    (0, 0, False),
])
def test_disk_check_compares_the_profile_number(tmp_path: Path, gb: float, free_kb: int,
                                               fails: bool) -> None:
    script = _script(tmp_path, "disk", preflight={"min_free_disk_gb": gb})
    done = _bash(script, DISK_CHECK, str(free_kb), cwd=tmp_path)
    assert ("check=disk" in done.stdout) is fails, done.stdout + done.stderr
    assert "syntax error" not in done.stderr


def test_endpoint_json_escapes_every_control_character(tmp_path: Path) -> None:
    from slurm_sglang.launch_plan import answer

    model = "model " + "".join(chr(code) for code in range(1, 32)) + ' \\ " \x7f é end'
    code, _ = answer(["publish", "--log-dir", str(tmp_path), "--url", "http://10.0.0.5:30000",
                      "--job-id", "7", "--model", model, "--nodes", "n0,n1",
                      "--ips", "10.0.0.5,10.0.0.6", "--port", "30000", "--dist-port", "20000"])
    assert code == 0
    endpoint = json.loads((tmp_path / "endpoint.json").read_text())
    assert endpoint["model"] == model
    assert (endpoint["head"], endpoint["head_ip"], endpoint["dist_init_addr"]) == (
        "n0", "10.0.0.5", "10.0.0.5:20000")
    targets = json.loads((tmp_path / "prometheus-targets.json").read_text())
    assert targets[0]["labels"]["model"] == model


def test_endpoint_json_lists_each_replica_with_its_nodes_gpus_and_state(tmp_path: Path) -> None:
    from slurm_sglang.launch_plan import answer

    # Two replicas of two nodes each; replica 1's ranks reported GPU UUIDs, replica 0's none.
    code, _ = answer(["publish", "--log-dir", str(tmp_path), "--url", "http://10.0.0.5:30000",
                      "--job-id", "7", "--model", "m", "--nodes", "a,b,c,d",
                      "--ips", "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4", "--port", "30000",
                      "--dist-port", "20000", "--replicas", "2", "--replica-nodes", "0,1;2,3",
                      "--replica-gpu-indexes", "0,1;0,1", "--replica-states", "up;starting;",
                      "--replica-gpus", ";GPU-a,GPU-b;", "--replica-base-port", "30001",
                      "--router-metrics-port", "29001"])
    assert code == 0
    endpoint = json.loads((tmp_path / "endpoint.json").read_text())
    assert endpoint["replicas"] == [
        {"replica": 0, "url": "http://10.0.0.1:30001", "nodes": ["a", "b"], "gpus": [0, 1],
         "state": "up"},
        {"replica": 1, "url": "http://10.0.0.3:30002", "nodes": ["c", "d"],
         "gpus": ["GPU-a", "GPU-b"], "state": "starting"}]
    assert endpoint["router_metrics_port"] == 29001
    assert [entry["url"] for entry in endpoint["metrics"]] == [
        "http://10.0.0.1:30001/metrics", "http://10.0.0.3:30002/metrics",
        "http://10.0.0.1:29001/metrics"]


def test_log_tail_reads_a_log_whose_path_looks_like_an_option(tmp_path: Path) -> None:
    script = _script(tmp_path, "tail")
    (tmp_path / "-5.log").write_text("one\ntwo\n")
    done = _bash(script, 'NODE_NAME=n SLURM_NODEID=1 RANK_LOG=$1; emit_log_tail', "-5.log",
                 cwd=tmp_path)
    assert "option used in invalid context" not in done.stdout + done.stderr
    assert done.stdout.splitlines() == ["@slurm-sglang log node=n rank=1 detail=one",
                                        "@slurm-sglang log node=n rank=1 detail=two"]


FAKE_PODMAN = """#!/bin/bash
printf '%s\\n' "$*" >>"$CALLS"
case "$*" in
  "ps -a --filter label=slurm-sglang.uid=1000 --format {{.Labels}}")
    printf 'map[slurm-sglang.job:%s slurm-sglang.uid:1000]\\n' 101 101 202 303 404 505 ;;
  *"ps -aq --filter label=slurm-sglang.job="*) echo "id-${4#label=slurm-sglang.job=}" ;;
esac
"""
FAKE_SQUEUE = """#!/bin/bash
case $3 in
  101) exit 0 ;;  # finished: squeue lists nothing
  202) echo 202 ;;  # still running
  303) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
  404) echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1 ;;
esac
"""


def test_preparation_removes_own_containers_of_jobs_slurm_no_longer_knows(
        tmp_path: Path) -> None:
    script = _script(tmp_path, "stale", container={"runtime": "podman"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("podman", FAKE_PODMAN), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    body = "CONTAINER_CLI=podman JOB_UID=1000 SLURM_JOB_ID=505; stale_containers_remove"
    done = _bash(script, body, env=env)
    removed = [line for line in calls.read_text().splitlines() if line.startswith("rm ")]
    # Jobs 101 (done) and 303 (purged) go; 202 runs and 404 is unknown while SLURM is away.
    # 505 is this job: its containers are its run's before a requeue (this run has none yet).
    assert removed == ["rm -f -t 0 id-101", "rm -f -t 0 id-303", "rm -f -t 0 id-505"], done.stderr
    assert all("label=slurm-sglang.uid=1000" in line for line in calls.read_text().splitlines()
               if line.startswith("ps "))


def test_times_are_taken_without_epochrealtime_as_under_rhel8_bash(tmp_path: Path) -> None:
    script = _script(tmp_path, "bash44")
    # bash 4.4 has no EPOCHREALTIME; unset, bash 5 reads it as 4.4 does (unbound, under set -u).
    body = 'unset EPOCHREALTIME; LOG_DIR=$PWD; log_event "hello"; now_us t; echo "t=${t}"'
    done = _bash(script, body, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("t=") and len(done.stdout.strip()) == 18, done.stdout
    logged = (tmp_path / "events.log").read_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} hello\n", logged), logged


def test_a_lost_node_is_named_while_the_other_nodes_keep_talking(tmp_path: Path) -> None:
    script = _script(tmp_path, "silent")
    # Three nodes: n2 lost (SLURM says DOWN), n0 and n1 alive, their keep-alives half a second
    # apart: a line comes every half second, never a quiet second.
    body = """
driver_state
LOG_DIR=$PWD RUN_DIR=$PWD NNODES=3 RANKS_PHASE=1 REPLICA_MODE=0 STEP_NAME=ranks
for r in 0 1 2; do NODES[r]=n$r; RANK_NODES[r]=n$r; done
probe_node() { :; }
slurm_says_lost() { [[ $1 == n2 ]] && printf 'SLURM reports it DOWN'; }
start_sweep() {
  SWEEP_PID=0
  kill -0 "${STEP_PID}" && echo "named while the others talk: ${FAILURES[0]}"
  kill -TERM "${STEP_PID}"
}
mkfifo events
(
  SLURM_NODEID=0 NODE_NAME=n0 keep_alive & first=$!
  sleep 0.5
  SLURM_NODEID=1 NODE_NAME=n1 keep_alive & second=$!
  trap 'kill "${first}" "${second}"; exit 0' TERM
  sleep 20 & wait $!
  kill "${first}" "${second}"
) >events &
STEP_PID=$!
step_ticks "${STEP_PID}" >events &
exec {STEP_EVENTS}<events {STEP_CONTROL}>/dev/null
for r in 0 1 2; do on_event "@slurm-sglang alive node=n$r rank=$r"; done
read_step || true
"""
    done = _bash(script, body, cwd=tmp_path)
    assert done.stdout.splitlines() == [
        "named while the others talk: rank 2 on n2: lost (SLURM reports it DOWN)"], done.stderr


FAKE_DOCKER = """#!/bin/bash
# docker as far as a rank's launch and removal go; rm takes 0.5 s, as a CLI round trip may.
case $1 in
  run) while (($#)); do [[ $1 == --name ]] && name=$2; shift; done
       echo $$ >"$STATE/$name"; exec sleep 30 ;;
  rm) sleep 0.5; shift
      for a; do [[ -f $STATE/$a ]] && kill "$(cat "$STATE/$a")" && rm -f "$STATE/$a"; done ;;
esac
exit 0
"""


def test_a_stop_while_the_rank_launches_leaves_no_container(tmp_path: Path) -> None:
    script = _script(tmp_path, "race")
    state = tmp_path / "state"
    state.mkdir()
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    body = f"""
CONTAINER_CLI={docker} GPUS_MODE=none REPLICA_MODE=0 SLURM_JOB_ID=77 SLURM_NODEID=1 JOB_UID=0
NODE_NAME=n1 NODE_IP=127.0.0.1 NODE_IFACE=lo NODE_GPUS=0 HEAD_IP=127.0.0.1 DIST_PORT=20000
PORT=30000 HEALTH_TIMEOUT=100 REPLICA_SPAN=2 LOG_DIR=$PWD WORKSPACE=$PWD IMAGE_REF=img
CONTAINER_ENV=() RANK_MOUNTS=() FABRIC_DEVICES=()
supervise_rank 0 1 --model-path m
"""
    # SLURM signals every process of the task: here while docker removes a leftover namesake
    # before it runs the rank (docker has no --replace).
    rank = subprocess.Popen(["bash", "-c", PRELUDE + body, "test", str(script)], cwd=tmp_path,
                            env={**os.environ, "STATE": str(state)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.25)
    os.killpg(rank.pid, signal.SIGTERM)
    try:
        out, err = rank.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(rank.pid, signal.SIGKILL)
        out, err = rank.communicate()
    left = sorted(path.name for path in state.iterdir())
    for name in left:
        os.kill(int((state / name).read_text()), signal.SIGKILL)
    assert left == [], (out, err)
    assert rank.returncode == 143 and "stopped=1" in out, (rank.returncode, out, err)


def test_lines_that_leave_the_log_directory_never_hold_the_api_key(tmp_path: Path) -> None:
    script = _script(tmp_path, "redact")
    (tmp_path / "rank.log").write_text("server_args=ServerArgs(api_key='sk-canary', port=1)\n")
    body = """export SLURM_SGLANG_API_KEY=sk-canary NODE_NAME=n SLURM_NODEID=0 RANK_LOG=rank.log
emit_log_tail
prefix_lines rank-0-n.log <rank.log
"""
    done = _bash(script, body, cwd=tmp_path)
    line = "server_args=ServerArgs(api_key='<redacted>', port=1)"
    assert done.stdout.splitlines() == [f"@slurm-sglang log node=n rank=0 detail={line}",
                                        f"rank-0-n| {line}"], done.stderr


@pytest.mark.parametrize(("listed", "expected"), [
    ("8(x2),4,16", "4"), ("72", "72"), ("", "8")])
def test_every_task_of_a_step_asks_the_smallest_nodes_cpus(tmp_path: Path, listed: str,
                                                           expected: str) -> None:
    script = _script(tmp_path, "cpus")
    body = f"SLURM_JOB_CPUS_PER_NODE='{listed}' SLURM_CPUS_ON_NODE=8; fewest_cpus"
    assert _bash(script, body).stdout == expected


def test_a_stop_during_the_nccl_check_stops_the_job_rather_than_failing_it(
        tmp_path: Path) -> None:
    script = _script(tmp_path, "nccl-stop")
    (tmp_path / "preflight_nccl.py").write_text("")
    body = """
driver_state
LOG_DIR=$PWD RUN_DIR=$PWD SUPPORT_DIR=$PWD NODES=(n0) NNODES=1 HEAD_NODE=n0 HEAD_IP=10.0.0.1
PREFLIGHT_NCCL_PORT=29999 PREFLIGHT_NCCL_ONLY=0 DIST_PORT=20000
srun() { sleep 10; }
sleep 30 & STEP_PID=$!
trap 'on_signal TERM 15' TERM
( sleep 0.3; kill -TERM $$ ) &
step_preflight_nccl
echo "the check returned"
"""
    done = _bash(script, body, cwd=tmp_path)
    assert done.returncode == 143, done.stderr
    assert "received SIGTERM" in done.stderr and "pre-flight failed" not in done.stderr
