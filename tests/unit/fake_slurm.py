"""A stateful fake of SLURM's commands with a fake clock, for the control plane's unit tests.

In the style of submitit's tests (core/test_core.py MockedSubprocess): one object keeps a job
table and answers sbatch, squeue, scancel and sacct as SLURM would, including their failures;
time moves only when the code under test sleeps, so a job that takes minutes to become ready
is followed in milliseconds. Files go to a real directory through LocalTransport, so the job's
own state, events.log and endpoint.json are read exactly as on a cluster.

A job's life is a timeline of steps after submission (FakeSlurm.life); each step sets SLURM's
state and writes what the driver writes at that point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slurm_sglang.transport import LocalTransport
from slurm_sglang.transport.base import CommandResult, Stream

UNREACHABLE = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
NO_ACCOUNTING = "Slurm accounting storage is disabled\n"


class FakeClock:
    """Monotonic time that moves only through sleep; each sleep lets the fake SLURM act."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] = lambda now: None

    def monotonic(self) -> float:
        """The fake now."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the fake now, then let the scheduler run what is due."""
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(self.now)


@dataclass
class FakeJob:
    """One job of the table: its state, its files, and what happens next."""

    job_id: str
    log_dir: Path
    argv: tuple[str, ...]
    submitted: float
    state: str = "PENDING"
    exit_code: str = "0:0"
    reason: str = "None"
    driver_log: Path = Path()
    purged: bool = False  # squeue no longer lists it ("Invalid job id")
    forgotten: bool = False  # slurmctld dropped it too (MinJobAge after it ended)
    runs: int = 0
    steps: list[tuple[float, str]] = field(default_factory=list)


# The default life: queued 2 s, then the driver's phases as the real one writes them.
DEFAULT_LIFE: tuple[tuple[float, str], ...] = (
    (2.0, "start"), (3.0, "prepare"), (5.0, "load"), (9.0, "ready"))


