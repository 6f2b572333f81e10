"""The seed's habits in the rendered script: bare --profile, GPUS, the followed head log and the
user's socket interfaces; each step's functions run in bash with the rest stubbed out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_sglang.api import _profile_dir
from slurm_sglang.cli import build_parser
from slurm_sglang.launch_plan import UserInputError, requested_gpus
from slurm_sglang.profile import ClusterProfile, load_profile, merge_profile_data
from slurm_sglang.render import render_script, write_script

# Every function of the script, without its last line (`main "$@"`).
PRELUDE = 'source <(sed \'$d\' "$1")\nset +e\nSCRIPT=$1\nshift\n'


def _render(tmp_path_factory: pytest.TempPathFactory, runtime: str) -> Path:
    # tcp: a fabric whose fabric_setup sets both socket variables from the node's interface.
    container: dict[str, object] = {"runtime": runtime}
    if runtime == "none":
        container["run_args"] = []
    data = merge_profile_data(load_profile("tcp").model_dump(), {"container": container})
    path = tmp_path_factory.mktemp(runtime) / "run.sbatch"
    write_script(render_script(ClusterProfile.model_validate(data)), path)
    return path


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory, "none")


@pytest.fixture(scope="module")
def docker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory, "docker")


def _bash(script: Path, body: str, *args: str, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script), *args],
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                          env=env)


PARSE = """
find_support_dir "${SCRIPT}"
plan_launch "$@"
printf 'dir=%s\\n' "${TORCH_PROFILE_DIR}"
printf 'arg=%s\\n' "${SGLANG_ARGS[@]}"
"""


@pytest.mark.parametrize(("argv", "directory", "sglang"), [
    # The seed's own example.
    (["--profile", "--model-path", "Qwen/Qwen2.5-14B-Instruct", "--tp", "8"], "sglang_profile",
     ["--model-path", "Qwen/Qwen2.5-14B-Instruct", "--tp", "8"]),
    (["--model-path", "m", "--profile"], "sglang_profile", ["--model-path", "m"]),
    (["--profile", "--", "--model-path", "m"], "sglang_profile", ["--model-path", "m"]),
    (["--profile", "traces", "--model-path", "m"], "traces", ["--model-path", "m"]),
    (["--profile=-odd", "--model-path", "m"], "-odd", ["--model-path", "m"]),
    (["--profile=/abs/traces", "--model-path", "m"], "/abs/traces", ["--model-path", "m"]),
])
def test_profile_is_bare_or_takes_a_directory(script: Path, tmp_path: Path, argv: list[str],
                                              directory: str, sglang: list[str]) -> None:
    done = _bash(script, PARSE, *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = directory if directory.startswith("/") else f"{tmp_path}/{directory}"
    assert lines[0] == f"dir={expected}"
    assert lines[1:] == [f"arg={arg}" for arg in sglang]


def test_an_empty_profile_directory_is_refused(script: Path, tmp_path: Path) -> None:
    done = _bash(script, PARSE, "--profile=", "--model-path", "m", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--profile=" in done.stderr


def test_the_seeds_profile_example_gets_past_the_flags(script: Path, tmp_path: Path) -> None:
    # Before: "--model-path is required" (--profile ate it). Now the plan reads the arguments
    # and the next complaint is the missing allocation.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "--profile", "--model-path",
                           "Qwen/Qwen2.5-14B-Instruct", "--tp", "8"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, check=False, timeout=60)
    assert done.returncode == 2
    assert "not inside a SLURM allocation" in done.stderr, done.stderr
    assert "model-path" not in done.stderr


def test_the_profile_directory_reaches_the_rank(script: Path, tmp_path: Path) -> None:
    body = """
