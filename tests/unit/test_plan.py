"""Placement of replicas: the Python plan, and the rendered bash held to the same answers."""

from __future__ import annotations

import re
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml

from slurm_sglang.launch_plan import (
    LaunchRequest,
    Plan,
    PlanError,
    choose_ports,
    derived_dist_port,
    launch,
    plan,
    plan_assignments,
    uses_replicas,
)
from slurm_sglang.profile import BUILTIN_PROFILE_PACKAGE, load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.serve_check import plan_dict
from slurm_sglang.sglang_flags import parse_parallelism


def _plan(argv: str, nodes: int, gpus: int = 8) -> Plan:
    return plan(parse_parallelism(["--model-path", "m", *argv.split()]), nodes, gpus)


def test_tp2_dp8_on_two_nodes_packs_four_a_node_on_disjoint_gpus() -> None:
    placement = _plan("--tp 2 --dp 8", 2)
    assert placement.router and placement.router_port == 30000
    assert [r.nodes for r in placement.replicas] == [(0,)] * 4 + [(1,)] * 4
    for node in (0, 1):
        gpu_sets = [set(r.gpus) for r in placement.replicas if r.head == node]
        assert sorted(gpu for gpus in gpu_sets for gpu in gpus) == list(range(8))
    assert [r.port for r in placement.replicas] == list(range(30001, 30009))


def test_tp8_dp2_on_two_nodes_is_one_replica_a_node() -> None:
    placement = _plan("--tp 8 --dp 2", 2)
    assert [(r.nodes, r.gpus) for r in placement.replicas] == [
        ((0,), tuple(range(8))), ((1,), tuple(range(8)))]


def test_tp16_dp2_on_four_nodes_spans_two_nodes_each() -> None:
    placement = _plan("--tp 16 --dp 2", 4)
    assert [r.nodes for r in placement.replicas] == [(0, 1), (2, 3)]
    assert all(r.gpus == tuple(range(8)) for r in placement.replicas)
    assert [r.head for r in placement.replicas] == [0, 2]


def test_attention_dp_stays_one_server_without_router() -> None:
    placement = _plan("--tp 8 --dp 2 --enable-dp-attention", 2)
    assert not placement.router
    assert [(r.nodes, r.gpus, r.port) for r in placement.replicas] == [
        ((0, 1), (0, 1, 2, 3), 30000)]
    assert not uses_replicas(parse_parallelism(["--dp", "4"]), 1)


def test_fewer_replicas_than_nodes_names_the_idle_nodes() -> None:
    placement = _plan("--tp 8 --dp 2", 3)
    assert placement.idle_nodes == (2,)
    assert "node(s) 2 of the allocation run no replica" in placement.table()


@pytest.mark.parametrize(("argv", "nodes", "arithmetic"), [
    ("--tp 4 --dp 8", 2, "need 8*4 = 32 GPUs, but 2 node(s) x 8 GPUs hold 2 replica(s) each = 4"),
    ("--tp 16 --dp 3", 4, "3*2 = 6 nodes needed, the allocation has 4"),
    ("--tp 9 --dp 2", 4, "9 is not divisible by 2"),
])
def test_refusals_carry_the_arithmetic(argv: str, nodes: int, arithmetic: str) -> None:
    with pytest.raises(PlanError, match=re.escape(arithmetic)):
        _plan(argv, nodes)


def test_table_lists_replica_nodes_gpus_port_and_router() -> None:
    lines = _plan("--tp 8 --dp 2", 2).table().splitlines()
    assert lines[0].split() == ["replica", "nodes", "GPUs", "(each", "node)", "port"]
    assert lines[1].split() == ["0", "0", "0,1,2,3,4,5,6,7", "30001"]
    assert lines[3].split() == ["router", "0", "-", "30000"]


