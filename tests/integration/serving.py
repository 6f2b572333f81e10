"""Start run.sbatch on the sandbox (under salloc or sbatch), wait for its ready line, stop it.

Shared by the data-plane integration tests; everything here drives the real SLURM commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import containers_on

# The ready line; without an API key it ends with "(no API key: ...)".
READY = re.compile(r"^ready: (http://\S+)(?: \([^)\n]*\))?$", re.M)
GRANTED = re.compile(r"Granted job allocation (\d+)")
# salloc names the job as soon as it is queued; a job given up on while queued must still go.
QUEUED_OR_GRANTED = re.compile(r"(?:Pending|Granted) job allocation (\d+)")
STANDIN = Path(__file__).resolve().parents[2] / "slurm_sglang" / "sandbox" / "standin" / "sglang"
# The nodes share this machine's filesystem, so the system's python3 exists on every node.
HOST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def profile_script(sandbox: SandboxInfo, name: str, **sections: dict[str, Any]) -> Path:
    """run.sbatch (scripts/run-NAME.sbatch on the shared dir) for the sandbox's profile with
    each given section's keys replaced, the profile written beside it."""
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    for section, values in sections.items():
        profile[section] = {**profile.get(section, {}), **values}
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    profile_path = scripts / f"{name}-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    path = scripts / f"run-{name}.sbatch"
    write_script(render_script(load_profile(str(profile_path))), path)
    return path


@contextmanager
def shared_workspace(sandbox: SandboxInfo, prefix: str) -> Iterator[Path]:
    """A directory of the caller's own on the shared storage, removed afterwards."""
    path = sandbox.shared_dir / "tests" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tiny_model(path: Path) -> Path:
    """A model directory the stand-in serves (its config names a Llama), made where asked."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return path


def standin_venv_at(venv: Path) -> Path:
    """A venv made with the system python3, the stand-in `sglang` package copied into it."""
    subprocess.run([HOST_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(venv / "bin" / "python"), "-c", where],
                          capture_output=True, text=True, check=True).stdout.strip()
    shutil.copytree(STANDIN, Path(site) / "sglang", ignore=shutil.ignore_patterns("__pycache__"))
    return venv


@dataclass
class Serving:
    """A running data plane: its job, endpoint and where its output goes."""

    job_id: str
    url: str
    output: Path
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    nodes: list[str] = field(default_factory=list)

    def get_json(self, path: str) -> Any:
        """GET a JSON document from the head; the router's /workers with the job's key."""
        request = urllib.request.Request(f"{self.url}{path}")
        key_file = self.log_dir / "router.key"
        if path.startswith("/workers") and key_file.exists():
            request.add_header("Authorization", f"Bearer {key_file.read_text().strip()}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def events(self) -> list[str]:
        """The job's recorded events, one line each."""
        return (self.log_dir / "events.log").read_text().splitlines()


def _wait_for(pattern: re.Pattern[str], path: Path, timeout: float,
              process: subprocess.Popen[bytes] | None = None) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = pattern.search(text)
        if match:
            return match
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode} before {pattern.pattern}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern.pattern} within {timeout} s:\n{path.read_text()}")


def serve_env(load_seconds: float = 0.5, **extra: str) -> dict[str, str]:
    """The environment for a run on the sandbox: podman, fake GPUs passed as an env variable."""
    env = dict(os.environ)
    env.update(SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env",
               SGLANG_STANDIN_LOAD_SECONDS=str(load_seconds))
    env.update(extra)
    return env


@contextmanager
def salloc_serve(sandbox: SandboxInfo, script: Path, nodes: int, args: Sequence[str],
                 tmp_path: Path, salloc_args: Sequence[str] = (), timeout: float = 90,
                 env: dict[str, str] | None = None,
                 grant_timeout: float = 120) -> Iterator[Serving]:
    """`salloc -N nodes bash script args`, from the shared directory; scancel on the way out."""
    output = tmp_path / f"salloc-{time.monotonic_ns()}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["salloc", "-N", str(nodes), "-p", "sandbox", *salloc_args, "bash", str(script),
             *args],
            cwd=sandbox.shared_dir, stdout=sink, stderr=subprocess.STDOUT,
            env=env or serve_env(), start_new_session=True)
    try:
        job_id = _wait_for(GRANTED, output, grant_timeout, process).group(1)
        url = _wait_for(READY, output, timeout, process).group(1)
        yield Serving(job_id, url, output, sandbox.shared_dir / "logs" / job_id, process)
    finally:
        stop(process, output)


@contextmanager
def sbatch_serve(sandbox: SandboxInfo, script: Path, nodes: int, args: Sequence[str],
                 timeout: float = 90, env: dict[str, str] | None = None) -> Iterator[Serving]:
    """`sbatch -N nodes script args`; the ready line is read from the job's output file."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-N", str(nodes), "-p", "sandbox",
         f"--output={sandbox.shared_dir}/slurm-%j.out", str(script), *args],
        cwd=sandbox.shared_dir, capture_output=True, text=True, check=True,
        env=env or serve_env())
    job_id = submitted.stdout.strip().split(";")[0]
    output = sandbox.shared_dir / f"slurm-{job_id}.out"
    try:
        url = _wait_for(READY, output, timeout).group(1)
        yield Serving(job_id, url, output, sandbox.shared_dir / "logs" / job_id)
    finally:
        subprocess.run(["scancel", job_id], check=False)
        wait_job_gone(job_id)


def stop(process: subprocess.Popen[bytes], output: Path) -> None:
    """scancel the allocation the salloc holds and wait for salloc to end."""
    text = output.read_text(errors="replace") if output.exists() else ""
    match = QUEUED_OR_GRANTED.search(text)
    if match:
        subprocess.run(["scancel", match.group(1)], check=False)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    if match:
        wait_job_gone(match.group(1))


def wait_job_gone(job_id: str, timeout: float = 60) -> None:
    """Wait until squeue no longer lists the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if not listed.stdout.strip():
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still listed by squeue after {timeout} s")


def job_containers(sandbox: SandboxInfo, job_id: str) -> dict[str, list[str]]:
    """Every container labelled with this job id, per node (empty lists when none remain)."""
    return {
        node: [c["Names"][0] for c in containers_on(node, f"slurm-sglang.job={job_id}")]
        for node in sandbox.nodes
    }


def job_processes(job_id: str) -> list[str]:
    """Processes on this machine whose command line names this job's containers."""
    result = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    marker = f"slurm-sglang-{job_id}-"
    return [line for line in result.stdout.splitlines() if marker in line]
