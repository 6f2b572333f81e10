"""Job records and the job's own status files, read into a status enum.

The data plane publishes what it knows in ``logs/<jobid>/``: ``state`` (one word),
``events.log`` (one timestamped line per event) and ``endpoint.json``. This module turns those
files into a :class:`JobProgress` without any I/O of its own, so it is tested from recorded lines.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class JobStatus(str, enum.Enum):
    """Where a serving job is in its life."""

    PENDING = "pending"
    STARTING = "starting"
    PREPARING = "preparing"
    LAUNCHING = "launching"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        """True once the job can no longer become ready."""
        return self in (JobStatus.FAILED, JobStatus.STOPPED)


_STATE_WORDS = {
    "starting": JobStatus.STARTING,
    "preparing": JobStatus.PREPARING,
    "launching": JobStatus.LAUNCHING,
    "loading": JobStatus.LOADING,
    "ready": JobStatus.READY,
    "failed": JobStatus.FAILED,
    "stopped": JobStatus.STOPPED,
}
_QUEUE_STATES = {
    "PENDING": JobStatus.PENDING,
    "CONFIGURING": JobStatus.PENDING,
    "REQUEUED": JobStatus.PENDING,
    "RUNNING": JobStatus.STARTING,
    "COMPLETING": JobStatus.STOPPED,
    "COMPLETED": JobStatus.STOPPED,
    "CANCELLED": JobStatus.STOPPED,
    "TIMEOUT": JobStatus.STOPPED,
    "PREEMPTED": JobStatus.STOPPED,
    "FAILED": JobStatus.FAILED,
    "NODE_FAIL": JobStatus.FAILED,
    "OUT_OF_MEMORY": JobStatus.FAILED,
    "BOOT_FAIL": JobStatus.FAILED,
    "DEADLINE": JobStatus.STOPPED,
}


@dataclass(frozen=True)
class Event:
    """One line of events.log: time, kind, node, rank and the other fields."""

    time: str
    kind: str
    node: str
    rank: str
    fields: dict[str, str]
    detail: str = ""


def parse_event(line: str) -> Event | None:
    """Parse ``HH:MM:SS.mmm KIND node=N rank=R key=value ... [detail=free text]``."""
    head, _, detail = line.partition(" detail=")
    words = head.split()
    if len(words) < 2:
        return None
    fields = dict(word.split("=", 1) for word in words[2:] if "=" in word)
    return Event(words[0], words[1], fields.pop("node", "?"), fields.pop("rank", "?"), fields,
                 detail)


@dataclass
class JobProgress:
    """What the events say so far: per-phase counts, the endpoint, failures."""

    nodes: int = 0
    images_done: int = 0
    ranks_started: int = 0
    ranks_loaded: int = 0
    ready_url: str = ""
    failures: list[str] = field(default_factory=list)
    # Nodes that started a rank, and nodes whose supervisor said it ended (containers removed).
    nodes_started: set[str] = field(default_factory=set)
    nodes_ended: set[str] = field(default_factory=set)

    # Model staging (docs/staging.md): node -> bytes copied there and the rate (0 0: it held a
    # copy); the broadcast's bytes sent so far, of how many, and its rate.
    staged: dict[str, tuple[int, int]] = field(default_factory=dict)
    stage_sent: tuple[int, int, int] = (0, 0, 0)
    stage_missing: int = 0
    # The driver began removing every node's containers (after the first failure).
    swept: bool = False

    @property
    def nodes_not_ended(self) -> list[str]:
        """Nodes that started a rank and have not reported its end."""
        return sorted(self.nodes_started - self.nodes_ended)
    last_time: str = ""

    @property
    def staging(self) -> str:
        """The model's staging in one line ('' when the job stages nothing)."""
        copied = {node: value for node, value in self.staged.items() if value[0]}
        sent, total, rate = self.stage_sent
        if total and len(copied) < self.stage_missing:
            return f"staging the model: {_size(sent)} of {_size(total)} sent, {_size(rate)}/s"
        if copied:
            rates = ", ".join(f"{node} {_size(b)} at {_size(r)}/s" for node, (b, r) in
                              sorted(copied.items()))
            held = len(self.staged) - len(copied)
            return f"model staged: {rates}" + (f"; {held} node(s) held a copy" if held else "")
        if self.staged:
            return f"model staged: {len(self.staged)} node(s) held a copy, nothing copied"
        return ""

    @property
    def phase(self) -> str:
        """A short human description of the current phase."""
        if self.ready_url:
            return f"ready at {self.ready_url}"
        if self.ranks_started:
            loaded = self.ranks_loaded + (1 if self.ranks_started else 0)
            if self.ranks_loaded:
                return f"loading the model ({min(loaded, self.nodes)}/{self.nodes} nodes loaded)"
            return f"ranks started on {self.ranks_started}/{self.nodes} nodes, loading the model"
        if self.staging:
            return self.staging
        if self.images_done:
            return f"image on {self.images_done}/{self.nodes} nodes"
        if self.nodes:
            return f"preparing {self.nodes} nodes"
        return "starting"


