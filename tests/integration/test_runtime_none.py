"""The `none` runtime on the sandbox: sglang (the stand-in) from a venv on shared storage.

An admin's profile `extends:` the sandbox's, sets `runtime: none` and names the activation
line; the rendered script runs under salloc on two nodes, serves a chat completion, and
leaves no process behind. A second run proves an admin's override partial reaches the ranks.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from openai import OpenAI
from serving import (
    job_containers,
    salloc_serve,
    serve_env,
    shared_workspace,
    standin_venv_at,
    tiny_model,
)

from slurm_sglang.profile import load_profile
from slurm_sglang.render import builtin_template_dir, render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
# Nothing in the stand-in reports its environment: the ranks' /proc entries are read instead.
LAUNCH = "sglang.launch_server"
GONE_WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def workspace(sandbox: SandboxInfo) -> Iterator[Path]:
    """A directory of this module's own on the shared storage, removed afterwards."""
    with shared_workspace(sandbox, "runtime-none") as path:
        yield path


@pytest.fixture(scope="module")
def standin_venv(workspace: Path) -> Path:
    """A venv made with the system python3, the stand-in `sglang` package copied into it."""
    return standin_venv_at(workspace / "venv")


@pytest.fixture(scope="module")
def model_dir(workspace: Path) -> Path:
    """A model directory only this module's ranks name on their command lines."""
    path = tiny_model(workspace / "tiny model")
    return path


def none_profile(sandbox: SandboxInfo, workspace: Path, venv: Path, name: str,
                 template_dir: Path | None = None) -> Path:
    """A profile file as an admin writes it: the sandbox's, with sglang from a venv."""
    data: dict[str, object] = {
        "extends": str(sandbox.profile_path),
        "name": name,
        "container": {"runtime": "none", "activate": [f"source {venv}/bin/activate"],
                      "python": "python3"},
    }
    if template_dir is not None:
        data["template_dir"] = str(template_dir)
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rank_environments(model_dir: Path) -> dict[int, dict[str, str]]:
    """pid -> environment of every stand-in rank serving this model (all nodes share /proc)."""
    found: dict[int, dict[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if LAUNCH.encode() not in argv or str(model_dir).encode() not in argv:
                continue
            raw = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
        found[int(entry.name)] = {name: value for name, _, value in pairs}
    return found


def job_process_lines(job_id: str, model_dir: Path) -> list[str]:
    """`ps` lines of processes of this job (by SLURM_JOB_ID) or serving this model."""
    listed = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    marker = f"SLURM_JOB_ID={job_id}".encode()
    left = []
    for line in listed:
        pid = line.split(maxsplit=1)[0]
        if pid == str(os.getpid()):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in environ or str(model_dir) in line:
            left.append(line)
    return left


@contextmanager
def cancelled_on_exit(name: str) -> Iterator[list[str]]:
    """salloc arguments naming the job, and scancel by that name on the way out.

    salloc_serve cancels only a job it saw granted; one still queued when it gives up would
    otherwise be granted later and run on with nobody to stop it.
    """
    try:
        yield ["--job-name", name]
    finally:
        subprocess.run(["scancel", "--name", name], check=False)


def wait_until_gone(job_id: str, model_dir: Path) -> list[str]:
    """The job's processes still alive after a bounded wait (killed ones take a moment to reap)."""
    deadline = time.monotonic() + GONE_WAIT_SECONDS
    left = job_process_lines(job_id, model_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = job_process_lines(job_id, model_dir)
    return left


def test_none_runtime_serves_from_a_venv_and_leaves_nothing(
        sandbox: SandboxInfo, workspace: Path, standin_venv: Path, model_dir: Path,
        tmp_path: Path) -> None:
    profile = load_profile(str(none_profile(sandbox, workspace, standin_venv, "site-none")))
    assert (profile.container.runtime, profile.fabric.kind) == ("none", "tcp")
    script = workspace / "run-none.sbatch"
    write_script(render_script(profile), script)
    args = ["--model-path", str(model_dir), "--tp", "2"]
    env = serve_env(SLURM_SGLANG_CONTAINER_CLI="none")
    with cancelled_on_exit(f"{workspace.name}-none") as naming, salloc_serve(
            sandbox, script, 2, args, tmp_path, salloc_args=naming, env=env) as run:
        chat = OpenAI(base_url=f"{run.url}/v1", api_key="none").chat.completions.create(
            model=str(model_dir), messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens == 8
        info = run.get_json("/get_server_info")
        hostnames = {rank["hostname"] for rank in info["ranks"]}
        assert len(hostnames) == 2 and hostnames <= set(sandbox.nodes)
        ranks = rank_environments(model_dir)
        assert len(ranks) == 2
        for environ in ranks.values():
            # The activation line ran: the venv's python, not a container's, serves.
            assert environ["VIRTUAL_ENV"] == str(standin_venv)
            assert environ["PATH"].startswith(f"{standin_venv}/bin:")
            assert environ["SLURM_JOB_ID"] == run.job_id
        assert job_containers(sandbox, run.job_id) == {node: [] for node in sandbox.nodes}
        job_id = run.job_id
    assert wait_until_gone(job_id, model_dir) == []
    assert rank_environments(model_dir) == {}


def test_override_partial_reaches_the_ranks(sandbox: SandboxInfo, workspace: Path,
                                            standin_venv: Path, model_dir: Path,
                                            tmp_path: Path) -> None:
    templates = workspace / "site-templates"
    (templates / "partials").mkdir(parents=True)
    builtin = (builtin_template_dir() / "partials" / "fabric_tcp.sh.j2").read_text()
    anchor = "  export NCCL_IB_DISABLE=1\n"
    assert builtin.count(anchor) == 1
    mark = f"site-{uuid.uuid4().hex[:8]}"
    (templates / "partials" / "fabric_tcp.sh.j2").write_text(
        builtin.replace(anchor, f"{anchor}  export SITE_FABRIC_MARK={mark}\n"))
    profile_path = none_profile(sandbox, workspace, standin_venv, "site-override", templates)
    script_text = render_script(load_profile(str(profile_path)))
    assert f"  export SITE_FABRIC_MARK={mark}\n" in script_text
    script = workspace / "run-override.sbatch"
    write_script(script_text, script)
    args = ["--model-path", str(model_dir), "--tp", "2"]
    env = serve_env(SLURM_SGLANG_CONTAINER_CLI="none")
    with cancelled_on_exit(f"{workspace.name}-override") as naming, salloc_serve(
            sandbox, script, 2, args, tmp_path, salloc_args=naming, env=env) as run:
        assert [model["id"] for model in run.get_json("/v1/models")["data"]] == [str(model_dir)]
        ranks = rank_environments(model_dir)
        assert len(ranks) == 2
        assert [environ.get("SITE_FABRIC_MARK") for environ in ranks.values()] == [mark, mark]
        job_id = run.job_id
    assert wait_until_gone(job_id, model_dir) == []