class FakeSlurm:
    """A Transport whose sbatch, squeue, scancel and sacct act on a job table."""

    where = "fake cluster"

    def __init__(self, root: Path, clock: FakeClock, *, accounting: bool = True,
                 life: Sequence[tuple[float, str]] = DEFAULT_LIFE, nodes: int = 2) -> None:
        self.root = root
        self.clock = clock
        self.accounting = accounting
        self.life = tuple(life)
        self.nodes = [f"node{index}" for index in range(1, nodes + 1)]
        self.jobs: dict[str, FakeJob] = {}
        self.calls: list[tuple[str, ...]] = []
        self.failures: dict[str, list[tuple[int, str]]] = {
            "squeue": [], "sacct": [], "scancel": [], "sbatch": [], "scontrol": []}
        self._files = LocalTransport()
        self._next_id = 47
        clock.on_sleep = self.advance

    # ---- what tests script --------------------------------------------------------------------

    def fail(self, command: str, times: int, stderr: str = UNREACHABLE, code: int = 1) -> None:
        """Make the next `times` calls of a command fail with this exit code and words."""
        self.failures[command] += [(code, stderr)] * times

    def requeue(self, job_id: str) -> None:
        """SLURM requeues the job (preemption, a node failure): queued again, then a new run."""
        job = self.jobs[job_id]
        job.state = "PENDING"
        job.steps = [(self.clock.now + delay, step) for delay, step in self.life]

    def lose(self, job_id: str, state: str = "NODE_FAIL", reason: str = "NodeFail") -> None:
        """The job vanishes from the queue without its driver writing anything (a node died)."""
        job = self.jobs[job_id]
        job.state, job.reason, job.exit_code, job.purged, job.steps = state, reason, "0:9", True, []

    def die_before_script(self, job_id: str, code: int = 127) -> None:
        """The batch shell fails before the driver writes anything (an interpreter the nodes
        do not have: exit 127): squeue forgets it, only sacct and scontrol know it."""
        job = self.jobs[job_id]
        job.state, job.reason, job.exit_code = "FAILED", "NonZeroExitCode", f"{code}:0"
        job.purged, job.steps = True, []

    def forget(self, job_id: str) -> None:
        """slurmctld drops the ended job (MinJobAge): only sacct, if any, still knows it."""
        self.jobs[job_id].forgotten = True

    def advance(self, now: float) -> None:
        """Run every step that is due."""
        for job in self.jobs.values():
            while job.steps and job.steps[0][0] <= now:
                _, step = job.steps.pop(0)
                self._step(job, step)

    # ---- the job's side -----------------------------------------------------------------------

    def _write(self, job: FakeJob, name: str, text: str, append: bool = False) -> None:
        path = job.log_dir / name
        if append:
            with path.open("a") as sink:
                sink.write(text)
        else:
            path.write_text(text)

    def _event(self, job: FakeJob, line: str) -> None:
        self._write(job, "events.log", f"00:00:00.000 {line}\n", append=True)

    def _step(self, job: FakeJob, step: str) -> None:
        if step.startswith("reason:"):
            job.reason = step.split(":", 1)[1]  # why it still waits, as squeue's %r says
        elif step == "start":
            job.state, job.runs, job.reason = "RUNNING", job.runs + 1, "None"
            job.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write(job, "events.log", "")
            self._write(job, "state", "starting\n")
            with job.driver_log.open("a") as sink:
                sink.write(f"run {job.runs} started\n")
        elif step == "prepare":
            self._write(job, "state", "preparing\n")
            for node in self.nodes:
                self._event(job, f"node node={node} rank=?")
        elif step == "load":
            self._write(job, "state", "loading\n")
            for rank, node in enumerate(self.nodes):
                self._event(job, f"rank-started node={node} rank={rank}")
        elif step == "ready":
            url = f"http://{self.nodes[0]}:30000"
            self._write(job, "endpoint.json", json.dumps(
                {"url": url, "head": self.nodes[0], "head_ip": "10.0.0.1", "port": 30000,
                 "model": "m", "nodes": self.nodes}))
            self._event(job, f"ready node={self.nodes[0]} rank=0 url={url}")
            self._write(job, "state", "ready\n")
            with job.driver_log.open("a") as sink:
                sink.write(f"ready: {url}\n")
        elif step == "fail":
            self._event(job, f"rank-exit node={self.nodes[-1]} rank=1 code=1")
            self._write(job, "state", "failed\n")
            job.state, job.exit_code, job.reason = "FAILED", "1:0", "NonZeroExitCode"
            job.steps = [(self.clock.now + 1.0, "purge")]
        elif step == "refuse":
            # A node step refuses the user's GPUS, as node_prepare.sh.j2 does; the driver fails.
            self._event(job, f"node node={self.nodes[0]} rank=0 ip=10.0.0.1")
            self._event(job, f"gpus-refused node={self.nodes[0]} rank=0 detail=GPUS=9 names "
                             "GPU 9, which SLURM did not grant (granted: 0,1)")
            self._event(job, f"phase-end node={self.nodes[0]} rank=0 name=prepare code=1")
            self._write(job, "state", "failed\n")
            job.state, job.exit_code, job.reason = "FAILED", "1:0", "NonZeroExitCode"
            job.steps = [(self.clock.now + 1.0, "purge")]
        elif step == "purge":
            job.purged = True

    def _scancel(self, job: FakeJob) -> None:
        """SLURM signals the driver; it ends its ranks, each node says so, then it exits."""
        if job.state == "RUNNING":
            for rank, node in enumerate(self.nodes):
                self._event(job, f"rank-exit node={node} rank={rank} code=143 stopped=1")
            self._write(job, "state", "stopped\n")
        job.state, job.exit_code, job.reason, job.steps = "CANCELLED", "0:15", "None", []
        job.steps = [(self.clock.now + 0.5, "purge")]

    # ---- the commands -------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None
            ) -> CommandResult:
        """Answer sbatch, squeue, scancel and sacct from the table; the rest runs here."""
        argv = tuple(argv)
        self.calls.append(argv)
        handler = getattr(self, f"_cmd_{argv[0]}", None)
        if handler is None:
            if argv[0] == "id":
                return CommandResult(argv, 0, f"{os.getuid()}\n", "")
            return self._files.run(argv, check=check, input=input, timeout=timeout, env=env)
        result: CommandResult = handler(argv)
        return result

    def _cmd_curl(self, argv: tuple[str, ...]) -> CommandResult:
        # The metrics reader's curl: no server answers in a unit test.
        return CommandResult(argv, 7, "", "curl: (7) Failed to connect\n")

    def _failure(self, argv: tuple[str, ...]) -> CommandResult | None:
        queued = self.failures.get(argv[0]) or []
        if not queued:
            return None
        code, stderr = queued.pop(0)
        return CommandResult(argv, code, "", stderr)

    def _cmd_sbatch(self, argv: tuple[str, ...]) -> CommandResult:
        failed = self._failure(argv)
        if failed:
            return failed
        job_id = str(self._next_id)
        self._next_id += 1
        log_root = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--output="))
        log_dir = Path(log_root).parent / job_id
        job = FakeJob(job_id, log_dir, argv, self.clock.now,
                      driver_log=Path(log_root.replace("%j", job_id)))
        job.steps = [(self.clock.now + delay, step) for delay, step in self.life]
        self.jobs[job_id] = job
        return CommandResult(argv, 0, f"{job_id}\n", "")

    def _cmd_squeue(self, argv: tuple[str, ...]) -> CommandResult:
        failed = self._failure(argv)
        if failed:
            return failed
        job = self.jobs.get(argv[argv.index("-j") + 1])
        if job is None or job.purged:
            return CommandResult(argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n")
        fields = {"%T": job.state, "%r": job.reason}
        return CommandResult(argv, 0, "|".join(
            fields[word] for word in argv[argv.index("-o") + 1].split("|")) + "\n", "")

    def _cmd_scontrol(self, argv: tuple[str, ...]) -> CommandResult:
        failed = self._failure(argv)
        if failed:
            return failed
        job = self.jobs.get(argv[-1])
        if job is None or job.forgotten:
            return CommandResult(argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n")
        # As `scontrol show job -o` prints it, trimmed to the fields around the ones read.
        return CommandResult(argv, 0, (
            f"JobId={job.job_id} JobName=sglang UserId=u(1000) JobState={job.state} "
            f"Reason={job.reason} Dependency=(null) ExitCode={job.exit_code} "
            f"NodeList=node1\n"), "")

    def _cmd_scancel(self, argv: tuple[str, ...]) -> CommandResult:
        failed = self._failure(argv)
        if failed:
            return failed
        job = self.jobs.get(argv[1])
        if job is not None and not job.purged:
            self._scancel(job)
        return CommandResult(argv, 0, "", "")

    def _cmd_sacct(self, argv: tuple[str, ...]) -> CommandResult:
        if not self.accounting:
            return CommandResult(argv, 1, "", NO_ACCOUNTING)
        failed = self._failure(argv)
        if failed:
            return failed
        job = self.jobs.get(argv[argv.index("-j") + 1])
        row = f"{job.state}|{job.exit_code}|{job.reason}\n" if job else ""
        return CommandResult(argv, 0, row, "")

    # ---- files, as LocalTransport -----------------------------------------------------------

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """On disk."""
        self._files.write_text(path, text, mode)

    def read_text(self, path: str) -> str:
        """From disk."""
        return self._files.read_text(path)

    def read_bytes_from(self, path: str, offset: int) -> bytes:
        """From disk."""
        return self._files.read_bytes_from(path, offset)

    def exists(self, path: str) -> bool:
        """On disk."""
        return self._files.exists(path)

    def makedirs(self, path: str) -> None:
        """On disk, private (as the workspace's job directories are)."""
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)

    def home(self) -> str:
        """The test's root."""
        return str(self.root)

    def describe(self) -> str:
        """For messages."""
        return self.where

    def open_stream(self, host: str, port: int, timeout: float | None = None) -> Stream:
        """No network in unit tests."""
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> FakeSlurm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
