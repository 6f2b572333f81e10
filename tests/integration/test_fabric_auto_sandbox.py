"""Fabric auto on the sandbox (issue 16, item 5): each node finds its fabric from its own devices.

Every sandbox node has its own tree behind the sandbox profile's fabric.sysfs_root (a bind
mount in the node's mount namespace, Layout.pretend_sysfs): here node 1 gets a pretend EFA
device, node 2 an InfiniBand HCA with an active port, node 3 an HCA whose port is down and
node 4 nothing. One --tp 4 job over the four runs with fabric auto, and each rank's log names
the branch its node took. Nothing differs between the nodes but their files: the script and
its environment are the same everywhere. The pretend fabrics carry no traffic, so the test
reads only the detection lines, then stops the job and checks nothing is left running.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from serving import job_containers, serve_env, tiny_model, wait_job_gone

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import Layout, SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec

pytestmark = pytest.mark.cluster
NODES = 4
# What each node is given, and the fabric auto must find there.
EXPECTED = ("efa", "infiniband", "tcp", "tcp")
FABRIC_LINE = re.compile(r"^fabric on (\S+): (\S+) \(auto\)$", re.M)


def _device(sysfs: Path, name: str, driver: str, states: tuple[str, ...]) -> None:
    """A pretend RDMA device as the kernel lists it: device/driver a link, ports/N/state."""
    device = sysfs / "class" / "infiniband" / name
    (device / "device").mkdir(parents=True)
    # The link's last part is all the detection reads (rdma_driver); sysfs's are relative.
    (device / "device" / "driver").symlink_to(f"../../../../bus/pci/drivers/{driver}")
    for number, state in enumerate(states, start=1):
        (device / "ports" / str(number)).mkdir(parents=True)
        (device / "ports" / str(number) / "state").write_text(f"{state}\n")


@pytest.fixture
def pretend_devices(sandbox: SandboxInfo) -> Iterator[list[str]]:
    """The first four nodes' pretend devices, removed afterwards (the nodes go back to none)."""
    if len(sandbox.nodes) < NODES:
        pytest.skip(f"needs {NODES} sandbox nodes (sandbox up --nodes {NODES})")
    layout = Layout(sandbox.state_dir)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    if profile.get("fabric", {}).get("sysfs_root") != str(layout.pretend_sysfs):
        pytest.skip("this sandbox predates per-node pretend devices: sandbox down, sandbox up")
    nodes = list(sandbox.nodes[:NODES])
    trees = [layout.node_sysfs(node) for node in nodes]
    for tree in trees:
        shutil.rmtree(tree / "class", ignore_errors=True)
    _device(trees[0], "rdmap16s27", "efa", ("1: ACTIVE",))
    _device(trees[1], "mlx5_0", "mlx5_core", ("1: DOWN", "4: ACTIVE"))
    _device(trees[2], "mlx5_0", "mlx5_core", ("1: DOWN",))
    try:
        yield nodes
    finally:
        for tree in trees:
            shutil.rmtree(tree / "class", ignore_errors=True)


def _memlock_raisable() -> bool:
    """Whether podman here can give a container unlimited locked memory (as the script asks)."""
    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] == resource.RLIM_INFINITY:
        return True
    status = Path("/proc/self/status").read_text()
    caps = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caps >> 24 & 1)


def test_each_node_finds_its_own_fabric_from_its_own_devices(
        sandbox: SandboxInfo, pretend_devices: list[str]) -> None:
    nodes = pretend_devices
    layout = Layout(sandbox.state_dir)
    # The same path on every node shows that node's tree, and the host's stays empty.
    seen = [node_exec(node, ["ls", f"{layout.pretend_sysfs}/class/infiniband"], check=False
                      ).stdout.split() for node in nodes]
    assert seen == [["rdmap16s27"], ["mlx5_0"], ["mlx5_0"], []]
    assert not (layout.pretend_sysfs / "class").exists()

    profile = yaml.safe_load(sandbox.profile_path.read_text())
    # No aws-ofi-nccl on the sandbox's nodes: the image's own (none) passes the pre-flight.
    profile["fabric"].update(kind="auto", efa_plugin_path="")
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    profile_path = scripts / "fabric-auto-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    script = scripts / "run-fabric-auto.sbatch"
    write_script(render_script(load_profile(str(profile_path))), script)
    model = tiny_model(sandbox.shared_dir / "models" / "fabric-auto")

    # RDMA nodes pass the memlock pre-flight only where the containers can get unlimited
    # locked memory; a machine whose root lacks CAP_SYS_RESOURCE and whose hard limit is finite
    # (the nodes inherit it) cannot give it, and the pre-flight says so (not what this tests).
    skip = [] if _memlock_raisable() else ["--skip-preflight"]
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-N", str(NODES), "-p", "sandbox", "-w", ",".join(nodes),
         "--oversubscribe", "--gpus-per-node=1",
         f"--output={sandbox.shared_dir}/slurm-%j.out", str(script), *skip,
         "--model-path", str(model), "--tp", str(NODES)],
        cwd=sandbox.shared_dir, capture_output=True, text=True, check=True, env=serve_env())
    job_id = submitted.stdout.strip().split(";")[0]
    log_dir = sandbox.shared_dir / "logs" / job_id
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(found) < NODES and time.monotonic() < deadline:
            for log in log_dir.glob("node-*.log"):
                found.update(FABRIC_LINE.findall(log.read_text(errors="replace")))
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job_id], check=False)
        wait_job_gone(job_id)
    output = sandbox.shared_dir / f"slurm-{job_id}.out"
    assert found == dict(zip(nodes, EXPECTED, strict=True)), (
        output.read_text(errors="replace") if output.exists() else "no output")
    # Each line is in that node's own log, written there by its node step.
    for rank, node in enumerate(nodes):
        text = (log_dir / f"node-{rank}-{node}.log").read_text(errors="replace")
        assert f"fabric on {node}: {EXPECTED[rank]} (auto)" in text
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