# ---- the script runs the same plan -----------------------------------------------------------
BASH_PLAN = r"""
source <(sed '$d' "$1")
set +e
NODES=(n0 n1 n2 n3 n4 n5 n6 n7)
NNODES=$3 GPUS_PER_NODE=$4
find_support_dir "$1"
# shellcheck disable=SC2086 # $2: sglang's arguments, word-split on purpose
plan_launch --container-cli podman --model-path m $2
for ((r = 0; r < REPLICAS; r++)); do
  nodes=""
  for ((k = 0; k < REPLICA_SPAN; k++)); do nodes+="${nodes:+,}$(replica_node "$r" "$k")"; done
  printf '%s %s %s %s\n' "$r" "$nodes" "$(replica_gpu_list "$r" "")" $((REPLICA_BASE_PORT + r))
done
printf 'args %s\n' "${SGLANG_ARGS[*]}"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "run.sbatch"
    write_script(render_script(load_profile("sandbox")), path)
    return path


def _bash_plan(script: Path, argv: str, nodes: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", BASH_PLAN, "plan", str(script), argv, str(nodes), "8"],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("argv", "nodes"), [
    ("--tp 2 --dp 8", 2), ("--tp 8 --dp 2", 2), ("--tp 16 --dp 2", 4), ("--tp 2 --dp 3", 2),
    ("--tp 4 --dp-size=4", 3),
])
def test_bash_places_replicas_like_python(script: Path, argv: str, nodes: int) -> None:
    result = _bash_plan(script, argv, nodes)
    assert result.returncode == 0, result.stderr
    expected = [
        f"{r.number} {','.join(map(str, r.nodes))} {','.join(map(str, r.gpus))} {r.port}"
        for r in _plan(argv, nodes).replicas
    ]
    lines = result.stdout.splitlines()
    assert lines[:-1] == expected
    # Each replica is a server of dp 1: the --dp flag does not reach sglang.
    assert "dp" not in lines[-1]


@pytest.mark.parametrize(("argv", "nodes"), [
    ("--tp 4 --dp 8", 2), ("--tp 16 --dp 3", 4), ("--tp 9 --dp 2", 4),
])
def test_bash_refuses_what_python_refuses(script: Path, argv: str, nodes: int) -> None:
    result = _bash_plan(script, argv, nodes)
    with pytest.raises(PlanError) as refused:
        _plan(argv, nodes)
    assert result.returncode == 2
    assert result.stderr == f"slurm-sglang: {refused.value}\n"


# ---- the router's metrics port ---------------------------------------------------------------


@pytest.mark.parametrize(("argv", "nodes"), [("--tp 2 --dp 8", 2), ("--tp 16 --dp 2", 4)])
def test_router_metrics_port_follows_the_replica_block(argv: str, nodes: int) -> None:
    placement = _plan(argv, nodes)
    ports = [r.port for r in placement.replicas]
    assert placement.router_metrics_port == max(ports) + 1
    assert placement.router_metrics_port not in (29000, placement.router_port)
    assert plan_dict(placement)["router_metrics_port"] == placement.router_metrics_port
    row = placement.table().splitlines()[len(ports) + 2].split()
    assert row == ["router", "metrics", "0", "-", str(placement.router_metrics_port)]


def test_one_server_has_no_router_metrics_port() -> None:
    placement = _plan("--tp 8 --dp 2 --enable-dp-attention", 2)
    assert placement.router_metrics_port is None
    assert plan_dict(placement)["router_metrics_port"] is None
    assert "metrics" not in placement.table()


def test_plan_assignments_carry_the_router_metrics_port() -> None:
    request = LaunchRequest(("--model-path", "m", "--tp", "8", "--dp", "2"), 2, 8, port=31000)
    assert "ROUTER_METRICS_PORT=31003\n" in plan_assignments(launch(request))
    single = LaunchRequest(("--model-path", "m", "--tp", "8"), 1, 8)
    assert "ROUTER_METRICS_PORT=''\n" in plan_assignments(launch(single))


@pytest.mark.parametrize(("busy", "chosen"), [
    ((), (30001, 30003)), ((30003,), (30004, 30006)), ((30002, 30005), (30006, 30008)),
])
def test_the_metrics_port_moves_with_the_replica_block(
        busy: tuple[int, ...], chosen: tuple[int, int]) -> None:
    choice = choose_ports({"n1": busy}, 7, 30000, False, 0, 2, False)
    assert (choice.replica_base_port, choice.router_metrics_port) == chosen
    assert not choice.problems


def test_ports_in_use_move_or_are_named() -> None:
    listening = {"n0": (30000, 20112), "n1": (30000, 30001)}
    moved = choose_ports(listening, 7, 30000, False, 0, 0, False)
    assert moved.port == 30002 and not moved.problems
    assert not set(range(moved.dist_port, moved.dist_port + 14)) & {30000, 30001, 20112}
    kept = choose_ports(listening, 7, 30000, True, 20112, 0, False)
    assert (kept.port, kept.dist_port) == (30000, 20112)
    assert kept.problems == (("n0,n1", "port 30000 (--port) is in use"),
                             ("n0", "dist port 20112 (--dist-port) is in use"))
    assert not choose_ports(listening, 7, 30000, True, 20112, 0, False, check=False).problems
    # Another job on these nodes: an unasked-for port starts from the job id.
    assert choose_ports({}, 7, 30000, False, 0, 0, True).port == 30008


@pytest.mark.parametrize("job_id", [0, 797, 798, 1999, 2_000_000_011])
def test_derived_ports_stay_below_the_ephemeral_range(job_id: int) -> None:
    # A connection's local port comes from the ephemeral range; the nodes report listeners
    # only, so a derived port there could be held and still look free (EADDRINUSE in CI).
    busy = {"n0": (derived_dist_port(job_id),)}
    for listening in ({}, busy):
        choice = choose_ports(listening, job_id, 30000, False, 0, 3, False)
        taken = [*range(choice.dist_port, choice.dist_port + 14), choice.nccl_port]
        for dist in choice.replica_dist_ports:
            taken += [dist, dist + 1]
        assert all(20000 <= p < 32768 for p in taken), (listening, taken)
    lower = choose_ports({}, job_id, 30000, False, 0, 2, False, ephemeral_from=28000)
    assert lower.dist_port + 14 <= 28000 and max(lower.replica_dist_ports) + 2 <= 28000
    # A range with no room below it leaves the old derivation (ports checked as before); one
    # that starts higher still keeps the derived ports below 32768.
    assert derived_dist_port(job_id, 1024) == 20000 + job_id % 2000 * 16
    assert derived_dist_port(job_id, 61000) == derived_dist_port(job_id)


def test_the_nccl_check_port_follows_an_explicit_dist_port() -> None:
    # docs/preflight.md: the first free port from the dist-init port + 14, wherever that is.
    assert choose_ports({}, 7, 30000, True, 42000, 0, False).nccl_port == 42014
    assert choose_ports({"n1": (42014,)}, 7, 30000, True, 42000, 0, False).nccl_port == 42015


def test_no_free_dist_init_block_is_a_problem_not_a_busy_port() -> None:
    crowded = {"n0": tuple(range(20000, 32768))}
    choice = choose_ports(crowded, 7, 30000, False, 0, 0, False)
    assert ("-", "no free block of 14 dist-init ports found in 64 tries: name one with "
                 "--dist-port") in choice.problems


def test_replica_and_nccl_ports_never_overlap() -> None:
    choice = choose_ports({"n0": (30000,)}, 1999, 30000, False, 0, 4, False)
    taken = [choice.port, *range(choice.dist_port, choice.dist_port + 14),
             *range(choice.replica_base_port, choice.router_metrics_port + 1)]
    for dist in choice.replica_dist_ports:
        taken += [dist, dist + 1]
    taken.append(choice.nccl_port)
    assert len(taken) == len(set(taken)) and 30000 not in taken[1:]


def test_the_script_takes_its_ports_from_launch_plan(script: Path) -> None:
    program = r"""
