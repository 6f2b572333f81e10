"""Malformed `bash run.sbatch ...` inside a real allocation: one line, exit 2, nothing started.

One allocation (`salloc --no-shell`) serves every case: the script sees SLURM_JOB_ID and the
node list as it would under salloc. After each case, no job step ran, squeue lists the same
jobs, no log directory appeared and no argument text was executed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
CANARY = "{canary}"


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo) -> Path:
    """run.sbatch rendered with the sandbox's own profile."""
    path = sandbox.shared_dir / "scripts" / "bad-input.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


@pytest.fixture(scope="module")
def allocation(sandbox: SandboxInfo) -> Iterator[dict[str, str]]:
    """A two-node allocation without a shell: the environment a script sees inside it."""
    granted = subprocess.run(["salloc", "--no-shell", "-N", "2", "-p", "sandbox", "-J",
                              "bad-input"], capture_output=True, text=True, timeout=300)
    match = re.search(r"Granted job allocation (\d+)", granted.stderr)
    assert match, granted.stderr
    job_id = match.group(1)
    try:
        nodes = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True,
                               text=True, check=True).stdout.strip()
        env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM")}
        env.update(SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST=nodes, SLURM_NNODES="2",
                   SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env")
        yield env
    finally:
        subprocess.run(["scancel", job_id], check=False)


CASES: dict[str, tuple[list[str], str]] = {
    "tp-not-dividing-nodes": (["--model-path", "m", "--tp", "3"],
                              "is not divisible by the 2 nodes"),
    "ep-not-dividing-tp": (["--model-path", "m", "--tp", "2", "--ep", "3"], "must divide --tp"),
    "more-gpus-than-nodes": (["--model-path", "m", "--tp", "64"], "GPUs"),
    "image-file-missing": (["--model-path", "m", "--tp", "2", "--image", "/nonexistent/i.tar.gz"],
                           "does not exist or is not readable"),
    "image-not-a-tarball": (["--model-path", "m", "--tp", "2", "--image", "{tmp}/fake.tar"],
                            "is not an image tarball"),
    "image-sif-for-podman": (["--model-path", "m", "--tp", "2", "--image", "{tmp}/s.sif"],
                             "which podman cannot load"),
    "tp-command-substitution": (["--model-path", "m", "--tp", f"$(touch {CANARY})"],
                                "is not a whole number"),
    "model-path-newline": (["--model-path", f"m\n$(touch {CANARY})", "--tp", "2"],
                           "contains a newline"),
    "api-key-in-argv": (["--model-path", "m", "--tp", "2", "--api-key", "sk-plain-secret"],
                        "--api-key-file FILE"),
    # What check refuses, the plan refuses too: sglang would stop on it with its usage.
    "misspelt-script-flag": (["--quite", "--model-path", "m", "--tp", "2"],
                             "did you mean run.sbatch's --quiet?"),
    "unknown-sglang-flag": (["--model-path", "m", "--tp-szie", "2"],
                            "--tp-szie: unknown sglang flag; did you mean --tp-size?"),
    # After `--`, --port is sglang's; the rank's own --port would override it without a word.
    "sglang-port": (["--model-path", "m", "--tp", "2", "--", "--port", "30001"],
                    "--port is set by the launcher"),
}


def _jobs() -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True)
    return sorted(line for line in listed.stdout.splitlines() if "bad-input" in line)


def _steps(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-s", "-j", job_id], capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.parametrize("case", list(CASES))
def test_script_inside_allocation_refuses(sandbox: SandboxInfo, script: Path,
                                          allocation: dict[str, str], tmp_path: Path,
                                          case: str) -> None:
    args, expected = CASES[case]
    canary = tmp_path / "pwned"
    (tmp_path / "fake.tar").write_text("not an image")
    filled = [arg.replace(CANARY, str(canary)).replace("{tmp}", str(tmp_path)) for arg in args]
    job_id = allocation["SLURM_JOB_ID"]
    before = _jobs()
    result = subprocess.run(["bash", str(script), *filled], capture_output=True, text=True,
                            env=allocation, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "sk-plain-secret" not in result.stderr
    assert not canary.exists()
    assert _jobs() == before and _steps(job_id) == ""
    assert not (sandbox.shared_dir / "logs" / job_id).exists()


SUBMIT_CASES: dict[str, tuple[list[str], str]] = {
    "tp-not-a-number": (["--", "--model-path", "m", "--tp", f"$(touch {CANARY})"],
                        "is not a whole number"),
    "tp-not-dividing-nodes": (["--nodes", "2", "--", "--model-path", "m", "--tp", "3"],
                              "is not divisible by the 2 nodes"),
    "port-not-a-number": (["--port", "abc", "--", "--model-path", "m"],
                          "--port: 'abc' is not a whole number"),
    "env-bad-name": (["--env", "BAD NAME=x", "--", "--model-path", "m"], "is not a variable name"),
    "time-not-slurm": (["--time", "soon", "--", "--model-path", "m"], "is not a SLURM time"),
}


@pytest.mark.parametrize("case", list(SUBMIT_CASES))
def test_submit_refuses_without_submitting(sandbox: SandboxInfo, tmp_path: Path,
                                           case: str) -> None:
    args, expected = SUBMIT_CASES[case]
    canary = tmp_path / "pwned"
    filled = [arg.replace(CANARY, str(canary)) for arg in args]
    name = f"bad-input-submit-{case}"
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--cluster", str(sandbox.profile_path),
         "--no-wait", "--name", name, *filled], capture_output=True, text=True, timeout=60,
        cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not canary.exists()
    listed = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True)
    assert listed.stdout.strip() == ""
