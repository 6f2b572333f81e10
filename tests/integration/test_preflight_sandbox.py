"""The NCCL pre-flight through the real launch path on the sandbox, with the gloo backend.

The stand-in image carries no torch, so these runs use the `none` runtime with the Python that
runs pytest (torch, CPU build): the sandbox's nodes share this machine's filesystem.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving import READY, stop, tiny_model, wait_job_gone

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec

pytest.importorskip("torch", reason="the check needs torch on the nodes: pip install torch")
pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "slurm_sglang" / "sandbox" / "standin"
GRANTED = re.compile(r"Granted job allocation (\d+)")
JOIN_TIMEOUT = 15
# Small messages: the sandbox has two cores for every node and every test.
SIZES = "1M,4M"
# Other tests' servers listen on 30000 on the same nodes.
HTTP_PORT = "31871"
# Other tests hold nodes (some exclusively): an allocation may wait minutes for its turn.
ALLOCATION_SECONDS = 600


@dataclass(frozen=True)
class SandboxLaunch:
    """A profile on the sandbox, the workspace its jobs run from, and its rendered script."""

    profile: Path
    workspace: Path
    script: Path


@pytest.fixture(scope="module")
def none_runtime(sandbox: SandboxInfo) -> SandboxLaunch:
    """preflight.nccl on, sglang from the stand-in on PYTHONPATH, this test's Python."""
    workspace = sandbox.shared_dir / "preflight-nccl"
    workspace.mkdir(parents=True, exist_ok=True)
    profile = workspace / "profile.yaml"
    profile.write_text(
        "name: sandbox-none-preflight\n"
        "slurm: {partition: sandbox, gpus_per_node: 0, exclusive: false}\n"
        "container:\n"
        "  runtime: none\n"
        "  image: host-python\n"
        f"  python: {sys.executable}\n"
        f"  activate: ['export PYTHONPATH={STANDIN}']\n"
        "fabric: {kind: tcp}\n"
        f"paths: {{workspace: {workspace}}}\n"
        "preflight: {check_gpus: false, nccl: true}\n"
    )
    script = workspace / "run.sbatch"
    write_script(render_script(load_profile(str(profile))), script)
    return SandboxLaunch(profile, workspace, script)


def check_env(**extra: str) -> dict[str, str]:
    """This environment, with the check's small sizes."""
    return {**os.environ, "SLURM_SGLANG_PREFLIGHT_NCCL_SIZES": SIZES, **extra}


@dataclass(frozen=True)
class Finished:
    """A salloc that ended: its exit code, its output and the job's log directory."""

    code: int
    output: str
    log_dir: Path


def salloc_run(runtime: SandboxLaunch, salloc_args: list[str], command: list[str],
               env: dict[str, str], tmp_path: Path) -> Finished:
    """`salloc ARGS COMMAND` from the workspace, until it ends (scancel if it outlives 600 s)."""
    output = tmp_path / "salloc.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(["salloc", "-p", "sandbox", *salloc_args, *command],
                                   cwd=runtime.workspace, stdout=sink, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        try:
            code = process.wait(timeout=ALLOCATION_SECONDS)
        except subprocess.TimeoutExpired:
            stop(process, output)
            raise
    text = output.read_text(errors="replace")
    granted = GRANTED.search(text)
    assert granted, text
    wait_job_gone(granted.group(1))
    return Finished(code, text, runtime.workspace / "logs" / granted.group(1))


def node_logs(log_dir: Path, prefix: str) -> list[Path]:
    """The job's per-node logs whose names start with prefix."""
    return sorted(log_dir.glob(f"{prefix}*.log"))


@pytest.mark.parametrize("nodes", [2, 4])
def test_check_alone_across_nodes(sandbox: SandboxInfo, none_runtime: SandboxLaunch,
                                  tmp_path: Path, nodes: int) -> None:
    """`slurm-sglang preflight --nccl` in an allocation: gloo over every node, a table, ok."""
    if len(sandbox.nodes) < nodes:
        pytest.skip(f"sandbox has {len(sandbox.nodes)} nodes; run sandbox up --nodes {nodes}")
    done = salloc_run(
        none_runtime, ["-N", str(nodes)],
        [sys.executable, "-m", "slurm_sglang", "preflight", "--nccl",
         "--cluster", str(none_runtime.profile)],
        check_env(), tmp_path)
    assert done.code == 0, done.output
    assert f"gloo all-reduce of float32, {nodes} ranks on {nodes} node(s)" in done.output
    assert f"NCCL pre-flight passed on {nodes} node(s)" in done.output
    for size in SIZES.split(","):
        assert re.search(rf"^\s+{size}\s+\d", done.output, re.M), done.output
    logs = node_logs(done.log_dir, "preflight-nccl-")
    assert len(logs) == nodes
    for log in logs:
        lines = log.read_text().splitlines()
        assert lines[-1].startswith("preflight: ok "), log
        # The rank's fabric environment reached the check (fabric_setup of the tcp profile).
        assert "preflight: env NCCL_IB_DISABLE=1" in lines
        assert any(line.startswith("preflight: env GLOO_SOCKET_IFNAME=") for line in lines)
    assert node_logs(done.log_dir, "rank-") == []


