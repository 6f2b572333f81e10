"""The typed results of the control plane's calls, each with ``to_dict`` (what ``--json``
prints) and ``text`` (what the CLI prints without it). Pure: built from what control.py read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from slurm_sglang.jobs import JobProgress, JobRecord, JobStatus, QueueReading
from slurm_sglang.scheduler import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from slurm_sglang.metrics import TargetReading

__all__ = [
    "Cancelled",
    "Endpoint",
    "Frame",
    "JobList",
    "JobView",
    "MetricsFrame",
    "MetricsView",
    "StatusFrame",
    "TunnelEnd",
    "phase_printer",
]


@dataclass(frozen=True)
class JobView:
    """A job as the user sees it: record, status, SLURM's reading, progress and endpoint."""

    record: JobRecord
    status: JobStatus
    queue: QueueReading
    progress: JobProgress
    endpoint: dict[str, object] | None
    # The job's own state file's word; None when the driver never wrote one.
    state_word: str | None = None

    @property
    def queue_state(self) -> str | None:
        """squeue's state while SLURM lists the job, else None (see queue for sacct's)."""
        return self.queue.state if self.queue.source == "squeue" else None

    @property
    def phase(self) -> str:
        """What the job is doing now: the events' phase while it runs, else why it ended."""
        if self.status is JobStatus.PENDING:
            # squeue's reason: a wait SLURM will never lift (PartitionNodeLimit) shows here.
            reason = f": {self.queue.reason}" if self.queue.reason else ""
            return f"queued ({self.queue_state or 'PENDING'}{reason})"
        if self.status is JobStatus.UNKNOWN and self.queue.error:
            return f"unknown ({self.queue.error})"
        if self.status.finished or self.status is JobStatus.UNKNOWN:
            return self.why or str(self.status.value)
        return self.progress.phase

    @property
    def why(self) -> str:
        """One line on why the job ended: its first failure, else SLURM's final word; for an
        unknown job, SLURM's error or what each source said. '' while it runs."""
        queue = self.queue
        if self.status is JobStatus.UNKNOWN:
            if queue.error:
                return queue.error
            if queue.forgotten:
                return (f"no source knows the job ({queue.asked}) and it wrote no state file "
                        f"in {self.record.log_dir}")
            return ""
        if not self.status.finished:
            return ""
        if self.progress.failures:
            return self.progress.failures[0]
        if queue.state is None:
            return ""
        # squeue's word on a job just ended (CANCELLED, COMPLETING) has no exit code.
        words = [queue.state + (f", {_exit_words(queue.exit_code)}"
                                if queue.exit_code not in ("", "0:0") else "")]
        if self.state_word is None:
            words.append(" before the script ran")
        if queue.reason and queue.reason != "NonZeroExitCode":  # the exit code says it
            words.append(f", reason {queue.reason}")
        if self.status is JobStatus.FAILED or self.state_word is None:
            words.append(f": see the driver log {self.record.driver_log}")
        return "".join(words)

    @property
    def url(self) -> str | None:
        """The served URL once ready (endpoint.json's, else the ready event's)."""
        return str((self.endpoint or {}).get("url") or self.progress.ready_url or "") or None

    @property
    def replicas(self) -> list[dict[str, object]]:
        """Each data-parallel replica's URL, nodes and state, from endpoint.json."""
        listed = (self.endpoint or {}).get("replicas")
        return [item for item in listed if isinstance(item, dict)] if isinstance(listed,
                                                                                 list) else []

    def to_dict(self) -> dict[str, object]:
        """The view as `status --json` prints it."""
        return {
            "id": self.record.ref,
            "job_id": self.record.job_id,
            "host": self.record.host or "local",
            "status": self.status.value,
            "queue_state": self.queue_state,
            "queue": {"source": self.queue.source, "state": self.queue.state,
                      "exit_code": self.queue.exit_code, "reason": self.queue.reason,
                      "error": self.queue.error, "asked": self.queue.asked},
            "phase": self.phase,
            "why": self.why,
            "url": self.url,
            "replicas": self.replicas,
            "endpoint": self.endpoint,
            "failures": self.progress.failures,
            "staged": {node: {"bytes": copied, "bytes_per_s": rate}
                       for node, (copied, rate) in self.progress.staged.items()},
            "log_dir": self.record.log_dir,
            "driver_log": self.record.driver_log,
        }

    def text(self) -> str:
        """The status lines `status` prints."""
        lines = [f"job {self.record.ref}: {self.status.value} ({self.phase})"]
        if self.endpoint:
            nodes = self.endpoint.get("nodes")
            lines.append(f"  url: {self.endpoint.get('url')}" + (
                f"   nodes: {', '.join(map(str, nodes))}" if isinstance(nodes, list) else ""))
        lines += [f"  replica {replica.get('replica')}: {replica.get('state')} "
                  f"{replica.get('url')} nodes {replica.get('nodes')}" for replica in self.replicas]
        if self.progress.staging and self.progress.staging != self.phase:
            lines.append(f"  {self.progress.staging}")
        if self.queue.ended:
            lines.append(f"  SLURM: {self.queue.state} exit {self.queue.exit_code or '-'}"
                         + (f" reason {self.queue.reason}" if self.queue.reason else ""))
        lines += [f"  {failure}" for failure in self.progress.failures if failure != self.phase]
        return "\n".join(lines)

    def ready_text(self) -> str:
        """What `submit` prints once the job serves: the URL and how to use it."""
        url = self.url or ""
        model = str((self.endpoint or {}).get("model", ""))
        ref = self.record.ref
        return "\n".join([
            f"ready: {url}",
            "",
            "  curl:",
            f"    curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
            f"      -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
            "\"content\": \"Hello\"}], \"max_tokens\": 50}'",
            "  python:",
            "    from openai import OpenAI",
            f"    client = OpenAI(base_url=\"{url}/v1\", api_key=\"none\")",
            f"    client.chat.completions.create(model=\"{model}\", "
            "messages=[{\"role\": \"user\", \"content\": \"Hello\"}])",
            "",
            *([f"  from this machine (the URL above is the cluster's): "
               f"python -m slurm_sglang tunnel {ref}"] if self.record.host else []),
            f"  stop it with: python -m slurm_sglang cancel {ref}",
        ])

    def outcome_text(self) -> str:
        """What `submit` prints when following ends before the job serves."""
        # Why it ended; where following stopped first (--timeout), what it was doing.
        why = self.why or ("" if self.status.finished else self.phase)
        later = [line for line in self.progress.failures if line != why]
        return "\n".join([f"job {self.record.ref} {self.status.value}"
                          + (f": {why}" if why else ""),
                          *later, *([] if self.record.driver_log in why else
                                    [f"driver log: {self.record.driver_log}"])])


