"""The NCCL pre-flight script: its pure parts, and real runs over loopback with gloo."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang import preflight_nccl
from slurm_sglang.preflight_nccl import (
    Run,
    build_parser,
    describe_failure,
    interface_problem,
    parse_sizes,
    report,
    shown_environment,
)

SCRIPT = Path(preflight_nccl.__file__)
VERDICT_OK = re.compile(r"^preflight: ok busbw_max=\d+\.\d\d slowest=(\S+)$")
# Neither a hang nor a slow machine may hold the suite: every run has a hard limit.
RUN_LIMIT_SECONDS = 240

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed: the CPU build is enough (pip install torch==2.13.0)",
)

# What NCCL 2.28.9 under torch 2.11 said on an H100 (docs/performance.md, NCCL pre-flight).
NCCL_DUPLICATE_GPU = """NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:93, \
invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.28.9
ncclInvalidUsage: This usually reflects invalid usage of NCCL library.
Last error:
Duplicate GPU detected : rank 0 and rank 1 both on CUDA device 60"""
NCCL_NO_INTERFACE = """NCCL error in: \
/pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3135, \
invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.28.9
ncclInvalidUsage: This usually reflects invalid usage of NCCL library.
Last error:
Bootstrap : no socket interface found"""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def node_command(nnodes: int, node_rank: int, port: int, names: str, *extra: str) -> list[str]:
    """The per-node command line, as the data plane would run it on each node."""
    return [
        sys.executable, str(SCRIPT), "--nnodes", str(nnodes), "--node-rank", str(node_rank),
        "--master-addr", "127.0.0.1", "--master-port", str(port), "--nodes", names,
        "--backend", "gloo", "--sizes", "64K,256K", "--iters", "3", "--warmup", "1", *extra,
    ]  # fmt: skip


def run_nodes(
    nnodes: int,
    *extra: str,
    ranks: list[int] | None = None,
    environments: dict[int, dict[str, str]] | None = None,
    node_args: dict[int, list[str]] | None = None,
) -> dict[int, subprocess.CompletedProcess[str]]:
    """Start the given node ranks at once over loopback; return each one's exit and output."""
    port = free_port()
    names = ",".join(f"node{index}" for index in range(nnodes))
    started = {}
    for node_rank in ranks if ranks is not None else range(nnodes):
        environment = {**os.environ, **(environments or {}).get(node_rank, {})}
        started[node_rank] = subprocess.Popen(
            node_command(nnodes, node_rank, port, names, *extra,
                         *(node_args or {}).get(node_rank, [])),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        )  # fmt: skip
    finished = {}
    for node_rank, process in started.items():
        stdout, stderr = process.communicate(timeout=RUN_LIMIT_SECONDS)
        finished[node_rank] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return finished


def verdict(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of a node's output: the machine-readable verdict."""
    return result.stdout.strip().splitlines()[-1]


def options_for(*argv: str, nnodes: int = 2, procs: int = 4) -> Run:
    """A Run as a node launcher builds it, for the pure report functions."""
    options = build_parser().parse_args(
        ["--nnodes", str(nnodes), "--node-rank", "0", "--master-addr", "h", "--master-port", "1",
         *argv]
    )
    run = Run(options, started=0.0)
    run.backend, run.procs = "nccl", procs
    return run


def test_sizes_are_binary_multiples_in_whole_float32_elements() -> None:
    assert parse_sizes("1M, 16m,256K,1G,10") == [
        ("1M", 1 << 20), ("16M", 16 << 20), ("256K", 256 << 10), ("1G", 1 << 30), ("10", 8),
    ]  # fmt: skip


@pytest.mark.parametrize("text", ["", "0M", "1T", "fast", "-1M"])
def test_bad_sizes_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_sizes(text)


def test_nccl_interface_names_match_as_prefixes_like_nccl() -> None:
    present = ["eth0", "ib0", "lo"]
    assert interface_problem("NCCL_SOCKET_IFNAME", "eth", present, "gpu7") is None
    assert interface_problem("NCCL_SOCKET_IFNAME", "xyz,ib", present, "gpu7") is None
    assert interface_problem("NCCL_SOCKET_IFNAME", "^docker,lo", present, "gpu7") is None
    assert interface_problem("NCCL_SOCKET_IFNAME", "", present, "gpu7") is None
    assert interface_problem("NCCL_SOCKET_IFNAME", "=eth", present, "gpu7") == (
        "NCCL_SOCKET_IFNAME==eth: no such interface on gpu7 (it has: eth0, ib0, lo)"
    )
    assert interface_problem("NCCL_SOCKET_IFNAME", "xyz", present, "gpu7") == (
        "NCCL_SOCKET_IFNAME=xyz: no such interface on gpu7 (it has: eth0, ib0, lo)"
    )


def test_gloo_interface_names_must_match_exactly() -> None:
    assert interface_problem("GLOO_SOCKET_IFNAME", "eth0", ["eth0"], "gpu7") is None
    problem = interface_problem("GLOO_SOCKET_IFNAME", "eth", ["eth0"], "gpu7")
    assert problem == "GLOO_SOCKET_IFNAME=eth: no such interface on gpu7 (it has: eth0)"


def test_nccl_duplicate_gpu_error_names_node_rank_and_reason() -> None:
    line = describe_failure(NCCL_DUPLICATE_GPU, "nccl", "node0", 1, "init_process_group")
    assert line == (
        "two ranks share one GPU on node0 (rank 1, init_process_group): give each rank its own"
        " GPU; NCCL invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.28.9"
        " (Last error: Duplicate GPU detected : rank 0 and rank 1 both on CUDA device 60)"
    )


def test_nccl_missing_interface_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "xyz0")
    line = describe_failure(NCCL_NO_INTERFACE, "nccl", "gpu7", 0, "init_process_group")
    assert line.startswith(
        "NCCL_SOCKET_IFNAME=xyz0: NCCL found no usable interface on gpu7 (rank 0,"
    )
    assert line.endswith("(Last error: Bootstrap : no socket interface found)")


