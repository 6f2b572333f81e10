"""squeue's answer read honestly: a failed squeue is not a finished job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from slurm_sglang.jobs import JobStatus, status_from
from slurm_sglang.scheduler import QUEUE_UNREACHABLE, queue_state
from slurm_sglang.transport.base import CommandResult


class FakeSqueue:
    """A transport whose squeue answers with a fixed exit code and output."""

    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.answer = (returncode, stdout, stderr)

    def run(self, argv: Sequence[str], check: bool = True, **_: Any) -> CommandResult:
        assert argv[0] == "squeue"
        code, out, err = self.answer
        return CommandResult(tuple(argv), code, out, err)


@pytest.mark.parametrize(("answer", "expected"), [
    ((0, "RUNNING\n", ""), "RUNNING"),
    ((0, "", ""), None),
    ((1, "", "slurm_load_jobs error: Invalid job id specified\n"), None),
    ((1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"),
     QUEUE_UNREACHABLE),
    ((255, "", "ssh: connect to host login: Connection timed out\n"), QUEUE_UNREACHABLE),
])
def test_queue_state(answer: tuple[int, str, str], expected: str | None) -> None:
    assert queue_state(FakeSqueue(*answer), "47") == expected  # type: ignore[arg-type]


def test_an_unreachable_controller_is_unknown_never_stopped() -> None:
    # The state file says ready, but without SLURM's word the job may have died since.
    assert status_from(QUEUE_UNREACHABLE, "ready") is JobStatus.UNKNOWN
    assert status_from(QUEUE_UNREACHABLE, None) is JobStatus.UNKNOWN
    assert status_from(None, "ready") is JobStatus.STOPPED