TORCH_PROFILE_DIR=$1 CONTAINER_ENV=()
passthrough_env
printf '%s\\n' "${SGLANG_TORCH_PROFILER_DIR}" "${CONTAINER_ENV[*]}"
"""
    done = _bash(script, body, str(tmp_path / "p"))
    lines = done.stdout.splitlines()
    assert lines[0] == str(tmp_path / "p")
    assert "SGLANG_TORCH_PROFILER_DIR" in lines[1].split()


def test_submit_takes_profile_bare_or_with_a_directory(tmp_path: Path) -> None:
    parser = build_parser()
    bare = parser.parse_args(["submit", "--profile", "--", "--model-path", "m"])
    given = parser.parse_args(["submit", "--profile", "t", "--", "--model-path", "m"])
    none = parser.parse_args(["submit", "--", "--model-path", "m"])
    assert (bare.profile, given.profile, none.profile) == ("", "t", None)
    assert _profile_dir("", "/ws", remote=False) == "/ws/sglang_profile"
    assert _profile_dir("t", "/ws", remote=True) == "/ws/t"
    assert _profile_dir("/abs", "/ws", remote=True) == "/abs"
    assert _profile_dir("t", "/ws", remote=False) == str(Path.cwd() / "t")


# ---- GPUS -----------------------------------------------------------------------------------
# The plan reads GPUS once (launch_plan.requested_gpus, REQUESTED_GPUS); each node checks the
# list against its grant (choose_node_gpus).
CHOOSE = """
hostname() { echo n1; }
node_identity
printf 'gpus=%s\\nproblem=%s\\n' "${NODE_GPUS}" "${GPUS_PROBLEM}"
"""


def _node_env(gpus: str | None, **grant: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", **grant}
    if gpus is not None:
        env.update(GPUS=gpus, REQUESTED_GPUS=requested_gpus(gpus))
    return env


@pytest.mark.parametrize(("gpus", "granted", "chosen"), [
    (None, "0,1,2,3", "0,1,2,3"),
    ("all", "0,1,2,3", "0,1,2,3"),
    ("2,3", "0,1,2,3", "2,3"),
    ('"device=1,3"', "0,1,2,3", "1,3"),
    ("device=0", "0,1,2,3", "0"),
    # No grant to check against (no gres): GPUS is taken as the seed took it.
    ("0,1", "", "0,1"),
])
def test_gpus_within_the_grant_are_the_nodes_gpus(script: Path, gpus: str | None, granted: str,
                                                  chosen: str) -> None:
    done = _bash(script, CHOOSE, env=_node_env(gpus, SLURM_JOB_GPUS=granted))
    assert done.stdout.splitlines() == [f"gpus={chosen}", "problem="], done.stderr


def test_gpus_outside_the_grant_are_refused(script: Path) -> None:
    done = _bash(script, CHOOSE, env=_node_env("0,9", SLURM_STEP_GPUS="0,1,2,3"))
    lines = done.stdout.splitlines()
    # The grant stays the node's: nothing of a refused GPUS reaches a rank.
    assert lines[0] == "gpus=0,1,2,3"
    assert "GPUS=0,9 names GPU 9, which SLURM did not grant on n1 (granted: 0,1,2,3)" in lines[1]


def _submit(tmp_path: Path, env: str, *sglang: str) -> subprocess.CompletedProcess[str]:
    """`submit --no-wait` on one node with --env ENV; a submit that got through would reach
    a fake sbatch (and ssh) that says tool-called, never the sandbox's."""
    for tool in ("sbatch", "ssh"):
        (tmp_path / tool).write_text("#!/bin/sh\necho tool-called >&2\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    return subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--no-wait", "--nodes", "1",
         "--env", env, "--", *sglang],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "SLURM_SGLANG_STATE_DIR": str(tmp_path / "state"),
             "PATH": f"{tmp_path}:{os.environ['PATH']}"})


@pytest.mark.parametrize("gpus", ["foo", "0,0", "0,,1", "device=", "0,1\n"])
def test_a_gpus_that_is_no_list_is_refused_by_the_plan_and_by_submit(
        script: Path, tmp_path: Path, gpus: str) -> None:
    message = f"GPUS={gpus!r} is neither 'all' nor a list of distinct GPUs: set GPUS=0,1,2,3"
    with pytest.raises(UserInputError, match=re.escape(message)):
        requested_gpus(gpus)
    done = _bash(script, PARSE, "--model-path", "m", cwd=tmp_path,
                 env={"PATH": "/usr/bin:/bin", "GPUS": gpus})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"slurm-sglang: {message}"), done.stderr
    refused = _submit(tmp_path, f"GPUS={gpus}", "--model-path", "m")
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and "tool-called" not in refused.stderr


