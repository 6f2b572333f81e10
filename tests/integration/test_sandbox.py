"""The sandbox behaves like a real multi-node GPU cluster, and `down` leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from slurm_sglang.profile import load_profile
from slurm_sglang.sandbox import snapshot
from slurm_sglang.sandbox.cluster import sandbox_down, sandbox_status, sandbox_up
from slurm_sglang.sandbox.host import HOSTS_MARKER
from slurm_sglang.sandbox.image import IMAGE_REPOSITORY, load_command, run_pipeline
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import containers_on, node_command, node_exec

pytestmark = pytest.mark.cluster

JOB_TIMEOUT = 180


def slurm(argv: list[str]) -> str:
    """Run a SLURM client command from the host; its stdout (fails the test on error)."""
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=JOB_TIMEOUT, check=False
    )
    assert completed.returncode == 0, f"{argv} failed: {completed.stderr}"
    return completed.stdout


def labelled(output: str) -> dict[int, str]:
    """Task id -> text of `srun --label` output, one line per task."""
    lines = (line.split(":", 1) for line in output.splitlines() if ":" in line)
    return {int(task): text.strip() for task, text in lines}


@pytest.mark.parametrize("node_count", [2, 4])
def test_srun_reaches_distinct_nodes(sandbox: SandboxInfo, node_count: int) -> None:
    if node_count > len(sandbox.nodes):
        pytest.skip(f"sandbox has {len(sandbox.nodes)} nodes")
    names = labelled(slurm(["srun", "-N", str(node_count), "--label", "hostname"]))
    addresses = labelled(slurm(["srun", "-N", str(node_count), "--label", "hostname", "-I"]))

    assert len(set(names.values())) == node_count
    assert set(names.values()) <= set(sandbox.nodes)
    assert len(set(addresses.values())) == node_count
    assert set(addresses.values()) <= set(sandbox.addresses.values())


def test_node_sees_its_own_hostname_and_address(sandbox: SandboxInfo) -> None:
    for node in sandbox.nodes:
        assert node_exec(node, ["hostname"]).stdout.strip() == node
        assert node_exec(node, ["hostname", "-I"]).stdout.split() == [sandbox.addresses[node]]


def test_exclusive_gpu_allocation_sets_cuda_visible_devices(sandbox: SandboxInfo) -> None:
    gpus = sandbox.gpus_per_node
    output = slurm(
        [
            "salloc",
            "-N",
            "2",
            f"--gpus-per-node={gpus}",
            "--exclusive",
            "--immediate=120",
            "srun",
            "--label",
            "env",
        ]
    )
    per_task: dict[int, dict[str, str]] = {}
    for line in output.splitlines():
        task, _, assignment = line.partition(": ")
        name, _, value = assignment.partition("=")
        if task.strip().isdigit() and name:
            per_task.setdefault(int(task), {})[name] = value

    expected = ",".join(str(index) for index in range(gpus))
    assert len(per_task) == 2
    for env in per_task.values():
        assert env["CUDA_VISIBLE_DEVICES"] == expected
        assert env["SLURM_GPUS_PER_NODE"] == str(gpus)
    assert len({env["SLURMD_NODENAME"] for env in per_task.values()}) == 2


def has_image(node: str, image: str) -> bool:
    """Whether node's podman storage holds the image (ID or tag)."""
    return node_exec(node, ["podman", "image", "exists", image], check=False).returncode == 0


