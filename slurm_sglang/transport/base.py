"""What every transport shares: the command result, the errors, and the Transport protocol."""

from __future__ import annotations

import errno
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# The base of every error a transport raises (errors.py); its str is one line for the user.
from slurm_sglang.errors import TransportError as TransportError

# Hints for commands this toolkit runs on a cluster, keyed by program name.
_MISSING_COMMAND_HINTS = {
    **{
        name: "is SLURM's client installed there?"
        for name in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "srun", "salloc", "sinfo")
    },
    "podman": "is podman installed there?",
    "docker": "is docker installed there?",
    "enroot": "is enroot installed there?",
    "apptainer": "is apptainer installed there?",
    "curl": "is curl installed there?",
}
_GENERIC_HINT = "is it installed and on the PATH of a non-interactive login there?"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: its argv, exit code and decoded output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str




class CommandError(TransportError):
    """A command exited non-zero; carries the command, exit code, stdout and stderr."""

    def __init__(self, result: CommandResult, where: str) -> None:
        self.argv = result.argv
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.where = where
        super().__init__(self._line())

    @property
    def command(self) -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.argv)

    def _line(self) -> str:
        last = _last_line(self.stderr) or _last_line(self.stdout)
        detail = f": {last}" if last else ""
        return f"{self.command} failed on {self.where} (exit {self.returncode}){detail}"


class CommandNotFoundError(CommandError):
    """The program of a command does not exist where it ran (exit 127)."""

    def _line(self) -> str:
        program = self.argv[0] if self.argv else "?"
        hint = _MISSING_COMMAND_HINTS.get(program.rsplit("/", 1)[-1], _GENERIC_HINT)
        return f"{program} not found on {self.where}: {hint}"


class CommandTimeoutError(TransportError):
    """A command ran past its timeout."""

    def __init__(self, argv: Sequence[str], timeout: float, where: str) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        super().__init__(f"{shlex.join(argv)} on {where} still running after {timeout:g}s: gave up")


class ConnectError(TransportError):
    """The host could not be reached at all."""


class HostResolutionError(ConnectError):
    """The host name does not resolve (DNS)."""


class ConnectRefusedError(ConnectError):
    """Nothing listens on the SSH port of the host."""


class ConnectTimeoutError(ConnectError):
    """The host did not answer in time."""


class AuthError(TransportError):
    """The server refused every key offered."""


class HostKeyError(TransportError):
    """The server's host key could not be verified."""


class UnknownHostKeyError(HostKeyError):
    """The host is not in known_hosts yet."""


class HostKeyChangedError(HostKeyError):
    """The host presented a key different from the one recorded in known_hosts."""


class SSHConfigError(TransportError):
    """The SSH client configuration cannot be used."""


class FileAccessError(TransportError):
    """A file operation failed; carries the path and where."""

    def __init__(self, message: str, path: str) -> None:
        self.path = path
        super().__init__(message)


class FileMissingError(FileAccessError):
    """The file or one of its parent directories does not exist."""


class FilePermissionError(FileAccessError):
    """The user may not read or write that path."""


class DiskFullError(FileAccessError):
    """The disk is full or the user's quota is exhausted."""


class TunnelError(TransportError):
    """A tunnel could not listen or could not reach its target."""


@runtime_checkable
class Stream(Protocol):
    """A connected byte stream: a socket, or an SSH channel."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self, size: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """One chokepoint for commands, files and TCP streams, here or on a remote host."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv without a shell, env added to the environment; raise if check and it fails."""
        ...

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write text to path atomically (temporary file, then rename)."""
        ...

    def read_text(self, path: str) -> str:
        """Return the whole content of path as text."""
        ...

    def read_bytes_from(self, path: str, offset: int) -> bytes:
        """Return the bytes of path from offset to its current end (for following logs)."""
        ...

    def exists(self, path: str) -> bool:
        """Whether path exists."""
        ...

    def makedirs(self, path: str) -> None:
        """Create path and its parents; no error if it exists."""
        ...

    def home(self) -> str:
        """The user's home directory where commands run."""
        ...

    def describe(self) -> str:
        """Where commands run, for messages: 'local' or 'ssh user@host:port'."""
        ...

    def open_stream(self, host: str, port: int, timeout: float | None = None) -> Stream:
        """Open a TCP stream to host:port as seen from where commands run."""
        ...

    def close(self) -> None:
        """Release connections; the transport may not be used afterwards."""
        ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc_info: object) -> None: ...


def check_env_names(env: Mapping[str, str]) -> None:
    """Reject environment names a POSIX shell could not export."""
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")


def raise_for_result(result: CommandResult, where: str) -> None:
    """Raise the CommandError that fits a non-zero result."""
    if result.returncode == 127:
        raise CommandNotFoundError(result, where)
    if result.returncode != 0:
        raise CommandError(result, where)


def file_error(code: int | None, path: str, where: str, reason: str) -> FileAccessError:
    """The FileAccessError for an errno, with a one-line message."""
    if code in (errno.ENOENT, errno.ENOTDIR):
        return FileMissingError(f"{path} on {where}: no such file or directory", path)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FilePermissionError(
            f"{path} on {where}: permission denied (check its owner and mode)", path
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{path} on {where}: disk full or quota exceeded (check with `quota -s` or `df -h`)",
            path,
        )
    return FileAccessError(f"{path} on {where}: {reason}", path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