def test_other_backend_errors_keep_their_first_line() -> None:
    line = describe_failure("Connection closed by peer\nmore", "gloo", "gpu7", 3, "all_reduce 1M")
    assert line == "gloo error on gpu7 (rank 3, all_reduce 1M): Connection closed by peer"


def test_environment_shows_fabric_variables_and_hides_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    monkeypatch.setenv("FI_PROVIDER", "efa")
    monkeypatch.setenv("SGLANG_HOST_IP", "10.0.0.7")
    monkeypatch.setenv("FI_EFA_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    shown = shown_environment()
    assert {"NCCL_SOCKET_IFNAME=eth0", "FI_PROVIDER=efa", "SGLANG_HOST_IP=10.0.0.7"} <= set(shown)
    assert "FI_EFA_ACCESS_KEY=<hidden>" in shown
    assert not any("s3cret" in line or "hf_abc" in line or "HF_TOKEN" in line for line in shown)


def test_report_takes_the_slowest_rank_and_names_the_slowest_node() -> None:
    run = options_for("--sizes", "1M,2M", "--nodes", "a,b")
    results = [
        {"node": "a" if rank < 4 else "b",
         "seconds": {"1M": 1e-4, "2M": 4e-4 if rank == 6 else 2e-4}}
        for rank in range(8)
    ]  # fmt: skip
    lines, verdict = report(run, results)
    # busbw = algbw * 2(n-1)/n: 1M in 100 us is 10.49 GB/s algbw, 18.35 busbw over 8 ranks.
    assert lines == [
        "preflight: nccl all-reduce of float32, 8 ranks on 2 node(s), 4 per node, "
        "median of 20 iterations",
        "    size      time_us   algbw_GB/s   busbw_GB/s",
        "      1M        100.0        10.49        18.35",
        "      2M        400.0         5.24         9.18",
        "per node at 2M:",
        "  a                               200.0 us",
        "  b                               400.0 us",
        "slowest node: b",
    ]
    assert verdict == "preflight: ok busbw_max=18.35 slowest=b"


def test_one_rank_has_no_bus_bandwidth_and_no_floor() -> None:
    run = options_for("--sizes", "1M", "--min-busbw-gbps", "50", nnodes=1, procs=1)
    lines, verdict = report(run, [{"node": "a", "seconds": {"1M": 1e-4}}])
    assert lines[2] == "      1M        100.0        10.49         0.00"
    assert lines[-1].startswith("note: one rank moves no data over any link")
    assert verdict == "preflight: ok busbw_max=0.00 slowest=a"


def test_bandwidth_under_the_floor_names_the_size_and_figure() -> None:
    run = options_for("--sizes", "1M", "--min-busbw-gbps", "50")
    results = [{"node": "a", "seconds": {"1M": 1e-3}} for _ in range(8)]
    busbw = (1 << 20) / 1e-3 / 1e9 * 2 * 7 / 8
    assert report(run, results)[1] == (
        f"preflight: FAILED busbw {busbw:.2f} GB/s at 1M is under the floor of 50.00 GB/s"
        " (slowest node: a)"
    )


def test_node_names_must_cover_every_node() -> None:
    with pytest.raises(ValueError, match="--nodes names 1 nodes, --nnodes is 2"):
        options_for("--nodes", "a")


@needs_torch
def test_one_node_of_two_processes_all_reduces_with_gloo() -> None:
    result = run_nodes(1, "--procs-per-node", "2")[0]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "preflight: gloo all-reduce of float32, 2 ranks on 1 node(s), 2 per node" in lines[1]
    assert [line.split()[0] for line in lines[3:5]] == ["64K", "256K"]
    match = VERDICT_OK.match(verdict(result))
    assert match and match.group(1) == "node0"


@needs_torch
def test_two_nodes_of_one_process_agree_on_one_verdict() -> None:
    results = run_nodes(2)
    head, other = results[0], results[1]
    assert head.returncode == 0 and other.returncode == 0, head.stdout + other.stdout
    assert verdict(head) == verdict(other)
    match = VERDICT_OK.match(verdict(head))
    assert match and match.group(1) in {"node0", "node1"}
    lines = head.stdout.splitlines()
    table = lines[lines.index("per node at 256K:") :]
    assert [line.split()[0] for line in table[1:3]] == ["node0", "node1"]
    assert "preflight: gloo all-reduce of float32, 2 ranks on 2 node(s)" not in other.stdout


@needs_torch
def test_four_nodes_rendezvous_over_loopback() -> None:
    results = run_nodes(4)
    assert all(result.returncode == 0 for result in results.values()), results[0].stdout
    assert len({verdict(result) for result in results.values()}) == 1
    assert VERDICT_OK.match(verdict(results[0]))


@needs_torch
def test_a_node_that_never_joins_is_named_within_the_join_timeout() -> None:
    head = run_nodes(2, "--join-timeout", "8", ranks=[0])[0]
    assert head.returncode == 1
    assert verdict(head) == "preflight: FAILED did not join within 8 s: node1 (ranks 1)"


@needs_torch
def test_a_node_that_cannot_reach_the_head_says_so() -> None:
    other = run_nodes(2, "--join-timeout", "4", ranks=[1])[1]
    assert other.returncode == 1
    assert verdict(other).startswith(
        "preflight: FAILED node1 could not reach the head at 127.0.0.1:"
    )


@needs_torch
def test_a_missing_interface_fails_clearly_on_its_own_node() -> None:
    result = run_nodes(1, environments={0: {"NCCL_SOCKET_IFNAME": "nosuch0"}})[0]
    assert result.returncode == 1
    assert verdict(result).startswith(
        "preflight: FAILED NCCL_SOCKET_IFNAME=nosuch0: no such interface on node0 (it has: "
    )


@needs_torch
def test_a_missing_interface_on_another_node_fails_the_head_naming_that_node() -> None:
    results = run_nodes(2, environments={1: {"GLOO_SOCKET_IFNAME": "nosuch0"}})
    expected = "preflight: FAILED GLOO_SOCKET_IFNAME=nosuch0: no such interface on node1"
    assert results[0].returncode == 1 and results[1].returncode == 1
    assert verdict(results[0]).startswith(expected)
    assert verdict(results[1]) == verdict(results[0])


@needs_torch
def test_bandwidth_floor_fails_the_run_naming_the_size() -> None:
    result = run_nodes(1, "--procs-per-node", "2", "--min-busbw-gbps", "100000")[0]
    assert result.returncode == 1
    assert re.match(
        r"^preflight: FAILED busbw \d+\.\d\d GB/s at 256K is under the floor of 100000\.00 GB/s"
        r" \(slowest node: node0\)$",
        verdict(result),
    )


def worker_hook(tmp_path: Path, code: str) -> dict[str, str]:
    """An environment whose Python runs CODE at start-up in the check's workers only (the
    launcher re-runs this file with --worker-rank N): a rank that crashes or hangs."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if '--worker-rank' in sys.orig_argv:\n"
        "    local_rank = int(sys.orig_argv[-1])\n"
        f"    {code}\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


@needs_torch
def test_nodes_that_start_different_rank_counts_are_refused_by_the_smaller() -> None:
    results = run_nodes(2, node_args={0: ["--procs-per-node", "2"], 1: ["--procs-per-node", "1"]})
    expected = (
        "preflight: FAILED node1 starts 1 ranks, the head 2: give every node the same"
        " --gpus-per-node"
    )
    assert [verdict(results[0]), verdict(results[1])] == [expected, expected]
    assert results[0].returncode == 1 and results[1].returncode == 1


@needs_torch
def test_a_rank_that_dies_without_a_word_is_named_by_its_node(tmp_path: Path) -> None:
    hook = worker_hook(tmp_path, "os._exit(7)")
    result = run_nodes(1, "--procs-per-node", "2", environments={0: hook})[0]
    assert result.returncode == 1
    assert re.fullmatch(
        r"preflight: FAILED rank [01] on node0 exited with code 7 \(its stderr is above\)",
        verdict(result),
    )


@needs_torch
def test_a_rank_that_never_finishes_is_named_with_its_step_at_the_deadline(
    tmp_path: Path,
) -> None:
    hook = worker_hook(tmp_path, "if local_rank == 1: time.sleep(600)")
    result = run_nodes(1, "--procs-per-node", "2", "--timeout", "20", environments={0: hook})[0]
    assert result.returncode == 1
    assert re.fullmatch(
        r"preflight: FAILED no result within 20 s: rank 0 on node0 in (join|init_process_group),"
        r" rank 1 on node0 in join",
        verdict(result),
    )
