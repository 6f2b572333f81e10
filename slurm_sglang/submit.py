"""Submission and SLURM queries: submitit locally, sbatch over the SSH transport remotely."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slurm_sglang.errors import ClusterError, UserInputError
from slurm_sglang.jobs import JobRecord
from slurm_sglang.profile import ClusterProfile, check_name
from slurm_sglang.transport import Transport
from slurm_sglang.transport.base import raise_for_result

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def job_env(entries: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """--env NAME=VALUE entries, or NAME alone for environ's value (tokens stay off command
    lines), as the job's extra environment."""
    env: dict[str, str] = {}
    for entry in entries:
        name, has_value, value = entry.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserInputError(f"--env {entry!r}: {name!r} is not a variable name")
        if not has_value:
            if name not in environ:
                raise UserInputError(f"--env {name}: not set here; pass {name}=VALUE")
            value = environ[name]
        env[name] = value
    return env


def time_minutes(text: str) -> int:
    """SLURM's time formats (MM, HH:MM:SS, D-HH[:MM[:SS]]) as whole minutes, rounded up."""
    match = _TIME.match(text.strip())
    if not match:
        raise UserInputError(f"--time: {text!r} is not a SLURM time (e.g. 04:00:00 or 1-00:00:00)")
    days, first, second, third = match.groups()
    if days is not None:
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:
        hours, minutes, seconds = int(first), int(second), int(third)
    elif second is not None:
        hours, minutes, seconds = 0, int(first), int(second)
    else:
        hours, minutes, seconds = 0, int(first), 0
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise UserInputError(f"--time: {text!r} is shorter than a minute")
    return total


@dataclass(frozen=True)
class SubmitRequest:
    """Everything one submission needs, already validated."""

    profile: ClusterProfile
    cluster: str
    script_text: str
    script_args: tuple[str, ...]
    nodes: int
    workspace: str
    job_name: str = "sglang"
    time: str = ""
    partition: str = ""
    # Variables for the job's environment (HF_TOKEN, SGLANG_*): over SSH they travel through the
    # transport's env file, never on a command line.
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Both reach submitit's batch script as #SBATCH lines: a newline there adds lines.
        for option, value in (("--name", self.job_name), ("--partition", self.partition)):
            for part in value.split(",") if option == "--partition" else (value,):
                try:
                    check_name(part, option)
                except ValueError as error:
                    raise UserInputError(str(error)) from None
        if self.time:
            time_minutes(self.time)


