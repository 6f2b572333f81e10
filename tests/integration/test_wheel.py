"""The package as users install it: sdist and wheel built, the wheel in a fresh venv, used there.

`python -m build` makes the sdist and then the wheel from that sdist (not from the checkout), so
the wheel tested is the one a `pip install slurm-sglang` of the sdist would build. Everything
lives under /var/tmp, outside the checkout, because the sandbox's nodes run the venv's python
for `submit` and each node has its own /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
# Shared with the sandbox's nodes, unlike /tmp.
WORK_ROOT = Path("/var/tmp")
NAME = "slurm_sglang"


@dataclass(frozen=True)
class Installed:
    """The built artefacts and the venv that holds the wheel."""

    root: Path
    sdist: Path
    wheel: Path
    venv: Path
    build_seconds: float
    install_seconds: float

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ without anything that could lead back to the checkout or the dev venv."""
        env = {key: value for key, value in os.environ.items()
               if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        # The render cache and job records of this venv alone.
        env["XDG_CACHE_HOME"] = str(self.root / "cache")
        env["SLURM_SGLANG_STATE_DIR"] = str(self.root / "state")
        env.pop("SLURM_SGLANG_TEMPLATE_DIR", None)
        return {**env, **extra}

    def cli(self, *args: str, timeout: float = 180, **extra: str
            ) -> subprocess.CompletedProcess[str]:
        """The installed `slurm-sglang` entry point, run from a directory outside the checkout."""
        return subprocess.run([str(self.venv / "bin" / "slurm-sglang"), *args],
                              capture_output=True, text=True, cwd=self.root,
                              env=self.env(**extra), timeout=timeout, check=False)


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """One sdist and wheel per module, the wheel installed into a fresh venv."""
    root = Path(tempfile.mkdtemp(prefix="slurm-sglang-wheel-", dir=WORK_ROOT))
    try:
        dist = root / "dist"
        start = time.monotonic()
        _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], cwd=root)
        built = time.monotonic()
        venv = root / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
        (wheel,) = dist.glob("*.whl")
        (sdist,) = dist.glob("*.tar.gz")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
              "--disable-pip-version-check", str(wheel)], cwd=root)
        yield Installed(root=root, sdist=sdist, wheel=wheel, venv=venv,
                        build_seconds=built - start, install_seconds=time.monotonic() - built)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _repo_files(folder: str, pattern: str) -> dict[str, bytes]:
    base = REPO / folder
    return {path.relative_to(base).as_posix(): path.read_bytes()
            for path in sorted(base.glob(pattern))}


def test_sdist_and_wheel_carry_templates_and_profiles(installed: Installed) -> None:
    templates = _repo_files("templates", "**/*.j2")
    profiles = _repo_files(f"{NAME}/profiles", "*.yaml")
    assert "run.sbatch.j2" in templates and "default.yaml" in profiles

    with tarfile.open(installed.sdist) as sdist:
        top = installed.sdist.name.removesuffix(".tar.gz")
        in_sdist = set(sdist.getnames())
    assert {f"{top}/templates/{name}" for name in templates} <= in_sdist

    # The wheel was built from the sdist above, so this also shows the sdist is complete.
    with zipfile.ZipFile(installed.wheel) as wheel:
        for name, text in templates.items():
            assert wheel.read(f"{NAME}/templates/{name}") == text, name
        for name, text in profiles.items():
            assert wheel.read(f"{NAME}/profiles/{name}") == text, name
        in_wheel = [info.filename for info in wheel.infolist()]
    # The package only: no tests, docs or templates/ outside it.
    assert all(name.startswith((f"{NAME}/", f"{NAME}-")) for name in in_wheel), in_wheel
    # Bytecode left in the checkout by earlier runs is no package data.
    assert not [name for name in [*in_wheel, *in_sdist] if "__pycache__" in name], in_wheel
    assert f"{NAME}/sandbox/standin/sglang/launch_server.py" in in_wheel


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    done = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c",
         "import slurm_sglang.render as r; print(r.__file__); print(r.builtin_template_dir())"],
        capture_output=True, text=True, cwd=installed.root, env=installed.env(), check=True)
    module, templates = done.stdout.splitlines()
    site = installed.venv / "lib"
    assert Path(module).is_relative_to(site) and Path(templates).is_relative_to(site)
    assert (Path(templates) / "run.sbatch.j2").is_file()


def test_render_equals_the_committed_script(installed: Installed) -> None:
    out = installed.root / "rendered" / "run.sbatch"
    done = installed.cli("render", "-o", str(out))
    assert done.returncode == 0, done.stderr
    committed = (REPO / "sbatch" / "run.sbatch").read_bytes()
    assert out.read_bytes() == committed
    assert os.access(out, os.X_OK)
    # The README's spelling, to stdout.
    module = subprocess.run([str(installed.venv / "bin" / "python"), "-m", NAME, "render"],
                            capture_output=True, cwd=installed.root, env=installed.env(),
                            check=False)
    assert (module.returncode, module.stdout) == (0, committed), module.stderr


def test_check_and_profiles(installed: Installed) -> None:
    done = installed.cli("check", "--json", "--", "--model-path", "Qwen/Qwen2.5-72B-Instruct",
                         "--tp", "16")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["nodes"] == 2 and report["parallelism"]["tp"] == 16

    typo = installed.cli("check", "--", "--model-path", "m", "--tp-szie", "2")
    assert typo.returncode == 2 and "did you mean --tp-size?" in typo.stdout

    listing = installed.cli("profiles", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    names = {row["name"] for row in json.loads(listing.stdout)}
    assert {path.stem for path in (REPO / NAME / "profiles").glob("*.yaml")} <= names

    shown = installed.cli("profiles", "show", "aws-p5-efa")
    assert shown.returncode == 0 and "efa" in shown.stdout, shown.stderr


def test_submit_from_the_wheel_then_cancel(installed: Installed, sandbox: SandboxInfo) -> None:
    model = sandbox.shared_dir / "models" / "wheel-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    job_id = ""
    try:
        done = installed.cli("submit", "--cluster", str(sandbox.profile_path), "--nodes", "2",
                             "--time", "00:10:00", "--json", "--", "--model-path", str(model),
                             "--tp", "2", "--served-model-name", "m",
                             SGLANG_STANDIN_LOAD_SECONDS="1")
        assert done.returncode == 0, done.stdout + done.stderr
        submitted = json.loads(done.stdout)
        job_id = submitted["job_id"]
        assert submitted["status"] == "ready"
        endpoint = installed.cli("endpoint", job_id)
        assert (endpoint.returncode, endpoint.stdout.strip()) == (0, submitted["url"])
    finally:
        # The latest job of this venv's private records when submit printed no id.
        cancelled = installed.cli("cancel", *([job_id] if job_id else []))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert job_id not in queued
