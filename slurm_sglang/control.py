"""A submitted job's life as the control plane sees it: its view, following it, its logs, its
metrics, a tunnel to it, cancelling it. Every loop and sleep of the control plane lives here,
on an injectable clock, so a notebook gets what the CLI gets and tests run in milliseconds.

api.py exports these; what they return is in views.py, which cli.py prints.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from slurm_sglang.errors import JobError, UserInputError
from slurm_sglang.jobs import (
    JobRecord,
    JobStatus,
    find_record,
    list_records,
    read_progress,
    status_of,
)
from slurm_sglang.scheduler import (
    DEFAULT_BACKOFF,
    SYSTEM_CLOCK,
    Backoff,
    Clock,
    cancel_job,
    read_queue,
)
from slurm_sglang.views import (
    Cancelled,
    Endpoint,
    Frame,
    JobList,
    JobView,
    MetricsView,
    StatusFrame,
    TunnelEnd,
)

# The transport package (and paramiko, for a remote job) loads when a job is asked about, not
# when the CLI starts: `render` and `check` need none of it.
if TYPE_CHECKING:
    from slurm_sglang.transport import Transport, Tunnel

# How often an open tunnel checks that its job still serves.
TUNNEL_CHECK_SECONDS = 5.0
# How often `logs --follow` asks SLURM whether the job has ended (in reads of the log).
_LOG_STATUS_EVERY = 10


def open_transport(host: str, trust_new_host: bool = False) -> Transport:
    """The transport to where the job's files and SLURM are: this machine, or host over SSH."""
    from slurm_sglang.transport import transport_for

    return transport_for(host or None, trust_new_host=trust_new_host)


@contextlib.contextmanager
def _transport(record: JobRecord, transport: Transport | None) -> Iterator[Transport]:
    """The given transport, or one opened (and closed) for the block."""
    if transport is not None:
        yield transport
        return
    with open_transport(record.host) as opened:
        yield opened


def list_jobs() -> JobList:
    """Every recorded job, newest first."""
    return JobList(list_records())


def find_job(ref: str | None = None) -> JobRecord:
    """A recorded job by JOB or HOST:JOB (None: the newest); UserInputError when unknown."""
    return find_record(ref)


def job_view(record: JobRecord, transport: Transport | None = None, *,
             clock: Clock = SYSTEM_CLOCK, backoff: Backoff = DEFAULT_BACKOFF) -> JobView:
    """Read SLURM's state of the job (squeue, else sacct, else scontrol; retried) and its own
    files."""
    with _transport(record, transport) as where:
        queue = read_queue(where, record.job_id, backoff=backoff, clock=clock)
        check_job_files(where, record.log_dir, ("state", "events.log", "endpoint.json"))
        state = read_optional(where, f"{record.log_dir}/state")
        events = read_optional(where, f"{record.log_dir}/events.log") or ""
        endpoint_text = read_optional(where, f"{record.log_dir}/endpoint.json")
    status = status_of(queue, state)
    endpoint = json.loads(endpoint_text) if endpoint_text and status is JobStatus.READY else None
    return JobView(record, status, queue, read_progress(events), endpoint,
                   None if state is None else state.strip())


def endpoint(record: JobRecord, transport: Transport | None = None) -> Endpoint:
    """The job's endpoint (URL, head, port, replicas, metrics) once it serves."""
    return Endpoint(job_view(record, transport))