def test_serving_starts_after_the_check(sandbox: SandboxInfo, none_runtime: SandboxLaunch,
                                       tmp_path: Path) -> None:
    """The profile's preflight.nccl: every node passes the check before any rank starts."""
    model = tiny_model(none_runtime.workspace / "tiny-model")
    output_path = tmp_path / "salloc.out"
    with output_path.open("wb") as sink:
        process = subprocess.Popen(
            ["salloc", "-N", "2", "-p", "sandbox", "bash", str(none_runtime.script),
             "--model-path", str(model), "--tp", "2", "--port", HTTP_PORT],
            cwd=none_runtime.workspace, stdout=sink, stderr=subprocess.STDOUT,
            env=check_env(SGLANG_STANDIN_LOAD_SECONDS="0.5"), start_new_session=True)
    try:
        deadline = time.monotonic() + ALLOCATION_SECONDS
        while not READY.search(output_path.read_text(errors="replace")):
            assert process.poll() is None, output_path.read_text(errors="replace")
            assert time.monotonic() < deadline, output_path.read_text(errors="replace")
            time.sleep(0.5)
    finally:
        stop(process, output_path)
    output = output_path.read_text(errors="replace")
    granted = GRANTED.search(output)
    assert granted
    log_dir = none_runtime.workspace / "logs" / granted.group(1)
    events = [line.split() for line in (log_dir / "events.log").read_text().splitlines()]
    kinds = [words[1] for words in events]
    checked = [words for words in events if words[1] == "preflight-nccl"]
    assert len(checked) == 2 and all("detail=preflight:" in words for words in checked)
    assert all(words[words.index("detail=preflight:") + 1] == "ok" for words in checked)
    last_check = max(index for index, kind in enumerate(kinds) if kind == "preflight-nccl")
    assert kinds.index("rank-started") > last_check
    assert "gloo all-reduce of float32, 2 ranks on 2 node(s)" in output


@contextmanager
def head_port_blocked(node: str, head_address: str, ports: range) -> Iterator[None]:
    """A firewall rule inside node's network namespace: TCP to the head's ports is refused.

    Only these ports, so other tests' jobs on the same nodes are untouched.
    """
    rule = ["OUTPUT", "-p", "tcp", "-d", f"{head_address}/32",
            "--dport", f"{ports.start}:{ports.stop - 1}", "-j", "REJECT"]
    node_exec(node, ["iptables", "-I", *rule])
    try:
        yield
    finally:
        node_exec(node, ["iptables", "-D", *rule], check=False)


def test_a_node_that_cannot_reach_the_head_is_named(sandbox: SandboxInfo,
                                                    none_runtime: SandboxLaunch,
                                                    tmp_path: Path) -> None:
    """The check fails within its join timeout, naming the node; no rank starts."""
    if len(sandbox.nodes) < 3:
        pytest.skip("needs 3 sandbox nodes")
    head, other, cut_off = sandbox.nodes[:3]
    model = none_runtime.workspace / "tiny-model"
    model.mkdir(exist_ok=True)
    # The check's port is the first free one from the dist-init port + 14 (docs/preflight.md).
    dist_port = 40000 + os.getpid() % 5000
    with head_port_blocked(cut_off, sandbox.addresses[head],
                           range(dist_port + 14, dist_port + 64)):
        done = salloc_run(
            none_runtime, ["-N", "3", "-w", f"{head},{other},{cut_off}"],
            ["bash", str(none_runtime.script), "--preflight-nccl", "--model-path", str(model),
             "--tp", "3", "--dist-port", str(dist_port)],
            check_env(SLURM_SGLANG_PREFLIGHT_NCCL_JOIN_TIMEOUT=str(JOIN_TIMEOUT)), tmp_path)
    assert done.code == 1, done.output
    failed = re.search(r"NCCL pre-flight failed: (.*)", done.output)
    assert failed, done.output
    assert f"did not join within {JOIN_TIMEOUT} s: {cut_off}" in failed.group(1)
    assert head not in failed.group(1) and other not in failed.group(1)
    # The cut-off node says why on its own line: it could not reach the head.
    assert re.search(rf"^  {cut_off}\s+preflight: FAILED {cut_off} could not reach the head",
                     done.output, re.M), done.output
    assert "no rank was started" in done.output
    assert node_logs(done.log_dir, "rank-") == []
    assert (done.log_dir / "state").read_text().strip() == "failed"


def test_the_check_runs_in_the_serving_image(sandbox: SandboxInfo, tmp_path: Path) -> None:
    """podman: the check runs inside the rank's image (the stand-in has no torch), and says so."""
    done = salloc_run(
        SandboxLaunch(sandbox.profile_path, sandbox.shared_dir, sandbox.shared_dir),
        ["-N", "2"],
        [sys.executable, "-m", "slurm_sglang", "preflight", "--nccl",
         "--cluster", str(sandbox.profile_path)],
        check_env(SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env"), tmp_path)
    assert done.code == 1, done.output
    verdicts = re.findall(r"^  (\S+)\s+preflight: FAILED torch is not importable on (\S+) ",
                          done.output, re.M)
    assert len(verdicts) == 2 and all(node == named for node, named in verdicts), done.output
    assert node_logs(done.log_dir, "rank-") == []