def test_submit_places_on_the_gpus_named(tmp_path: Path) -> None:
    # Two GPUs a node cannot hold --tp 4 on one node; the profile's eight could.
    refused = _submit(tmp_path, "GPUS=0,1", "--model-path", "m", "--tp", "4")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "but 1 node(s) x 2 GPUs = 2" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


def test_a_refused_gpus_is_one_line_and_exit_2(script: Path, tmp_path: Path) -> None:
    body = """
LOG_DIR=$PWD NODES=(n1 n2)
why="names GPU 9, which SLURM did not grant on"
on_event "${EVENT_TAG} gpus-refused node=n1 rank=0 detail=GPUS=0,9 ${why} n1 (granted: 0,1,2,3)"
on_event "${EVENT_TAG} gpus-refused node=n2 rank=1 detail=GPUS=0,9 ${why} n2 (granted: 0,1,2,3)"
refuse_gpus
echo not-reached
"""
    done = _bash(script, body, cwd=tmp_path)
    assert done.returncode == 2
    assert "not-reached" not in done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("slurm-sglang: GPUS=0,9 names GPU 9")
    assert "(and on 1 more node(s)): name only granted GPUs in GPUS, or unset it" in done.stderr
    assert (tmp_path / "state").read_text() == "failed\n"


def test_the_plan_and_the_runtime_see_only_the_gpus_named(docker_script: Path,
                                                          tmp_path: Path) -> None:
    # The plan places servers on as many GPUs as GPUS names; its indices select from the
    # node's list, which GPUS narrowed.
    body = """
hostname() { echo n1; }
find_support_dir "${SCRIPT}"
NNODES=2 GPUS_PER_NODE=8
plan_launch --model-path m --tp 2 --dp 4
export REQUESTED_GPUS
node_identity
printf '%s\\n' "${REPLICA_GPU_INDEXES}" "$(replica_gpu_list 1 "${NODE_GPUS}")"
GPUS_MODE=docker RUN_ARGS=()
gpu_options "${NODE_GPUS}"
printf '%s\\n' "${RUN_ARGS[*]}"
"""
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_GPUS": "0,1,2,3,4,5,6,7", "GPUS": "4,5,6,7"}
    done = _bash(docker_script, body, cwd=tmp_path, env=env)
    assert done.stdout.splitlines()[-3:] == ["0,1;2,3;0,1;2,3", "6,7",
                                             '--gpus "device=4,5,6,7"'], (
        done.stdout + done.stderr)


# ---- the followed head log ------------------------------------------------------------------
FOLLOW = """
LOG_DIR=$PWD RANK_NODES=(n1) REPLICA_MODE=0 QUIET=${QUIET:-0}
log=$PWD/rank-0-n1.log
# A requeued job's log holds the earlier run's lines: only new ones are followed.
printf 'earlier run\n' >"${log}"
exec >"$PWD/terminal" 2>&1
follow_head_log
sleep 0.5
printf 'loading 1\\nloading 2\\n' >>"${log}"
printf 'progress 50%%' >>"${log}"
sleep 1.5
printf 'ready: http://h:1\\n'
sleep 0.3
printf ' done\\n%s\\n' "$(head -c 5000 /dev/zero | tr '\\0' x)" >>"${log}"
sleep 1.5
[[ -z ${FOLLOW_PID:-} ]] || kill "${FOLLOW_PID}"
"""


def test_the_head_log_follows_in_whole_prefixed_lines(script: Path, tmp_path: Path) -> None:
    done = _bash(script, FOLLOW, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "terminal").read_text().splitlines()
    # A partial line (a progress bar) never shares a line with the ready line.
    assert lines == ["rank-0-n1| loading 1", "rank-0-n1| loading 2", "ready: http://h:1",
                     "rank-0-n1| progress 50% done", "rank-0-n1| " + "x" * 3000], lines


def test_quiet_follows_nothing(script: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "QUIET": "1"}
    done = _bash(script, FOLLOW, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "terminal").read_text() == "ready: http://h:1\n"