def _exit_words(exit_code: str) -> str:
    """SLURM's ExitCode CODE:SIGNAL in words: 'exit 127', 'signal 9', or 'exit -'."""
    code, _, signal = exit_code.partition(":")
    if signal and signal != "0":
        return f"signal {signal}"
    return f"exit {code or '-'}"


def phase_printer(stream: TextIO, clock: Clock = SYSTEM_CLOCK) -> Callable[[JobView], None]:
    """An on_change for follow that prints `[ 12.3s] job 47: phase` to stream when the phase
    moves (the events can say "ready" a poll before the state file: one line for both)."""
    started = clock.monotonic()
    shown: list[str] = []

    def show(view: JobView) -> None:
        if shown[-1:] != [view.phase]:
            shown.append(view.phase)
            print(f"[{clock.monotonic() - started:6.1f}s] job {view.record.ref}: {view.phase}",
                  file=stream, flush=True)

    return show


@dataclass(frozen=True)
class JobList:
    """The recorded jobs, newest first."""

    records: list[JobRecord]

    def to_dict(self) -> list[dict[str, object]]:
        """As `list --json` prints it."""
        return [record.to_dict() for record in self.records]

    def text(self) -> str:
        """A table: id (HOST:JOB for a remote job), host, cluster, when submitted."""
        return "\n".join([f"{'JOB':>12}  {'HOST':<14} {'CLUSTER':<20} SUBMITTED"] + [
            f"{r.ref:>12}  {r.host or 'local':<14} {r.cluster:<20} {r.submitted_at}"
            for r in self.records])