def tiny_image_tarball(directory: Path, tag: str) -> tuple[Path, str]:
    """A one-file docker-archive image, gzipped like the data plane's; (path, image ID)."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        content = tag.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        layer.addfile(info, io.BytesIO(content))
    layer_bytes = layer_buffer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        }
    ).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    path = directory / "tiny-image.tar.gz"
    with tarfile.open(path, mode="w:gz") as archive:
        for name, data in (
            (f"{image_id}.json", config),
            (f"{diff_id}/layer.tar", layer_bytes),
            ("manifest.json", manifest),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path, image_id


def load_in_job_step(node: str, tarball: Path) -> subprocess.CompletedProcess[str]:
    """`pigz -dc TARBALL | srun -w NODE podman load`: a job step loads it on that node."""
    decompress = subprocess.Popen(["pigz", "-dc", str(tarball)], stdout=subprocess.PIPE)
    try:
        return subprocess.run(
            ["srun", "-N", "1", "-w", node, "podman", "load"],
            stdin=decompress.stdout,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT,
            check=False,
        )
    finally:
        assert decompress.stdout is not None
        decompress.stdout.close()
        decompress.wait()


def test_podman_load_in_job_step_fills_only_that_node(sandbox: SandboxInfo, tmp_path: Path) -> None:
    # An image of its own (unique tag): other users of the sandbox cannot race this test.
    tag = f"localhost/sandbox-load-test:{uuid.uuid4().hex[:12]}"
    tarball, image_id = tiny_image_tarball(tmp_path, tag)
    target = sandbox.nodes[-1]

    load = load_in_job_step(target, tarball)
    try:
        assert load.returncode == 0, load.stderr
        assert tag in load.stdout
        assert [node for node in sandbox.nodes if has_image(node, image_id)] == [target]
        host = subprocess.run(["podman", "image", "exists", tag], check=False)
        assert host.returncode != 0, "the host's own podman storage must not hold the image"
    finally:
        node_exec(target, ["podman", "rmi", "--force", tag], check=False)
    assert not has_image(target, image_id)


def test_standin_image_loads_and_runs_on_a_node(sandbox: SandboxInfo) -> None:
    assert sandbox.image_tarball is not None and sandbox.image_id, "sandbox up built no image"
    holders = [node for node in sandbox.nodes if has_image(node, sandbox.image_id)]
    node = holders[0] if holders else sandbox.nodes[0]
    if not holders:
        started = time.monotonic()
        load = load_in_job_step(node, sandbox.image_tarball)
        print(f"podman load of the stand-in image on {node}: {time.monotonic() - started:.1f} s")
        assert load.returncode == 0, load.stderr
        assert f"{IMAGE_REPOSITORY}:" in load.stdout

    output = slurm(
        [
            "srun",
            "-N",
            "1",
            "-w",
            node,
            "podman",
            "run",
            "--rm",
            "--net=host",
            sandbox.image_id,
            "python3",
            "-c",
            "import socket, sglang.launch_server; print(socket.gethostname())",
        ]
    )
    assert output.split() == [node]


def queue_is_empty() -> bool:
    """Whether no job is queued or running (so cycling the sandbox harms nobody)."""
    return slurm(["squeue", "-h", "-o", "%i"]).strip() == ""


def fake_gpus() -> list[str]:
    """The pretend GPU devices on the machine (/dev/fakegpuK), sorted."""
    return sorted(str(path) for path in Path("/dev").glob("fakegpu*"))


def test_down_then_up_leaves_the_machine_as_before(sandbox: SandboxInfo) -> None:
    if os.geteuid() != 0:
        pytest.skip("cycling the sandbox needs root")
    if not queue_is_empty():
        pytest.skip("jobs are running on the sandbox; not cycling it under them")
    shape = (len(sandbox.nodes), sandbox.gpus_per_node)
    try:
        sandbox_down()
        before = snapshot.take()
        # `up` adds the fake GPU devices that are missing, and `down` removes only those.
        fake_gpus_before = fake_gpus()
        info = sandbox_up(*shape)
        assert slurm(["srun", "-N", str(shape[0]), "hostname"]).split()
        # A container still running at `down` must not survive it, nor its conmon.
        node = info.nodes[-1]
        assert info.image_tarball is not None and info.image_id
        run_pipeline(load_command(info.image_tarball), prefix=node_command(node, []))
        node_exec(
            node,
            [
                "podman",
                "run",
                "-d",
                "--net=host",
                "--label",
                "slurm-sglang.test=cycle",
                info.image_id,
                "sleep",
                "600",
            ],
        )
        assert len(containers_on(node, label="slurm-sglang.test=cycle")) == 1
        while_up = snapshot.take()
        sandbox_down()
        after = snapshot.take()
        hosts_after = Path("/etc/hosts").read_text()
        fake_gpus_after = fake_gpus()
        slurm_conf_after = Path("/etc/slurm/slurm.conf")
        slurm_conf_ours = slurm_conf_after.is_symlink() and str(
            slurm_conf_after.readlink()
        ).startswith(str(info.state_dir))
    finally:
        sandbox_up(*shape)

    assert set(info.nodes) <= set(while_up["netns"]), "up created no namespaces?"
    assert "sbxbr0" in while_up["links"]
    assert any(line.endswith((" conmon", " sleep")) for line in while_up["processes"])
    assert snapshot.differences(before, after) == {}
    assert HOSTS_MARKER not in hosts_after
    assert fake_gpus_after == fake_gpus_before
    assert not slurm_conf_ours
    assert sandbox_status() is not None


def test_profile_is_a_valid_cluster_profile(sandbox: SandboxInfo) -> None:
    profile = load_profile(str(sandbox.profile_path))

    assert profile.slurm.partition == "sandbox"
    assert profile.slurm.gpus_per_node == sandbox.gpus_per_node
    assert profile.container.runtime == "podman"
    assert profile.container.image == str(sandbox.shared_dir / "sglang-serve-latest.tar.gz")
    assert Path(profile.container.image).is_file()
    assert profile.paths.workspace == str(sandbox.shared_dir)


def test_up_again_keeps_the_running_cluster(sandbox: SandboxInfo) -> None:
    if os.geteuid() != 0:
        pytest.skip("sandbox up needs root")
    controller_pid = Path(sandbox.state_dir, "run", "slurmctld.pid").read_text().split()[0]

    again = sandbox_up(len(sandbox.nodes), sandbox.gpus_per_node)

    assert again.nodes == sandbox.nodes
    assert again.addresses == sandbox.addresses
    assert Path(sandbox.state_dir, "run", "slurmctld.pid").read_text().split()[0] == controller_pid
    for node, address in sandbox.addresses.items():
        assert f"{address}\t{node}\t{HOSTS_MARKER}" in Path("/etc/hosts").read_text()