class ServeCommand:
    """The function submitit runs in the batch shell: the rendered driver, nothing else."""

    def __init__(self, argv: Sequence[str], requeue: bool) -> None:
        self.argv = list(argv)
        self.requeue = requeue
        self._driver: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The running driver stays behind: a requeued job starts its own.
        return {"argv": self.argv, "requeue": self.requeue}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["argv"], state["requeue"])  # type: ignore[misc]

    def __call__(self) -> int:
        """Run run.sbatch; its exit code becomes the job's."""
        self._driver = subprocess.Popen(self.argv)
        code = self._driver.wait()
        if code:
            raise RuntimeError(f"run.sbatch exited with code {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or time limit, resubmit the same command when the profile asks for it.

        The driver is stopped first, so it removes its containers on every node while the
        allocation still exists; SLURM would otherwise kill it outright at the requeue.
        """
        if not self.requeue:
            return None
        if self._driver is not None and self._driver.poll() is None:
            self._driver.terminate()
            # This runs in a signal handler that interrupted __call__'s wait, which holds
            # Popen's wait lock: watch the process itself instead of waiting on it.
            deadline = time.monotonic() + 60
            while _process_alive(self._driver.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _process_alive(pid: int) -> bool:
    """True while the process runs (a zombie, already exited, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _script_path(workspace: str) -> str:
    from slurm_sglang.render import support_digest

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    # A directory per version of the support files beside the script: a job still queued keeps
    # the launch_plan.py it was rendered with when a newer slurm-sglang submits to the workspace.
    return f"{workspace}/.slurm-sglang/scripts/{support_digest()}/run-{stamp}.sbatch"


def submit_local(request: SubmitRequest) -> JobRecord:
    """Write the script on shared storage and submit it with submitit's SlurmExecutor."""
    import submitit

    from slurm_sglang.render import write_script

    slurm = request.profile.slurm
    script = Path(_script_path(request.workspace))
    # With the support files (launch_plan.py, the NCCL check) beside it, as the script needs.
    write_script(request.script_text, script)
    log_root = Path(request.workspace) / request.profile.paths.logs
    with _private_umask():
        log_root.mkdir(parents=True, exist_ok=True)
    check_own_directory(log_root)
    folder = log_root / "%j" / "submitit"
    # `exec` makes submitit's python the batch shell itself, so the time-limit warning
    # (--signal=B:USR2) reaches its checkpoint handler instead of killing a bash parent.
    executor = submitit.SlurmExecutor(
        folder=folder, max_num_timeout=3 if slurm.requeue else 0,
        python=f"exec {shlex.quote(sys.executable)}")
    parameters: dict[str, Any] = {
        "job_name": request.job_name,
        "nodes": request.nodes,
        "ntasks_per_node": 1,
        "use_srun": False,
        "stderr_to_stdout": True,
        "signal_delay_s": 120,
        "time": time_minutes(request.time or slurm.time or "1-00:00:00"),
        # The batch shell itself must get the warning signal: submitit's python runs there.
        "additional_parameters": {"signal": "B:USR2@120"},
    }
    for key, value in (("partition", request.partition or slurm.partition),
                       ("account", slurm.account), ("qos", slurm.qos),
                       ("constraint", slurm.constraint)):
        if value:
            parameters[key] = value
    if slurm.gpus_per_node and slurm.gres_style == "gpus-per-node":
        parameters["gpus_per_node"] = slurm.gpus_per_node
    elif slurm.gpus_per_node and slurm.gres_style == "gres":
        parameters["gres"] = f"gpu:{slurm.gpus_per_node}"
    if slurm.exclusive:
        parameters["exclusive"] = True
    for directive in slurm.extra_directives:
        key, _, value = directive[2:].partition("=")
        parameters["additional_parameters"][key] = value or True
    executor.update_parameters(**parameters)
    command = ServeCommand(["bash", str(script), *request.script_args], slurm.requeue)
    # submitit's pickle, unpickled when the job starts, and the job's directory: the user's only.
    with _environment(request.env), _private_umask():
        try:
            job = executor.submit(command)
        except submitit.core.utils.FailedJobError as error:
            # submitit's sbatch call failed; its message is sbatch's stderr.
            raise sbatch_refusal(str(error), 1) from None
        except submitit.core.utils.FailedSubmissionError as error:
            # sbatch exited 0 but named no job: a job may exist that nothing here tracks.
            said = " ".join(str(error).split("\nJob instance")[0].split())
            raise ClusterError(f"{said}; find the job with squeue --me and scancel it if it is "
                               "not yours to keep") from None
    log_dir = Path(request.workspace) / request.profile.paths.logs / str(job.job_id)
    return JobRecord(
        job_id=str(job.job_id), cluster=request.cluster, log_dir=str(log_dir),
        script=str(script), sglang_args=list(request.script_args), submitted_at=_now(),
        driver_log=str(job.paths.stdout), name=request.job_name,
    )


def sbatch_refusal(stderr: str, code: int, where: str = "") -> UserInputError:
    """sbatch refusing a job (a partition, account, QOS or size the cluster does not allow):
    the user's input, as one line with sbatch's reason."""
    reason = (stderr.strip().splitlines() or [f"exit {code}"])[-1]
    reason = re.sub(r"^(sbatch: )?(error: )?", "", reason)
    return UserInputError(f"sbatch{where} refused the job: {reason}")


def check_own_directory(path: Path) -> None:
    """Refuse a directory that is a symbolic link, another user's, or writable by others.

    Job ids are predictable: whoever can create ``logs/<next id>`` first receives the job's
    files, submitit's pickle (run when the job starts) among them.
    """
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UserInputError(f"--workspace: {path} is not a directory (a symbolic link?): "
                             "remove it or choose another --workspace")
    if info.st_uid != os.getuid():
        raise UserInputError(f"--workspace: {path} belongs to uid {info.st_uid}, not to you: "
                             "choose a --workspace of your own")
    if info.st_mode & 0o022:
        raise UserInputError(f"--workspace: {path} is writable by group or others (mode "
                             f"{info.st_mode & 0o7777:o}): chmod go-w {path}")


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """umask 077 while the block runs: what it creates may hold secrets."""
    saved = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(saved)


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ plus env while submitit runs sbatch, which exports it to the job."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def submit_remote(request: SubmitRequest, transport: Transport, host: str) -> JobRecord:
    """Upload the script to the remote workspace and run sbatch --parsable there."""
    from slurm_sglang.render import SUPPORT_DIR_NAME, support_files

    script = _script_path(request.workspace)
    transport.makedirs(str(Path(script).parent))
    # The script runs launch_plan.py (and the NCCL check) from slurm-sglang/ beside it.
    support = f"{Path(script).parent}/{SUPPORT_DIR_NAME}"
    for relative, text in support_files():
        path = f"{support}/{relative}"
        # Left as they were when unchanged, so that python's compiled launch_plan.py stays valid.
        if transport.exists(path) and transport.read_text(path) == text:
            continue
        transport.makedirs(str(Path(path).parent))
        transport.write_text(path, text)
    transport.write_text(script, request.script_text, mode=0o755)
    log_root = f"{request.workspace}/{request.profile.paths.logs}"
    transport.makedirs(log_root)
    options = [f"--nodes={request.nodes}", f"--job-name={request.job_name}",
               f"--chdir={request.workspace}", f"--output={log_root}/slurm-%j.out"]
    if request.time:
        options.append(f"--time={request.time}")
    if request.partition:
        options.append(f"--partition={request.partition}")
    # sbatch exports its own environment to the job (--export=ALL), so env reaches the ranks.
    result = transport.run(["sbatch", "--parsable", *options, script, *request.script_args],
                           env=request.env or None, check=False)
    if result.returncode not in (0, 127):
        raise sbatch_refusal(result.stderr, result.returncode, f" on {host}")
    raise_for_result(result, host)
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise ClusterError(f"sbatch on {host} answered {result.stdout.strip()!r}, not a job id")
    return JobRecord(
        job_id=job_id, cluster=request.cluster, log_dir=f"{log_root}/{job_id}", script=script,
        sglang_args=list(request.script_args), submitted_at=_now(), host=host,
        driver_log=f"{log_root}/slurm-{job_id}.out", name=request.job_name,
    )


def python_for_nodes() -> str:
    """The interpreter submitit starts on the batch node: the submitting one, on shared storage."""
    return sys.executable
