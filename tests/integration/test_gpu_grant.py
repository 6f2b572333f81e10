"""What each runtime's ranks are given on a node shared with another allocation.

Another allocation holds two of a sandbox node's pretend GPUs (gres.conf's /dev/fakegpuK);
this job is granted two more on the same node (salloc --gpus-per-node=2). The ranks must see
exactly the GPUs SLURM granted this job, never the other allocation's: `none` as a process of
the step (the step's own CUDA_VISIBLE_DEVICES), podman by `host_gpus` (UUIDs where nvidia-smi
lists them, SLURM's ids where it cannot, said in the log). The stand-in reports each rank's
CUDA_VISIBLE_DEVICES in /get_server_info. The sandbox has no device cgroups (TaskPlugin=none),
so SLURM's step value is the global ids; the cgroup case (ordinals from 0) is
test_runtimes_fabrics's.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import (
    salloc_serve,
    serve_env,
    shared_workspace,
    standin_venv_at,
    tiny_model,
    wait_job_gone,
)
from test_runtime_none import none_profile

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
HOLD_SECONDS = 600
GRANT_WAIT_SECONDS = 60
# nvidia-smi's answer as the script asks for it (nvidia-smi --help-query-gpu: index, uuid).
NVIDIA_SMI_SHIM = """#!/bin/sh
# nvidia-smi for the sandbox's pretend GPUs: the node's {count} GPUs with fixed UUIDs (no
# device cgroups in the sandbox, so the step sees them all); only the script's one query.
if [ "$*" != "--query-gpu=index,uuid --format=csv,noheader" ]; then
  echo "nvidia-smi shim: not a query the script makes: $*" >&2
  exit 2
fi
i=0
while [ "$i" -lt {count} ]; do
  printf '%d, GPU-5a4db0c8-0000-4000-8000-%012d\\n' "$i" "$i"
  i=$((i + 1))
done
"""


def uuid_of(index: str) -> str:
    """The shim's UUID of a pretend GPU."""
    return f"GPU-5a4db0c8-0000-4000-8000-{int(index):012d}"


@pytest.fixture(scope="module")
def workspace(sandbox: SandboxInfo) -> Iterator[Path]:
    """A directory of this module's own on the shared storage, removed afterwards."""
    with shared_workspace(sandbox, "gpu-grant") as path:
        yield path


@pytest.fixture(scope="module")
def standin_venv(workspace: Path) -> Path:
    """A venv of the system python3 with the stand-in `sglang` (as test_runtime_none's)."""
    return standin_venv_at(workspace / "venv")


@pytest.fixture(scope="module")
def model_dir(workspace: Path) -> Path:
    """A model directory only this module's ranks name."""
    path = tiny_model(workspace / "model")
    return path


def granted_gpus(job_id: str) -> list[str]:
    """The GPU indices SLURM granted a job on its node (scontrol -d: GRES=gpu:N(IDX:2-3))."""
    shown = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True,
                           text=True, check=True).stdout
    match = re.search(r"GRES=\S*IDX:([0-9,-]+)", shown)
    assert match, shown
    indices: list[str] = []
    for part in match.group(1).split(","):
        first, _, last = part.partition("-")
        indices += [str(i) for i in range(int(first), int(last or first) + 1)]
    return indices