def read_progress(events_text: str) -> JobProgress:
    """Fold events.log into a JobProgress."""
    progress = JobProgress()
    failed_ranks: set[str] = set()
    for line in events_text.splitlines():
        event = parse_event(line)
        if event is None:
            continue
        progress.last_time = event.time
        if event.kind == "node":
            progress.nodes += 1
        elif event.kind == "image":
            progress.images_done += 1
        elif event.kind == "rank-started":
            progress.ranks_started += 1
            progress.nodes_started.add(event.node)
        elif event.kind == "replica-rank-started":
            progress.nodes_started.add(event.node)
        elif event.kind == "loaded":
            progress.ranks_loaded += 1
        elif event.kind == "stage" and event.fields.get("status") == "present":
            progress.staged[event.node] = (0, 0)
        elif event.kind == "stage":
            progress.stage_missing += 1
        elif event.kind == "staged":
            progress.staged[event.node] = (_int(event.fields.get("bytes")),
                                           _int(event.fields.get("rate")))
        elif event.kind == "stage-progress":
            progress.stage_sent = (_int(event.fields.get("bytes")),
                                   _int(event.fields.get("total")), _int(event.fields.get("rate")))
        elif event.kind == "ready":
            progress.ready_url = event.fields.get("url", "")
        elif event.kind == "sweep":
            progress.swept = True
        if event.kind == "rank-exit":
            progress.nodes_ended.add(event.node)
        if event.kind == "rank-exit" and event.rank in failed_ranks:
            continue  # its failure (a health timeout, a lost node) is named already
        failure = failure_line(event, after_sweep=progress.swept)
        if failure:
            progress.failures.append(failure)
        if event.kind in ("health-timeout", "lost"):
            failed_ranks.add(event.rank)
    return progress


def failure_line(event: Event, after_sweep: bool = False) -> str:
    """The line naming the failure an event reports ('' for an event that is none), worded as
    the driver's own (templates/partials/driver.sh.j2, on_event)."""
    where, fields = event.node, event.fields
    if event.kind == "preflight-failed":
        return f"{where}: {fields.get('check', '?')}: {event.detail}"
    if event.kind == "gpus-refused":
        return f"{where}: GPUS refused: {event.detail}"
    if event.kind == "preflight-nccl" and fields.get("code", "0") != "0":
        return f"{where}: NCCL check failed (code {fields.get('code')}): {event.detail}"
    if event.kind == "health-timeout":
        seconds = fields.get("seconds")
        return f"{where} (rank {event.rank}): /health not 200" + (
            f" after {seconds} s" if seconds else " in time")
    if event.kind == "lost":
        return f"rank {event.rank} on {where}: lost (SLURM says its node is gone)"
    if event.kind == "rank-exit" and "stopped" not in fields:
        # After the sweep began, an exit is most likely the sweep's doing, not a cause.
        return (f"rank {event.rank} on {where} exited with code {fields.get('code')}"
                + (" (after the cleanup began)" if after_sweep else ""))
    if event.kind == "replica-failed" and fields.get("reason") == "exit-on-replica-failure":
        return (f"replica {fields.get('replica')} failed on {where} (exit code "
                f"{fields.get('code')}); --exit-on-replica-failure ends the job")
    if event.kind == "replica-failed":
        return (f"replica {fields.get('replica')} on {where} stays down: it failed again "
                f"after {fields.get('restarts')} restart(s)")
    if event.kind == "router-exit":
        return f"the router on {where} exited with code {fields.get('code')}"
    return ""


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def _size(count: int) -> str:
    """Bytes as GiB or MiB, one decimal."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


# What squeue and sacct say of a job, as read by scheduler.py (I/O there, folding here).
QUEUE_UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class QueueReading:
    """SLURM's word on a job: from squeue while queued or running, from sacct once it left,
    else from scontrol while slurmctld still holds the ended job (MinJobAge, 300 s by default).

    state is SLURM's state (PENDING, RUNNING, COMPLETED, ...) or None when SLURM no longer knows
    the job; error is set when a source gave no answer, and the state is then unknown.
    """

    state: str | None
    source: str = "squeue"  # squeue, sacct, scontrol, or none (no source knows the job)
    exit_code: str = ""  # sacct's or scontrol's ExitCode, e.g. "1:0" (code:signal)
    reason: str = ""  # SLURM's Reason: why it waits (squeue) or ended (NodeFail), '' for None
    error: str = ""
    asked: str = ""  # source none: what each source said, e.g. "sacct: accounting disabled"

    @property
    def known(self) -> bool:
        """False when SLURM could not be asked: the job may run or not."""
        return not self.error

    @property
    def ended(self) -> bool:
        """The reading is SLURM's final word on a job that left the queue (sacct, scontrol)."""
        return self.source in FINAL_SOURCES and self.state is not None

    @property
    def forgotten(self) -> bool:
        """Every source answered and none knows the job: nothing will change."""
        return self.known and self.source == "none"


