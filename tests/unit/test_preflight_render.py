"""The rendered script's NCCL pre-flight hook: the check it carries, its flags, its values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from slurm_sglang.cli import main as cli_main
from slurm_sglang.preflight_launch import ONLY_FLAG, preflight_command
from slurm_sglang.profile import ClusterProfile, PreflightSettings
from slurm_sglang.render import PACKAGE_DIR, SUPPORT_DIR_NAME, render_script, write_script


def _script(tmp_path: Path, profile: ClusterProfile) -> Path:
    path = tmp_path / "run.sbatch"
    write_script(render_script(profile), path)
    return path


def test_the_check_ships_beside_the_script_byte_for_byte(tmp_path: Path) -> None:
    """render -o DIR/run.sbatch writes DIR/slurm-sglang/preflight_nccl.py; no here-document."""
    script = tmp_path / "run.sbatch"
    write_script(render_script(ClusterProfile()), script)
    shipped = tmp_path / SUPPORT_DIR_NAME / "preflight_nccl.py"
    assert shipped.read_bytes() == (PACKAGE_DIR / "preflight_nccl.py").read_bytes()
    assert "<<'" not in script.read_text()


@pytest.mark.parametrize(
    ("settings", "enabled", "floor"),
    [
        (PreflightSettings(), "0", "0"),
        (PreflightSettings(nccl=True, nccl_min_busbw_gbps=40.5), "1", "40.5"),
        (PreflightSettings(enabled=False, nccl=True), "0", "0"),
    ],
)
def test_profile_values_reach_the_script(settings: PreflightSettings, enabled: str,
                                         floor: str) -> None:
    """preflight.nccl (off when pre-flight is disabled) and the bandwidth floor."""
    text = render_script(ClusterProfile(preflight=settings))
    assert f"declare -rx PROFILE_PREFLIGHT_NCCL={enabled}\n" in text
    assert f"declare -rx PREFLIGHT_NCCL_MIN_BUSBW_GBPS={floor}\n" in text


def test_help_lists_the_flags(tmp_path: Path) -> None:
    """--help of the rendered script names both flags."""
    script = _script(tmp_path, ClusterProfile())
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "--preflight-nccl " in shown and "--preflight-nccl-only" in shown


def test_check_alone_refuses_sglang_arguments(tmp_path: Path) -> None:
    """--preflight-nccl-only serves nothing: sglang arguments are a usage error (exit 2)."""
    script = _script(tmp_path, ClusterProfile())
    done = subprocess.run(["bash", str(script), ONLY_FLAG, "--model-path", "m"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "remove the sglang arguments: --model-path m" in done.stderr


def test_check_alone_outside_an_allocation_says_so(tmp_path: Path) -> None:
    """Outside SLURM, the check stops at the script's own allocation test."""
    script = _script(tmp_path, ClusterProfile())
    done = subprocess.run(preflight_command(script, []), capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "not inside a SLURM allocation" in done.stderr


def test_cli_preflight_needs_a_check_named(capsys: pytest.CaptureFixture[str]) -> None:
    """`slurm-sglang preflight` without --nccl is a usage error."""
    assert cli_main(["preflight"]) == 2
    assert "--nccl" in capsys.readouterr().err