@pytest.fixture(scope="module")
def held(sandbox: SandboxInfo, workspace: Path) -> Iterator[tuple[str, list[str]]]:
    """Another allocation holding two GPUs of the first node: (node, its GPU indices)."""
    if sandbox.gpus_per_node < 4:
        pytest.skip("needs a sandbox with at least 4 GPUs per node")
    name = f"{workspace.name}-hold"
    # SLURM picks the node: other jobs may hold a given node's GPUs.
    process = subprocess.Popen(
        ["salloc", "-N", "1", "-p", "sandbox", "--gpus-per-node=2",
         "--job-name", name, "sleep", str(HOLD_SECONDS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    job_id = ""
    try:
        deadline = time.monotonic() + GRANT_WAIT_SECONDS
        while not job_id and time.monotonic() < deadline:
            listed = subprocess.run(["squeue", "-h", "-n", name, "-t", "R", "-o", "%i"],
                                    capture_output=True, text=True, check=False).stdout.split()
            job_id = listed[0] if listed else ""
            time.sleep(0.3)
        assert job_id, f"the holding allocation {name} was not granted"
        node = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True,
                              text=True, check=True).stdout.strip()
        yield node, granted_gpus(job_id)
    finally:
        subprocess.run(["scancel", "--name", name], check=False)
        # salloc outlives its revoked allocation (it waited 20 s here every time): once SLURM
        # has let the job go, its session, this fixture's own, goes too, with the sleep salloc
        # ran in a process group of its own.
        if job_id:
            wait_job_gone(job_id)
        subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)
        process.wait(timeout=10)


def serve_on_shared_node(sandbox: SandboxInfo, workspace: Path, node: str, script: Path,
                         model_dir: Path, tmp_path: Path, env: dict[str, str],
                         tag: str) -> tuple[list[str], list[str], str]:
    """Serve one rank of tp 2 on NODE with two GPUs: (granted ids, ranks' CUDA_VISIBLE_DEVICES,
    the run's stderr logs)."""
    name = f"{workspace.name}-{tag}"
    salloc_args = ["-w", node, "--gpus-per-node=2", "--job-name", name]
    try:
        with salloc_serve(sandbox, script, 1, ["--model-path", str(model_dir), "--tp", "2"],
                          tmp_path, salloc_args=salloc_args, env=env) as run:
            granted = granted_gpus(run.job_id)
            ranks = run.get_json("/get_server_info")["ranks"]
            seen = [rank["gpus"]["cuda_visible_devices"] for rank in ranks]
            logs = "".join(path.read_text(errors="replace")
                           for path in sorted(run.log_dir.rglob("*")) if path.is_file())
            return granted, seen, logs
    finally:
        subprocess.run(["scancel", "--name", name], check=False)


def test_none_rank_sees_exactly_the_granted_gpus(
        sandbox: SandboxInfo, workspace: Path, standin_venv: Path, model_dir: Path,
        held: tuple[str, list[str]], tmp_path: Path) -> None:
    node, other = held
    profile = load_profile(str(none_profile(sandbox, workspace, standin_venv, "gpu-none")))
    script = workspace / "run-none.sbatch"
    write_script(render_script(profile), script)
    granted, seen, _ = serve_on_shared_node(
        sandbox, workspace, node, script, model_dir, tmp_path,
        serve_env(SLURM_SGLANG_CONTAINER_CLI="none"), "none")
    assert len(granted) == 2 and not set(granted) & set(other)
    # No cgroups: the step's CUDA_VISIBLE_DEVICES is SLURM's ids, passed through in order.
    assert seen == [",".join(granted)]


@pytest.mark.parametrize("nvidia_smi", [False, True], ids=["no-nvidia-smi", "nvidia-smi"])
def test_podman_rank_gets_the_granted_gpus_by_uuid_or_says_it_cannot(
        sandbox: SandboxInfo, workspace: Path, model_dir: Path, held: tuple[str, list[str]],
        tmp_path: Path, nvidia_smi: bool) -> None:
    node, other = held
    script = workspace / "run-podman.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), script)
    env = serve_env()
    if nvidia_smi:
        shims = workspace / "shims-nvidia-smi"
        shims.mkdir(exist_ok=True)
        shim = shims / "nvidia-smi"
        shim.write_text(NVIDIA_SMI_SHIM.format(count=sandbox.gpus_per_node))
        shim.chmod(0o755)
        # On the job's PATH only: salloc and srun --export=ALL carry it to the steps.
        env["PATH"] = f"{shims}:{env['PATH']}"
    granted, seen, logs = serve_on_shared_node(
        sandbox, workspace, node, script, model_dir, tmp_path, env,
        "smi" if nvidia_smi else "nosmi")
    assert len(granted) == 2 and not set(granted) & set(other)
    if nvidia_smi:
        assert seen == [",".join(uuid_of(index) for index in granted)]
    else:
        assert seen == [",".join(granted)]
        assert f"no GPU UUIDs from nvidia-smi on {node}" in logs
