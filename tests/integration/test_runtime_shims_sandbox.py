"""Runtimes apptainer and enroot on the sandbox, through shims that refuse what the tools refuse.

The sandbox has neither apptainer nor pyxis. tests/integration/shims holds an `apptainer`
(exec only: its documented flags, its image forms, --cleanenv), an `srun` with pyxis's
--container-* options (checked as pyxis does, then the real srun runs the step) and an `enroot`
(list/remove of the named containers the srun shim records). They are copied to a directory of
this module's on the shared storage and put first on PATH through the job's environment only
(salloc and srun --export=ALL carry it to every step). The "image" is the stand-in's venv:
its bin/ comes first on the rank's PATH.

Not covered (no shim can): a real image's root filesystem and its programs (curl, ip, ps in an
enroot image), the mounts (the sandbox's storage is shared, so a missing mount goes unnoticed),
--container-workdir, enroot's own import of a registry image, GPUs and fabric libraries inside
the container (--nv, the host's aws-ofi-nccl).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import OpenAI
from serving import GRANTED, salloc_serve, serve_env, shared_workspace, standin_venv_at, tiny_model
from test_runtime_none import rank_environments, wait_until_gone

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
SHIMS = Path(__file__).resolve().parent / "shims"


@pytest.fixture(scope="module")
def workspace(sandbox: SandboxInfo) -> Iterator[Path]:
    """A directory of this module's own on the shared storage, removed afterwards."""
    with shared_workspace(sandbox, "runtime-shims") as path:
        yield path


@pytest.fixture(scope="module")
def image_root(workspace: Path) -> Path:
    """The pretend image: a venv of the system python3 with the stand-in `sglang`."""
    return standin_venv_at(workspace / "image-root")


@pytest.fixture(scope="module")
def shims(workspace: Path) -> Path:
    """The shims, on the shared storage every node reads."""
    path = workspace / "shims"
    shutil.copytree(SHIMS, path)
    return path


@pytest.fixture(scope="module")
def model_dir(workspace: Path) -> Path:
    """A model directory only this module's ranks name."""
    path = tiny_model(workspace / "model")
    return path


def shim_env(runtime: str, shims: Path, image_root: Path, marker: str) -> dict[str, str]:
    """The job's environment: the shims first on PATH, a host-only marker --cleanenv must drop."""
    env = serve_env(SLURM_SGLANG_CONTAINER_CLI=runtime, SHIM_IMAGE_ROOT=str(image_root),
                    SHIM_STATE=str(shims.parent / "enroot-state"), SHIM_HOST_ONLY=marker)
    env["PATH"] = f"{shims}:{env['PATH']}"
    return env


def shim_profile(sandbox: SandboxInfo, workspace: Path, runtime: str, image: Path,
                 run_args: list[str]) -> Path:
    """The sandbox's profile with another runtime and image, as an admin writes it."""
    data = {"extends": str(sandbox.profile_path), "name": f"shim-{runtime}",
            "container": {"runtime": runtime, "image": str(image), "mounts": [],
                          "run_args": run_args, "gpus": "none"}}
    path = workspace / f"shim-{runtime}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render(sandbox: SandboxInfo, workspace: Path, runtime: str, run_args: list[str]) -> Path:
    """The script for RUNTIME, with an image file of the form the runtime takes."""
    image = workspace / ("sglang.sif" if runtime == "apptainer" else "sglang.sqsh")
    image.touch()
    script = workspace / f"run-{runtime}-{uuid.uuid4().hex[:6]}.sbatch"
    profile = load_profile(str(shim_profile(sandbox, workspace, runtime, image, run_args)))
    write_script(render_script(profile), script)
    return script


def enroot_records(shims: Path, job_id: str) -> list[str]:
    """The named-container records of a job the srun shim left, on any node."""
    state = shims.parent / "enroot-state"
    return sorted(str(path.relative_to(state)) for path in state.glob(f"*/pyxis_{job_id}_*"))


@pytest.mark.parametrize("runtime", ["apptainer", "enroot"])
def test_runtime_serves_through_its_shim(
        sandbox: SandboxInfo, workspace: Path, image_root: Path, shims: Path, model_dir: Path,
        tmp_path: Path, runtime: str) -> None:
    script = render(sandbox, workspace, runtime, [])
    marker = uuid.uuid4().hex[:8]
    name = f"{workspace.name}-{runtime}"
    try:
        with salloc_serve(sandbox, script, 2, ["--model-path", str(model_dir), "--tp", "2"],
                          tmp_path, salloc_args=["--job-name", name],
                          env=shim_env(runtime, shims, image_root, marker)) as run:
            chat = OpenAI(base_url=f"{run.url}/v1", api_key="none").chat.completions.create(
                model=str(model_dir), messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4)
            assert chat.choices[0].message.content
            ranks = rank_environments(model_dir)
            assert len(ranks) == 2
            for environ in ranks.values():
                assert environ["PATH"].startswith(f"{image_root}/bin:")
                assert environ["NCCL_SOCKET_IFNAME"].startswith("=")
                # apptainer: --cleanenv drops the host's variables; pyxis passes them.
                assert (environ.get("SHIM_HOST_ONLY") == marker) == (runtime == "enroot")
            if runtime == "enroot":
                # One named container a node, as pyxis keeps it after the step.
                assert len(enroot_records(shims, run.job_id)) == 2
            job_id = run.job_id
    finally:
        subprocess.run(["scancel", "--name", name], check=False)
    assert wait_until_gone(job_id, model_dir) == []
    # Not asserted: the named containers' removal. This run ends by scancel, after which SLURM
    # starts no step, so the driver's last sweep (enroot remove on each node) cannot run; on a
    # real cluster pyxis's container_scope=job or an epilog removes them (docs/admin-guide.md).


@pytest.mark.parametrize(("runtime", "run_args", "refusal"), [
    # A docker option the profile does not know to refuse; apptainer exec has no --tmpfs.
    ("apptainer", ["--tmpfs", "/scratch"], "unknown flag: --tmpfs"),
    # A --container-* option pyxis does not have: the profile lets the prefix through.
    ("enroot", ["--container-bogus"], "unrecognized option '--container-bogus'"),
])
def test_runtime_fails_where_the_real_tool_refuses(
        sandbox: SandboxInfo, workspace: Path, image_root: Path, shims: Path, model_dir: Path,
        tmp_path: Path, runtime: str, run_args: list[str], refusal: str) -> None:
    script = render(sandbox, workspace, runtime, run_args)
    name = f"{workspace.name}-{runtime}-refused"
    with pytest.raises(AssertionError) as failed:
        try:
            with salloc_serve(sandbox, script, 2, ["--model-path", str(model_dir), "--tp", "2"],
                              tmp_path, salloc_args=["--job-name", name], timeout=120,
                              env=shim_env(runtime, shims, image_root, "x")):
                pass
        finally:
            subprocess.run(["scancel", "--name", name], check=False)
    logs = str(failed.value)
    granted = GRANTED.search(logs)
    assert granted, logs
    for path in (sandbox.shared_dir / "logs" / granted.group(1)).rglob("*"):
        if path.is_file():
            logs += path.read_text(errors="replace")
    assert refusal in logs