def test_the_follower_ends_with_the_driver(script: Path, tmp_path: Path) -> None:
    body = """
LOG_DIR=$PWD RANK_NODES=(n1) REPLICA_MODE=0 QUIET=0
exec >"$PWD/terminal" 2>&1
follow_head_log
echo "${FOLLOW_PID}"
"""
    _bash(script, body, cwd=tmp_path)
    time.sleep(2.5)
    # tail --pid: gone within a second or two of the driver, whoever killed it.
    alive = subprocess.run(["pgrep", "-f", f"tail -n 0 -F --pid=.* -- {tmp_path}/rank-0-n1.log"],
                           capture_output=True, text=True, check=False)
    assert (tmp_path / "terminal").read_text().strip() and alive.stdout == ""


def test_the_replica_head_log_is_followed_with_replicas(script: Path) -> None:
    body = """
LOG_DIR=/l NODES=(a b c) RANK_NODES=(a b c) REPLICA_MODE=1 REPLICA_NODES="1,2;0"
head_log
"""
    assert _bash(script, body).stdout == "/l/replica-0-rank-0-b.log"


# ---- the user's socket interfaces -----------------------------------------------------------
ADDRESS = """
hostname() { echo n1; }
TORCH_PROFILE_DIR=""
node_identity
resolve_node_address || exit 1
CONTAINER_ENV=()
fabric_setup
passthrough_env
printf '%s\\n' "${NODE_IFACE}" "${NODE_IP}" "${SGLANG_HOST_IP}" \\
  "${NCCL_SOCKET_IFNAME}" "${GLOO_SOCKET_IFNAME}"
"""


@pytest.mark.parametrize(("nccl", "gloo", "expected"), [
    ("lo", "", ["lo", "127.0.0.1", "127.0.0.1", "lo", "lo"]),
    ("=lo", "", ["lo", "127.0.0.1", "127.0.0.1", "=lo", "lo"]),
    ("lo,eth9", "", ["lo", "127.0.0.1", "127.0.0.1", "lo,eth9", "lo"]),
    ("^docker", "lo", ["lo", "127.0.0.1", "127.0.0.1", "^docker", "lo"]),
])
def test_the_users_socket_interface_wins(script: Path, nccl: str, gloo: str,
                                         expected: list[str]) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "USER_NCCL_SOCKET_IFNAME": nccl,
           "USER_GLOO_SOCKET_IFNAME": gloo, "HEAD_NODE": "localhost"}
    done = _bash(script, ADDRESS, env=env)
    assert done.stdout.splitlines() == expected, done.stderr


def test_the_users_interfaces_reach_the_container_whatever_fabric_setup_did(
        script: Path) -> None:
    # A site's own fabric_setup (docs/admin-guide.md) need not call fabric_sockets.
    body = """
TORCH_PROFILE_DIR="" CONTAINER_ENV=()
passthrough_env
printf '%s\\n' "${GLOO_SOCKET_IFNAME}" "${CONTAINER_ENV[*]}"
"""
    env = {"PATH": "/usr/bin:/bin", "USER_GLOO_SOCKET_IFNAME": "ib0"}
    lines = _bash(script, body, env=env).stdout.splitlines()
    assert lines[0] == "ib0" and "GLOO_SOCKET_IFNAME" in lines[1].split()


def test_a_missing_user_interface_names_the_variable(script: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "USER_NCCL_SOCKET_IFNAME": "nosuch0",
           "HEAD_NODE": "localhost"}
    done = _bash(script, 'hostname() { echo n1; }\nnode_identity\nresolve_node_address || '
                 '{ echo "$ADDRESS_PROBLEM"; exit 1; }', env=env)
    assert done.returncode == 1
    assert done.stdout == "interface nosuch0 (NCCL_SOCKET_IFNAME) has no IPv4 address on n1\n"


def test_the_start_up_line_names_the_users_settings(script: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GPUS": "0,1", "GLOO_SOCKET_IFNAME": "ib0"}
    assert _bash(script, "yours_line", env=env).stdout == ", yours: GPUS=0,1 GLOO_SOCKET_IFNAME=ib0"
    assert _bash(script, "yours_line", env={"PATH": "/usr/bin:/bin"}).stdout == ""