def check_job_files(transport: Transport, log_dir: str, names: Sequence[str]) -> None:
    """Refuse a job directory, or a file in it, that is not this user's own.

    Job ids are predictable on a shared workspace: a directory another user made first, or a
    file or link planted in it, could send `tunnel` and `smoke` (with the API key) anywhere.
    The directory must be a real directory of the user's that no one else can write; each
    file that exists, a regular file of the user's.
    """
    if log_dir == "~" or log_dir.startswith("~/"):
        log_dir = transport.home() + log_dir[1:]
    paths = [log_dir, *(f"{log_dir}/{name}" for name in names)]
    uid = transport.run(["id", "-u"]).stdout.strip()
    # No -L: a symbolic link is described as one, never followed.
    listing = transport.run(["stat", "-c", "%u:%a:%F:%n", "--", *paths], check=False).stdout
    seen: dict[str, tuple[str, int, str]] = {}
    for line in listing.splitlines():
        owner, mode, kind, name = [*line.split(":", 3), "", "", ""][:4]
        seen[name] = (owner, int(mode or "0", 8), kind)
    if log_dir not in seen:
        return
    for path in paths:
        if path not in seen:
            continue
        owner, permissions, kind = seen[path]
        wanted = "directory" if path == log_dir else "regular file"
        if kind.replace("empty ", "") != wanted:
            raise UserInputError(
                f"{path} is a {kind}, not a {wanted}: not read (someone may have planted it); "
                f"remove {log_dir} and resubmit")
        if owner != uid:
            raise UserInputError(
                f"{path} belongs to uid {owner}, not to you (uid {uid}): not read; another "
                f"user made it first on this workspace; submit with a --workspace of your own")
        if path == log_dir and permissions & 0o022:
            raise UserInputError(
                f"{path} is writable by group or others (mode {permissions:o}): not read; "
                f"chmod go-w {path}")


