"""The CLI's ends: one error family with an exit code per kind, one line each, and a reader
that leaves early (`status | head -1`) ending it quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang import api, cli
from slurm_sglang.errors import (
    EXIT_CODES,
    ClusterError,
    JobError,
    SlurmSglangError,
    TransportError,
    UserInputError,
)
from slurm_sglang.jobs import JobRecord, save_record
from slurm_sglang.launch_plan import PlanError, SpecError
from slurm_sglang.transport import CommandError, CommandResult


def test_every_error_is_one_family_with_one_code_a_kind() -> None:
    assert EXIT_CODES == {"user input": 2, "cluster": 3, "transport": 4, "job": 1}
    for kind in (UserInputError, ClusterError, TransportError, JobError, SpecError, PlanError,
                 CommandError):
        assert issubclass(kind, SlurmSglangError)
    assert issubclass(SpecError, UserInputError) and issubclass(PlanError, UserInputError)


@pytest.mark.parametrize(("error", "code", "line"), [
    (UserInputError("--tp: 'x'\nsecond"), 2, "slurm-sglang: error: --tp: 'x'; second\n"),
    (ClusterError("sbatch refused"), 3, "slurm-sglang: sbatch refused\n"),
    (CommandError(CommandResult(("squeue",), 1, "", "boom\n"), "login"), 4,
     "slurm-sglang: squeue failed on login (exit 1): boom\n"),
    (JobError("job 47 failed"), 1, "slurm-sglang: job 47 failed\n"),
], ids=["user", "cluster", "transport", "job"])
def test_each_kind_ends_the_cli_with_its_code_and_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        error: SlurmSglangError, code: int, line: str) -> None:
    def raise_it() -> None:
        raise error

    monkeypatch.setattr(api, "list_jobs", raise_it)
    assert cli.main(["list"]) == code
    assert capsys.readouterr().err == line


def _into_a_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout a pipe nobody reads any more (`| head -0`, at once)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "slurm_sglang", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60,
                              check=False)
    finally:
        os.close(write_end)


def test_a_reader_that_left_ends_the_cli_quietly(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_SGLANG_STATE_DIR", str(tmp_path / "state"))
    env = dict(os.environ)
    log_dir = tmp_path / "logs" / "999999999"
    log_dir.mkdir(parents=True, mode=0o700)
    (log_dir / "state").write_text("stopped\n")
    save_record(JobRecord("999999999", "default", str(log_dir), "s", [], "2026-01-01"))
    for argv in (["profiles", "schema"], ["list"], ["status"], ["status", "--json"]):
        done = _into_a_closed_pipe(argv, env)
        assert (done.returncode, done.stderr) == (0, ""), (argv, done.stderr[-600:])
