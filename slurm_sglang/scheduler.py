"""What SLURM says of a job, asked honestly: squeue while it is queued or runs, sacct once it
left the queue (where accounting exists), else scontrol while slurmctld still holds the ended
job, scancel to end it.

A query that fails (slurmctld restarting, a network blip to the login node) is retried with
backoff, then reported as an unknown reading with the error; it never reads as "gone".
The clock is a parameter, so the polling is tested with a fake one (tests/unit/fake_slurm.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from slurm_sglang.errors import ClusterError
from slurm_sglang.jobs import QUEUE_UNREACHABLE, QueueReading

# The transport package loads when a command runs, not when the CLI starts (`render`).
if TYPE_CHECKING:
    from slurm_sglang.transport.base import Transport

__all__ = [
    "DEFAULT_BACKOFF",
    "QUEUE_UNREACHABLE",
    "SYSTEM_CLOCK",
    "Backoff",
    "Clock",
    "QueueReading",
    "cancel_job",
    "queue_state",
    "read_queue",
]

# squeue's and sacct's words for "no such job" (squeue exits 1 with it once a job is purged).
_GONE = "Invalid job id"
# sacct's words where the cluster keeps no accounting (the sandbox, many small clusters).
_NO_ACCOUNTING = ("accounting storage is disabled", "Accounting storage is disabled")
# sacct fields, in order; -P separates them with '|'.
_SACCT_FIELDS = "State,ExitCode,Reason"


class Clock(Protocol):
    """Time as the poll loops see it: a monotonic reading and a sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def sleep(self, seconds: float) -> None:
        """Wait this long."""


class _SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """time.sleep()."""
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = _SystemClock()


@dataclass(frozen=True)
class Backoff:
    """How often a failed query is tried again: attempts in all, waits doubling from first."""

    attempts: int = 4
    first: float = 0.5
    factor: float = 2.0

    def waits(self) -> list[float]:
        """The pauses between attempts (one fewer than the attempts)."""
        return [self.first * self.factor ** index for index in range(self.attempts - 1)]


DEFAULT_BACKOFF = Backoff()


def _squeue(transport: Transport, job_id: str) -> QueueReading:
    # %r: why a pending job waits (Resources, Priority, PartitionNodeLimit, ...).
    result = transport.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], check=False)
    if result.returncode != 0 and _GONE not in result.stderr:
        return QueueReading(None, "squeue", error=_why("squeue", result.returncode,
                                                       result.stderr))
    lines = result.stdout.strip().splitlines()
    if not lines:
        return QueueReading(None, "squeue")
    state, _, reason = lines[0].partition("|")
    return QueueReading(state.strip() or None, "squeue", reason=_reason(reason))


def _reason(text: str) -> str:
    """SLURM's Reason, '' where it says None."""
    text = text.strip()
    return "" if text in ("None", "(null)") else text


def _sacct(transport: Transport, job_id: str) -> QueueReading:
    result = transport.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", _SACCT_FIELDS],
                           check=False)
    if result.returncode != 0:
        if any(words in result.stderr for words in _NO_ACCOUNTING):
            return QueueReading(None, "none", asked="sacct: accounting storage is disabled")
        if result.returncode == 127:
            return QueueReading(None, "none", asked="sacct: not installed")
        return QueueReading(None, "sacct", error=_why("sacct", result.returncode, result.stderr))
    rows = [line.split("|") for line in result.stdout.splitlines() if line.strip()]
    if not rows:
        return QueueReading(None, "none", asked="sacct: no record")
    state, exit_code, reason = [*rows[-1], "", "", ""][:3]
    # "CANCELLED by 1000": the state word first, the rest is who.
    return QueueReading(state.split(" ")[0] or None, "sacct", exit_code, _reason(reason))


def _scontrol(transport: Transport, job_id: str) -> QueueReading:
    """slurmctld's own record of an ended job, kept MinJobAge (300 s by default) after it
    ended: where there is no accounting, the only word on a job that died before its driver
    wrote anything (a batch shell that could not start, a job cancelled while pending)."""
    result = transport.run(["scontrol", "show", "job", "-o", job_id], check=False)
    if result.returncode != 0:
        if _GONE in result.stderr:
            return QueueReading(None, "none", asked="scontrol: no such job (it keeps ended "
                                "jobs for MinJobAge, 300 s by default)")
        if result.returncode == 127:
            return QueueReading(None, "none", asked="scontrol: not installed")
        return QueueReading(None, "scontrol",
                            error=_why("scontrol", result.returncode, result.stderr))
    # One line a job (-o); the first is the job itself. Fields are KEY=VALUE words.
    line = (result.stdout.strip().splitlines() or [""])[0]
    fields: dict[str, str] = {}
    for word in line.split():
        key, _, value = word.partition("=")
        fields.setdefault(key, value)
    state = fields.get("JobState") or None
    if state is None:
        return QueueReading(None, "none", asked="scontrol: no JobState in its answer")
    return QueueReading(state, "scontrol", fields.get("ExitCode", ""),
                        _reason(fields.get("Reason", "")))


def _why(command: str, code: int, stderr: str) -> str:
    last = (stderr.strip().splitlines() or [""])[-1]
    return f"{command} failed (exit {code})" + (f": {last}" if last else "")


def _retried(query: Callable[[Transport, str], QueueReading], transport: Transport,
             job_id: str, backoff: Backoff, clock: Clock) -> QueueReading:
    reading = query(transport, job_id)
    for wait in backoff.waits():
        if reading.known:
            break
        clock.sleep(wait)
        reading = query(transport, job_id)
    return reading


def read_queue(transport: Transport, job_id: str, *, backoff: Backoff = DEFAULT_BACKOFF,
               clock: Clock = SYSTEM_CLOCK) -> QueueReading:
    """SLURM's reading of the job: squeue's state (and pending reason) while it lists the job,
    else sacct's final state, exit code and reason, else scontrol's while slurmctld still holds
    the ended job; source "none", with what each said, when none knows it. Each query retried
    with backoff, an error reading when it never answered."""
    reading = _retried(_squeue, transport, job_id, backoff, clock)
    if not reading.known or reading.state is not None:
        return reading
    accounted = _retried(_sacct, transport, job_id, backoff, clock)
    if not accounted.forgotten:
        return accounted
    held = _retried(_scontrol, transport, job_id, backoff, clock)
    if not held.forgotten:
        return held
    return QueueReading(None, "none", asked="; ".join(
        ["squeue: not listed", accounted.asked, held.asked]))


def queue_state(transport: Transport, job_id: str) -> str | None:
    """squeue's state of the job (PENDING, RUNNING, ...), None once squeue forgets it, or
    QUEUE_UNREACHABLE when squeue fails for another reason; asked once, no retry."""
    reading = _squeue(transport, job_id)
    return QUEUE_UNREACHABLE if not reading.known else reading.state


def cancel_job(transport: Transport, job_id: str) -> None:
    """scancel the job; SLURM signals every step, whose node traps remove the containers.
    A job SLURM no longer knows is already ended; another refusal is a ClusterError."""
    from slurm_sglang.transport.base import raise_for_result

    result = transport.run(["scancel", job_id], check=False)
    if result.returncode == 127:
        raise_for_result(result, transport.describe())
    if result.returncode != 0 and _GONE not in result.stderr:
        raise ClusterError(_why("scancel", result.returncode, result.stderr))
