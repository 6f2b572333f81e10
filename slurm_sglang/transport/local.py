"""LocalTransport: commands through subprocess (argument lists, never a shell), files on disk."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence

from slurm_sglang.launch_plan import replace_file
from slurm_sglang.transport.base import (
    CommandResult,
    CommandTimeoutError,
    Stream,
    TunnelError,
    check_env_names,
    file_error,
    raise_for_result,
)

logger = logging.getLogger("slurm_sglang.transport")


def run_local(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """The package's one way to run a program here: argv without a shell, output captured,
    logged; env is added to this process's environment. A missing program is exit 127 with a
    shell's words; a timeout raises CommandTimeoutError. LocalTransport and the sandbox use it.
    """
    argv = tuple(argv)
    if not argv:
        raise ValueError("empty command")
    full_env = None
    if env:
        check_env_names(env)
        full_env = {**os.environ, **env}
    logger.debug(
        "local: %s%s", shlex.join(argv), f" (env: {', '.join(sorted(env))})" if env else ""
    )
    try:
        completed = subprocess.run(argv, input=input, capture_output=True, text=True,
                                   timeout=timeout, env=full_env, check=False)
    except FileNotFoundError:
        # The same code and words a shell gives, so callers see one behaviour everywhere.
        return CommandResult(argv, 127, "", f"{argv[0]}: command not found\n")
    except subprocess.TimeoutExpired:
        raise CommandTimeoutError(argv, timeout or 0.0, LocalTransport.where) from None
    return CommandResult(argv, completed.returncode, completed.stdout, completed.stderr)


def run_local_pipeline(first: Sequence[str], second: Sequence[str]) -> CommandResult:
    """first | second, here, without a shell: second's exit code and output; a failed first
    stage is reported as second's failure with first's argv (a pipefail)."""
    logger.debug("local: %s | %s", shlex.join(first), shlex.join(second))
    head = subprocess.Popen(list(first), stdout=subprocess.PIPE)
    tail = subprocess.run(list(second), stdin=head.stdout, capture_output=True, text=True,
                          check=False)
    if head.stdout is not None:
        head.stdout.close()
    if head.wait() != 0 and tail.returncode == 0:
        return CommandResult(tuple(first), head.returncode, "", f"{first[0]} failed\n")
    return CommandResult(tuple(second), tail.returncode, tail.stdout, tail.stderr)


class LocalTransport:
    """Runs commands and touches files on this machine."""

    where = "this machine"

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv without a shell; env is added to this process's environment."""
        result = run_local(argv, input=input, timeout=timeout, env=env)
        if check:
            raise_for_result(result, self.where)
        return result

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write text atomically: a temporary file beside path, then rename over it."""
        target = os.path.expanduser(path)
        logger.debug("local: write %s (%d bytes)", target, len(text))
        with _file_errors(target):
            replace_file(target, text, mode)

    def read_text(self, path: str) -> str:
        """Return the content of path as text."""
        target = os.path.expanduser(path)
        with _file_errors(target), open(target, encoding="utf-8") as source:
            return source.read()

    def read_bytes_from(self, path: str, offset: int) -> bytes:
        """Return the bytes of path from offset to its current end."""
        target = os.path.expanduser(path)
        with _file_errors(target), open(target, "rb") as source:
            source.seek(offset)
            return source.read()

    def exists(self, path: str) -> bool:
        """Whether path exists."""
        return os.path.exists(os.path.expanduser(path))

    def makedirs(self, path: str) -> None:
        """Create path and its parents."""
        target = os.path.expanduser(path)
        with _file_errors(target):
            os.makedirs(target, exist_ok=True)

    def home(self) -> str:
        """This user's home directory."""
        return os.path.expanduser("~")

    def describe(self) -> str:
        """Always 'local'."""
        return "local"

    def open_stream(self, host: str, port: int, timeout: float | None = None) -> Stream:
        """A plain TCP connection from this machine."""
        try:
            connection = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise TunnelError(f"cannot reach {host}:{port} from this machine: {error}") from None
        connection.settimeout(None)
        return connection

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _file_errors(path: str, where: str = "this machine") -> Iterator[None]:
    """Turn OSError into the FileAccessError subclass that names the cause."""
    try:
        yield
    except OSError as error:
        raise file_error(error.errno, path, where, error.strerror or str(error)) from None