source <(sed '$d' "$1")
set +e
other_jobs_here() { return 1; }
log_event() { :; }
find_support_dir "$1"
SLURM_JOB_ID=7 PORT=30000 PORT_EXPLICIT=1 DIST_PORT=0 SKIP_PREFLIGHT=0 REPLICA_MODE=0
LISTENING=(--listening n1=30000) PREFLIGHT_ROWS=()
choose_ports
printf '%s\n' "${PORT} ${PREFLIGHT_ROWS[*]}"
"""
    result = subprocess.run(["bash", "-c", program, "ports", str(script)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "30000 n1\tports\tport 30000 (--port) is in use"


def test_the_nodes_ephemeral_ranges_reach_the_port_choice(script: Path, tmp_path: Path) -> None:
    # Each node's listening event names where its ephemeral range starts; the lowest bounds
    # the derived dist-init block (the sandbox's nodes all say 32768, so it is pinned here).
    program = r"""
source <(sed '$d' "$1")
set +e
other_jobs_here() { return 1; }
LOG_DIR=$2 EVENT_TAG=@slurm-sglang
find_support_dir "$1"
SLURM_JOB_ID=1999 PORT=30000 PORT_EXPLICIT=0 DIST_PORT=0 SKIP_PREFLIGHT=0 REPLICA_MODE=0
LISTENING=() PREFLIGHT_ROWS=()
on_event "@slurm-sglang listening node=n1 rank=0 ports=22 ephemeral=30000"
on_event "@slurm-sglang listening node=n2 rank=1 ports=22 ephemeral=24000"
choose_ports
printf '%s\n' "${DIST_PORT}"
"""
    result = subprocess.run(["bash", "-c", program, "ports", str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    dist_port = int(result.stdout.splitlines()[-1])
    assert dist_port == derived_dist_port(1999, 24000) and dist_port + 14 <= 24000
    assert derived_dist_port(1999, 24000) != derived_dist_port(1999)


BASH_ROUTER = r"""
source <(sed '$d' "$1")
set +e
NODES=(n0 n1) NNODES=2 GPUS_PER_NODE=8
SLURM_JOB_ID=7 ROUTER_LOG=$3/router.log NODE_IP_LIST=10.0.0.1,10.0.0.2
find_support_dir "$1"
plan_launch --container-cli podman --health-timeout 60 --router-policy "$2" \
  --model-path m --tp 8 --dp 2