@dataclass(frozen=True)
class Endpoint:
    """A job's endpoint once it serves, else its view (`endpoint` exits 1 until then)."""

    view: JobView

    @property
    def ok(self) -> bool:
        """The job serves and has written endpoint.json."""
        return self.view.status is JobStatus.READY and bool(self.view.endpoint)

    def to_dict(self) -> dict[str, object]:
        """endpoint.json once ready, else the job's view."""
        return dict(self.view.endpoint or {}) if self.ok else self.view.to_dict()

    def text(self) -> str:
        """The URL, or why there is none yet."""
        view = self.view
        if self.ok:
            return str((view.endpoint or {})["url"])
        return f"job {view.record.ref} is {view.status.value}, not ready"


@dataclass(frozen=True)
class Cancelled:
    """What cancel saw at the end: the last view and whether every rank confirmed its end."""

    view: JobView

    @property
    def ok(self) -> bool:
        """SLURM ended the job and every node that started a rank said it ended."""
        return self.view.queue_state is None and not self.view.progress.nodes_not_ended \
            and self.view.queue.known

    def to_dict(self) -> dict[str, object]:
        """The view, as `cancel --json` prints it."""
        return self.view.to_dict()

    def text(self) -> str:
        """One line: cancelled and confirmed, or what is left."""
        view = self.view
        ref = view.record.ref
        if not view.queue.known:
            return f"job {ref}: scancel sent, but SLURM did not answer: {view.queue.error}"
        if view.queue_state is not None:
            return f"job {ref} still {view.queue_state}"
        left = view.progress.nodes_not_ended
        if left:
            return (f"job {ref} cancelled, but {', '.join(left)} never reported its rank "
                    f"ended: look for containers labelled slurm-sglang.job={view.record.job_id}")
        return (f"job {ref} cancelled ({view.status.value}); {len(view.progress.nodes_ended)} "
                "node(s) confirmed their ranks ended and their containers are gone")


@dataclass(frozen=True)
class MetricsView:
    """A job's view and the reading of each of its metrics endpoints."""

    view: JobView
    readings: list[TargetReading] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The job serves and every endpoint answered."""
        return self.view.status is JobStatus.READY and all(r.ok for r in self.readings)

    def to_dict(self) -> dict[str, object]:
        """As `metrics --json` prints it."""
        view = self.view
        return {"id": view.record.ref, "job_id": view.record.job_id,
                "status": view.status.value, "phase": view.phase,
                "targets": [reading.to_dict() for reading in self.readings]}

    def text(self) -> str:
        """The metrics table, or why there is none."""
        view = self.view
        from slurm_sglang.metrics import table

        if view.status is not JobStatus.READY:
            return f"job {view.record.ref} is {view.status.value} ({view.phase}): no metrics yet"
        return table(self.readings)


@dataclass(frozen=True)
class StatusFrame:
    """One refresh of `status --watch`: the view and, once ready, its metrics."""

    reading: MetricsView

    @property
    def last(self) -> bool:
        """The job has finished: no frame follows."""
        return self.reading.view.status.finished

    def to_dict(self) -> dict[str, object]:
        """The view and its metrics, one JSON object a frame."""
        return {**self.reading.view.to_dict(),
                "metrics": [reading.to_dict() for reading in self.reading.readings]}

    def text(self) -> str:
        """The status lines, then the metrics table once there is one."""
        text = self.reading.view.text()
        return text + ("\n\n" + self.reading.text() if self.reading.readings else "")


@dataclass(frozen=True)
class MetricsFrame:
    """One refresh of `metrics --watch`."""

    reading: MetricsView

    @property
    def last(self) -> bool:
        """The job has finished: no frame follows."""
        return self.reading.view.status.finished

    def to_dict(self) -> dict[str, object]:
        """As `metrics --json` prints it."""
        return self.reading.to_dict()

    def text(self) -> str:
        """The metrics table."""
        return self.reading.text()


Frame = StatusFrame | MetricsFrame


@dataclass(frozen=True)
class TunnelEnd:
    """Why a held tunnel closed: Ctrl-C (view None) or the job stopped serving."""

    record: JobRecord
    view: JobView | None

    @property
    def ok(self) -> bool:
        """Closed by the user, not by the job ending."""
        return self.view is None

    def text(self) -> str:
        """One line on how it ended."""
        if self.view is None:
            return "tunnel closed"
        return f"tunnel: job {self.record.ref} is {self.view.status.value}; closing"
