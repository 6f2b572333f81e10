"""Placement of replicas: the Python plan, and the rendered bash held to the same answers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from slurm_sglang.launch_plan import Plan, PlanError, parse_parallelism, plan, uses_replicas
from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script


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
SGLANG_ARGS=(--model-path m $2)
NODES=(n0 n1 n2 n3 n4 n5 n6 n7)
CONTAINER_CLI=podman
PORT=30000
replica_flag_defaults
find_support_dir "$1"
plan_launch "$3" "$4"
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