def read_optional(transport: Transport, path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    from slurm_sglang.transport.base import FileMissingError

    try:
        return transport.read_text(path)
    except FileMissingError:
        return None


def follow(
    record: JobRecord,
    on_change: Callable[[JobView], None] = lambda view: None,
    timeout: float | None = None,
    interval: float = 0.5,
    *,
    transport: Transport | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> JobView:
    """Poll the job until it is ready or finished (or timeout seconds passed), calling
    on_change when its status, phase or queue state moves; returns the last view. An unknown
    reading (SLURM not answering) is shown and polled through, never taken for an end; a job
    that every source answered it does not know (and that wrote no state file) ends it."""
    deadline = None if timeout is None else clock.monotonic() + timeout
    last: tuple[object, ...] = ()
    with _transport(record, transport) as where:
        while True:
            view = job_view(record, where, clock=clock)
            key = (view.status, view.phase, view.progress.phase, view.queue_state,
                   view.queue.error)
            if key != last:
                on_change(view)
                last = key
            if view.status is JobStatus.READY or view.status.finished:
                return view
            if view.status is JobStatus.UNKNOWN and view.queue.forgotten:
                return view
            if deadline is not None and clock.monotonic() > deadline:
                return view
            clock.sleep(interval)


def wait_ready(record: JobRecord, timeout: float | None = None, *,
               transport: Transport | None = None, clock: Clock = SYSTEM_CLOCK) -> JobView:
    """Follow the job until it serves; JobError with its failures when it ends or times out."""
    view = follow(record, timeout=timeout, transport=transport, clock=clock)
    if view.status is not JobStatus.READY:
        raise JobError(view.outcome_text().replace("\n", "; "))
    return view


def cancel(record: JobRecord, timeout: float = 60, *, transport: Transport | None = None,
           clock: Clock = SYSTEM_CLOCK) -> Cancelled:
    """scancel the job and wait until SLURM has ended it and every rank has stopped."""
    with _transport(record, transport) as where:
        cancel_job(where, record.job_id)
        deadline = clock.monotonic() + timeout
        view = job_view(record, where, clock=clock)
        # SLURM forgetting the job is not enough: every node that started a rank must also
        # have said its rank ended, which its supervisor does after removing the containers.
        while not Cancelled(view).ok and clock.monotonic() < deadline:
            clock.sleep(0.3)
            view = job_view(record, where, clock=clock)
    return Cancelled(view)


def log_path(record: JobRecord, node: str | None = None, rank: int | None = None,
             transport: Transport | None = None) -> str:
    """The driver's log, or one rank's log picked by node name or rank number."""
    if node is None and rank is None:
        return record.driver_log
    with _transport(record, transport) as where:
        listing = where.run(["ls", "-1", record.log_dir], check=False).stdout.split()
    for name in listing:
        parts = name.removesuffix(".log").split("-", 2)
        if len(parts) == 3 and parts[0] == "rank" and name.endswith(".log") and (
            (rank is not None and parts[1] == str(rank)) or (node is not None and parts[2] == node)
        ):
            return f"{record.log_dir}/{name}"
    wanted = f"node {node}" if node is not None else f"rank {rank}"
    ranks = [name for name in listing if name.startswith("rank-")]
    raise UserInputError(f"no log for {wanted} in {record.log_dir} (have: {', '.join(ranks)})")


def logs(record: JobRecord, sink: Callable[[str], object], *, node: str | None = None,
         rank: int | None = None, follow: bool = False, interval: float = 0.5,
         transport: Transport | None = None, clock: Clock = SYSTEM_CLOCK) -> int:
    """Pass the driver's (or one rank's) log to sink; with follow, keep reading what it appends
    until the job has finished and the log has nothing more. Returns the bytes read."""
    with _transport(record, transport) as where:
        path = log_path(record, node, rank, where)
        offset, reads = 0, 0
        while True:
            chunk = where.read_bytes_from(path, offset)
            if chunk:
                sink(chunk.decode(errors="replace"))
                offset += len(chunk)
            if not follow:
                return offset
            reads += 1
            if not chunk and reads % _LOG_STATUS_EVERY == 0 and job_view(
                    record, where, clock=clock).status.finished:
                # One more read: the driver's last lines land as the job ends.
                tail = where.read_bytes_from(path, offset)
                if tail:
                    sink(tail.decode(errors="replace"))
                return offset + len(tail)
            clock.sleep(interval)


def metrics(record: JobRecord, transport: Transport | None = None, *,
            clock: Clock = SYSTEM_CLOCK) -> MetricsView:
    """Read every metrics endpoint of a ready job (its servers' and its router's), with curl
    where the job's files are; a target that does not answer is a reading with its error."""
    from slurm_sglang.metrics import read_all

    with _transport(record, transport) as where:
        view = job_view(record, where, clock=clock)
        if view.status is not JobStatus.READY or not view.endpoint:
            return MetricsView(view)
        return MetricsView(view, read_all(where, view.endpoint))


def watch(record: JobRecord, on_frame: Callable[[Frame], None], *, interval: float = 2.0,
          frame: Callable[[MetricsView], Frame] = StatusFrame,
          transport: Transport | None = None, clock: Clock = SYSTEM_CLOCK) -> Frame:
    """Read the job and its metrics every interval seconds, passing each frame to on_frame,
    until the job finishes or Ctrl-C; returns the last frame."""
    with _transport(record, transport) as where:
        shown = frame(metrics(record, where, clock=clock))
        try:
            while True:
                on_frame(shown)
                if shown.last:
                    return shown
                clock.sleep(interval)
                shown = frame(metrics(record, where, clock=clock))
        except KeyboardInterrupt:
            return shown


@contextlib.contextmanager
def tunnel(record: JobRecord, local_port: int = 0) -> Iterator[Tunnel]:
    """Forward 127.0.0.1:local_port (0: any free one) to the ready job's head, via its host."""
    from slurm_sglang.transport import open_tunnel

    with open_transport(record.host) as transport:
        view = job_view(record, transport)
        if view.status is not JobStatus.READY or not view.endpoint:
            raise JobError(
                f"job {record.ref} is {view.status.value}, not ready: nothing to tunnel to "
                f"(follow it with: python -m slurm_sglang status {record.ref})"
            )
        head = str(view.endpoint.get("head_ip") or view.endpoint.get("head"))
        port = int(str(view.endpoint["port"]))
        with open_tunnel(transport, head, port, local_port) as forward:
            yield forward


def hold_tunnel(record: JobRecord, on_open: Callable[[Tunnel], None], local_port: int = 0, *,
                check_every: float = TUNNEL_CHECK_SECONDS, clock: Clock = SYSTEM_CLOCK
                ) -> TunnelEnd:
    """Open the tunnel, call on_open, and keep it until Ctrl-C or the job stops serving; an
    unknown reading (SLURM not answering) keeps it open."""
    with tunnel(record, local_port) as forward:
        on_open(forward)
        try:
            while True:
                clock.sleep(check_every)
                view = job_view(record, forward.transport, clock=clock)
                if view.status is not JobStatus.READY and view.status is not JobStatus.UNKNOWN:
                    return TunnelEnd(record, view)
        except KeyboardInterrupt:
            return TunnelEnd(record, None)
