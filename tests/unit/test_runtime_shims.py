"""The sandbox's apptainer, pyxis-like srun and enroot shims refuse what the real tools refuse.

The shims (tests/integration/shims) stand in for tools the sandbox lacks in
test_runtime_shims_sandbox; they are only worth it if they fail where a real cluster would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SHIMS = Path(__file__).resolve().parents[1] / "integration" / "shims"


def _run(tmp_path: Path, tool: str, *argv: str,
         **env: str) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "SHIM_IMAGE_ROOT": str(root), "SHIM_STATE": str(tmp_path / "st"),
               **env}
    return subprocess.run([str(SHIMS / tool), *argv], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, check=False)


def test_the_shims_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    subprocess.run(["shellcheck", *(str(SHIMS / name) for name in ("apptainer", "enroot", "srun"))],
                   check=True)


@pytest.mark.parametrize(("argv", "message"), [
    (["exec", "--ulimit", "memlock=-1", "i.sif", "true"], "unknown flag: --ulimit"),
    (["exec", "--tmpfs", "/t", "i.sif", "true"], "unknown flag: --tmpfs"),
    (["exec", "--nv", "s.tar.gz", "true"], "not a SIF or a sandbox"),
    (["exec", "--nv", "lmsysorg/sglang:v1", "true"], "a registry image needs docker://"),
    (["run", "i.sif"], "only 'exec' is emulated"),
])
def test_apptainer_shim_refuses_what_apptainer_exec_refuses(
        tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "i.sif").touch()
    (tmp_path / "s.tar.gz").touch()
    out = _run(tmp_path, "apptainer", *argv)
    assert out.returncode == 255 and message in out.stderr


def test_apptainer_shim_cleanenv_keeps_only_apptainerenv(tmp_path: Path) -> None:
    (tmp_path / "i.sif").touch()
    out = _run(tmp_path, "apptainer", "exec", "--nv", "--cleanenv", "--bind", "/a:/a",
               str(tmp_path / "i.sif"), "env", HOST_ONLY="1", APPTAINERENV_FOO="bar",
               APPTAINERENV_LD_LIBRARY_PATH="/x:$LD_LIBRARY_PATH")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "FOO=bar" in lines and "LD_LIBRARY_PATH=/x:/.singularity.d/libs" in lines
    assert not any(line.startswith(("HOST_ONLY=", "APPTAINERENV_")) for line in lines)


@pytest.mark.parametrize(("argv", "message"), [
    (["--container-foo=1", "true"], "unrecognized option '--container-foo=1'"),
    (["--container-image=nvcr.io/nvidia/sglang:1", "true"], "must be written REGISTRY#IMAGE"),
    (["--container-image=/nowhere/s.sqsh", "true"], "not a squashfs file"),
    (["--container-image=a#b", "--container-mounts=/nowhere:/n", "true"],
     "mount source does not exist"),
    (["--container-remap-root=1", "--container-image=a#b", "true"], "takes no value"),
])
def test_srun_shim_refuses_what_pyxis_refuses(tmp_path: Path, argv: list[str],
                                              message: str) -> None:
    out = _run(tmp_path, "srun", *argv)
    assert out.returncode != 0 and message in out.stderr


def test_srun_shim_help_lists_the_pyxis_options(tmp_path: Path) -> None:
    if shutil.which("srun") is None:
        pytest.skip("no srun on this machine")
    # The shim appends pyxis's options to the real srun's help, which needs a SLURM
    # configuration (the sandbox's, while it is up).
    if subprocess.run(["srun", "--help"], capture_output=True, check=False).returncode != 0:
        pytest.skip("srun --help fails here: no SLURM configuration (is the sandbox up?)")
    out = _run(tmp_path, "srun", "--help")
    assert "--container-image" in out.stdout


def test_enroot_shim_lists_and_removes_named_containers_only(tmp_path: Path) -> None:
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "st" / node).mkdir(parents=True)
    (tmp_path / "st" / node / "pyxis_9_slurm-sglang-9").touch()
    assert _run(tmp_path, "enroot", "list").stdout.split() == ["pyxis_9_slurm-sglang-9"]
    assert _run(tmp_path, "enroot", "remove", "-f", "--", "pyxis_9_slurm-sglang-9").returncode == 0
    assert _run(tmp_path, "enroot", "list").stdout.split() == []
    assert "Invalid argument: --bogus" in _run(tmp_path, "enroot", "remove", "--bogus", "x").stderr
    assert _run(tmp_path, "enroot", "import", "x").returncode == 1