# The sources asked once squeue no longer lists a job: their state is the job's final one.
FINAL_SOURCES = ("sacct", "scontrol")


def status_from(queue_state: str | None, state_word: str | None) -> JobStatus:
    """Combine SLURM's queue state (None: squeue no longer lists it) with the job's own state.

    QUEUE_UNREACHABLE (squeue gave no answer) is UNKNOWN: never 'stopped' on a guess."""
    own = _STATE_WORDS.get((state_word or "").strip())
    if queue_state == QUEUE_UNREACHABLE:
        return JobStatus.UNKNOWN
    if queue_state is None:
        # A job squeue has forgotten runs nowhere, whatever its last written state says.
        if own is None:
            return JobStatus.UNKNOWN
        return own if own.finished else JobStatus.STOPPED
    queue = _QUEUE_STATES.get(queue_state.strip().split(" ")[0])
    if queue is JobStatus.PENDING:
        # Queued again (requeue): the state file is the earlier run's.
        return JobStatus.PENDING
    if own is not None:
        if queue is not None and queue.finished and not own.finished:
            return queue
        return own
    if queue is not None:
        return queue
    return JobStatus.UNKNOWN


def status_of(reading: QueueReading, state_word: str | None) -> JobStatus:
    """The job's status from SLURM's reading and its own state file; UNKNOWN when SLURM did not
    answer. SLURM's final state (sacct's, scontrol's) wins over a live word the job left behind
    (a node that died)."""
    if not reading.known:
        return JobStatus.UNKNOWN
    if reading.ended and reading.state is not None:
        own = _STATE_WORDS.get((state_word or "").strip())
        ended = _QUEUE_STATES.get(reading.state.split(" ")[0])
        if ended is not None and ended.finished:
            return own if own is not None and own.finished else ended
    return status_from(reading.state, state_word)


@dataclass
class JobRecord:
    """What we remember of a submitted job, kept in the state directory."""

    job_id: str
    cluster: str
    log_dir: str
    script: str
    sglang_args: list[str]
    submitted_at: str
    host: str = ""
    driver_log: str = ""
    name: str = "sglang"

    @property
    def ref(self) -> str:
        """The id shown and accepted everywhere: JOB for a local job, HOST:JOB for a remote one
        (a local 47 and a 47 on a login node are different jobs)."""
        return f"{self.host}:{self.job_id}" if self.host else self.job_id

    def to_dict(self) -> dict[str, object]:
        """The record as `list --json` prints it."""
        return {"id": self.ref, "job_id": self.job_id, "host": self.host or "local",
                "cluster": self.cluster, "submitted_at": self.submitted_at, "name": self.name}

    def to_json(self) -> str:
        """The record as JSON text."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        """Read a record written by to_json."""
        data: dict[str, Any] = json.loads(text)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def state_dir() -> Path:
    """Where job records live: $SLURM_SGLANG_STATE_DIR, else ~/.local/state/slurm-sglang."""
    configured = os.environ.get("SLURM_SGLANG_STATE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slurm-sglang"


def save_record(record: JobRecord) -> Path:
    """Write a job record atomically; returns its path."""
    folder = state_dir() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.host or 'local'}-{record.job_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)
    return path


def list_records() -> list[JobRecord]:
    """Every recorded job, newest first."""
    folder = state_dir() / "jobs"
    if not folder.is_dir():
        return []
    records = [JobRecord.from_json(path.read_text()) for path in folder.glob("*.json")]
    return sorted(records, key=lambda record: record.submitted_at, reverse=True)


def find_record(job: str | None) -> JobRecord:
    """The record of ``job`` (JOB, or HOST:JOB with "local" for this machine), or the most
    recent one when ``job`` is None. A plain JOB that two hosts share is refused as ambiguous."""
    from slurm_sglang.errors import UserInputError

    records = list_records()
    if not records:
        raise UserInputError("no jobs recorded yet: submit one with python -m slurm_sglang submit")
    if job is None:
        return records[0]
    host, _, job_id = job.rpartition(":")
    found = [record for record in records if record.job_id == job_id
             and (not host or (record.host or "local") == host or record.host == host)]
    if len(found) == 1:
        return found[0]
    if found:
        both = ", ".join(_qualified(record) for record in found)
        raise UserInputError(f"job {job}: more than one host has it ({both}); give HOST:JOB")
    known = ", ".join(record.ref for record in records[:10])
    raise UserInputError(f"job {job}: not recorded here (recent: {known})")


def _qualified(record: JobRecord) -> str:
    return f"{record.host or 'local'}:{record.job_id}"