REPLICA_BASE_PORT=30001 ROUTER_METRICS_PORT=30003
router_launch
wait "${ROUTER_PID}"
"""


@pytest.mark.parametrize("policy", ["round_robin", "power_of_two"])
def test_router_is_started_with_the_plan_metrics_port(tmp_path: Path, policy: str) -> None:
    # A router "venv" whose python prints the argv it was given.
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    builtin = resources.files(BUILTIN_PROFILE_PACKAGE).joinpath("sandbox.yaml")
    profile = yaml.safe_load(builtin.read_text())
    profile["router"] = {"source": "venv", "venv": str(tmp_path)}
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    script = tmp_path / "run.sbatch"
    write_script(render_script(load_profile(str(tmp_path / "profile.yaml"))), script)
    result = subprocess.run(["bash", "-c", BASH_ROUTER, "router", str(script), policy,
                             str(tmp_path)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "router.log").read_text().splitlines()
    assert argv[argv.index("--prometheus-port") + 1] == "30003"
    assert argv[argv.index("--prometheus-host") + 1] == argv[argv.index("--host") + 1]
    assert argv[argv.index("--policy") + 1] == policy
    # sglang-router refuses power_of_two at start unless it is given two workers or more.
    urls = argv[argv.index("--worker-urls") + 1:][:2] if "--worker-urls" in argv else []
    expected = ["http://10.0.0.1:30001", "http://10.0.0.2:30002"]
    assert urls == (expected if policy == "power_of_two" else [])
