"""SSHTransport: commands, files (SFTP) and TCP streams on a remote host through paramiko.

One SSH connection per transport, opened on first use and shared by every command, file
operation and tunnelled stream until close()."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import paramiko

from slurm_sglang.transport.base import (
    CommandResult,
    CommandTimeoutError,
    ConnectError,
    FileAccessError,
    Stream,
    TunnelError,
    check_env_names,
    file_error,
    raise_for_result,
)
from slurm_sglang.transport.ssh_config import HostSpec, load_config, resolve_host
from slurm_sglang.transport.ssh_connection import Connector

logger = logging.getLogger("slurm_sglang.transport")

# Opens the 0600 environment file named by $0, deletes it and its private directory (before
# sourcing, so an env PATH cannot hide rm), sources it, then execs the real command: values
# never appear in any command line, only in the environment of the process.
_ENV_LOADER = (
    'exec 3<"$0" && rm -f -- "$0" && rmdir -- "${0%/*}" && . /dev/fd/3 && exec 3<&- && exec "$@"'
)


class SSHTransport:
    """Runs commands and touches files on a host reached over SSH (paramiko)."""

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int | None = None,
        identity_file: str | os.PathLike[str] | None = None,
        trust_new_host: bool = False,
        config_path: str | os.PathLike[str] = "~/.ssh/config",
        known_hosts: str | os.PathLike[str] = "~/.ssh/known_hosts",
        use_agent: bool = True,
        connect_timeout: float = 15.0,
    ) -> None:
        config_file = Path(config_path).expanduser()
        self.spec: HostSpec = resolve_host(
            host,
            load_config(config_file),
            key_dir=config_file.parent,
            user=user,
            port=port,
            identity_file=identity_file,
        )
        self.where = self.spec.alias
        self._connector = Connector(
            known_hosts=Path(known_hosts).expanduser(),
            trust_new_host=trust_new_host,
            use_agent=use_agent,
            connect_timeout=connect_timeout,
        )
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None

    # Connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (it opens on first use otherwise); raises a clear error."""
        self._transport()

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._clients:
                current = self._clients[-1].get_transport()
                if current is not None and current.is_active():
                    return current
                logger.debug("%s: connection lost, reconnecting", self.describe())
                self._close_clients()
            self._clients = self._connector.open_chain(self.spec)
            opened = self._clients[-1].get_transport()
            assert opened is not None
            return opened

    def _open_channel(
        self, open_one: Callable[[paramiko.Transport], paramiko.Channel]
    ) -> paramiko.Channel:
        """open_one on the connection; once more on a fresh one if the old one died unnoticed."""
        transport = self._transport()
        try:
            return open_one(transport)
        except paramiko.ChannelException:
            raise  # the server answered: the connection is fine, the request was refused
        except (paramiko.SSHException, EOFError, OSError):
            # Nothing was sent through the channel yet, so a second try cannot repeat anything.
            logger.debug("%s: connection dropped, reconnecting", self.describe())
            with self._lock:
                if self._clients and self._clients[-1].get_transport() is transport:
                    self._close_clients()
            return open_one(self._transport())

    # Commands ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv remotely (quoted once with shlex.join); env goes through a 0600 file."""
        argv = tuple(argv)
        if not argv:
            raise ValueError("empty command")
        command = shlex.join(argv)
        env_file = None
        if env:
            check_env_names(env)
            env_file = self._upload_env(env)
            command = shlex.join(("sh", "-c", _ENV_LOADER, env_file, *argv))
        logger.debug(
            "%s: %s%s",
            self.describe(),
            shlex.join(argv),
            f" (env: {', '.join(sorted(env))})" if env else "",
        )
        try:
            result = self._exec(argv, command, input, timeout)
        except (paramiko.SSHException, EOFError) as error:
            raise ConnectError(
                f"SSH connection to {self.where} failed while running {shlex.join(argv)}: {error}"
            ) from None
        finally:
            if env_file is not None:
                self._remove_quietly(env_file)
        if check:
            raise_for_result(result, self.where)
        return result

    def _exec(
        self, argv: tuple[str, ...], command: str, input: str | None, timeout: float | None
    ) -> CommandResult:
        channel = self._open_channel(
            lambda transport: transport.open_session(timeout=self._connect_timeout)
        )
        try:
            channel.exec_command(command)
            stdout = bytearray()
            stderr = bytearray()
            readers = [
                threading.Thread(target=_drain, args=(channel.makefile("rb"), stdout), daemon=True),
                threading.Thread(
                    target=_drain, args=(channel.makefile_stderr("rb"), stderr), daemon=True
                ),
            ]
            for reader in readers:
                reader.start()
            if input is not None:
                channel.sendall(input.encode())
            # EOF on stdin, as with a closed pipe locally: nothing waits on a terminal.
            channel.shutdown_write()
            deadline = None if timeout is None else time.monotonic() + timeout
            if not channel.status_event.wait(timeout):
                raise CommandTimeoutError(argv, timeout or 0.0, self.where)
            for reader in readers:
                # A background child holding stdout open keeps a reader busy past the exit.
                reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if reader.is_alive():
                    raise CommandTimeoutError(argv, timeout or 0.0, self.where)
            returncode = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(
            argv,
            returncode,
            stdout.decode("utf-8", errors="replace"),
            stderr.decode("utf-8", errors="replace"),
        )

    def _upload_env(self, env: Mapping[str, str]) -> str:
        """Write env as sh assignments into a fresh 0700 directory; returns the file path."""
        lines = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
        with self._sftp_client() as sftp:
            directory = f"/tmp/slurm-sglang-env.{secrets.token_hex(12)}"
            # mkdir fails if the name exists, so nobody can plant this directory beforehand.
            sftp.mkdir(directory, mode=0o700)
            path = f"{directory}/env"
            with sftp.open(path, "w") as env_file:
                env_file.chmod(0o600)
                env_file.write(lines.encode())
        return path

    def _remove_quietly(self, env_file: str) -> None:
        with self._sftp_client() as sftp:
            with contextlib.suppress(OSError):
                sftp.remove(env_file)
            with contextlib.suppress(OSError):
                sftp.rmdir(posixpath.dirname(env_file))

    # Files ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sftp_client(self) -> Iterator[paramiko.SFTPClient]:
        with self._lock:
            channel = None if self._sftp is None else self._sftp.get_channel()
            if self._sftp is None or channel is None or channel.closed:
                self._sftp = self._transport().open_sftp_client()
            yield self._sftp

    def _path(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            return self.home() + path[1:]
        return path

    @contextlib.contextmanager
    def _file_errors(self, path: str, writing: bool = False) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            if error.errno is None and writing:
                # OpenSSH's sftp-server reports ENOSPC and EDQUOT as a bare "Failure".
                raise FileAccessError(
                    f"{path} on {self.where}: write failed ({error}): often a full disk or an "
                    "exhausted quota; check with `quota -s` or `df -h` there",
                    path,
                ) from None
            raise file_error(error.errno, path, self.where, str(error)) from None
        except (paramiko.SSHException, EOFError) as error:
            raise ConnectError(
                f"SSH connection to {self.where} failed while accessing {path}: {error}"
            ) from None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Upload text over SFTP to a temporary name beside path, then rename it over path."""
        target = self._path(path)
        directory, name = posixpath.split(target)
        tmp_path = posixpath.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
        logger.debug("%s: write %s (%d bytes)", self.describe(), target, len(text))
        with self._file_errors(target, writing=True), self._sftp_client() as sftp:
            try:
                with sftp.open(tmp_path, "w") as remote_file:
                    remote_file.write(text.encode())
                sftp.chmod(tmp_path, mode)
                sftp.posix_rename(tmp_path, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    sftp.remove(tmp_path)
                raise

    def read_text(self, path: str) -> str:
        """Download path over SFTP and decode it as UTF-8."""
        return self.read_bytes_from(path, 0).decode("utf-8", errors="replace")

    def read_bytes_from(self, path: str, offset: int) -> bytes:
        """Bytes of path from offset to its current end, over SFTP."""
        target = self._path(path)
        with (
            self._file_errors(target),
            self._sftp_client() as sftp,
            sftp.open(target, "rb") as remote_file,
        ):
            remote_file.seek(offset)
            return remote_file.read()

    def exists(self, path: str) -> bool:
        """Whether path exists on the remote host."""
        target = self._path(path)
        with self._file_errors(target), self._sftp_client() as sftp:
            try:
                sftp.stat(target)
            except FileNotFoundError:
                return False
            return True

    def makedirs(self, path: str) -> None:
        """Create path and its missing parents over SFTP."""
        target = posixpath.normpath(self._path(path))
        prefix = "/" if target.startswith("/") else ""
        with self._file_errors(target, writing=True), self._sftp_client() as sftp:
            for part in target.strip("/").split("/"):
                prefix = posixpath.join(prefix, part) if prefix else part
                try:
                    attributes = sftp.stat(prefix)
                except FileNotFoundError:
                    sftp.mkdir(prefix)
                    continue
                if not stat.S_ISDIR(attributes.st_mode or 0):
                    raise FileAccessError(f"{prefix} on {self.where} is not a directory", prefix)

    def home(self) -> str:
        """The remote user's home directory (where SFTP starts)."""
        if self._home is None:
            with self._sftp_client() as sftp:
                self._home = sftp.normalize(".")
        return self._home

    # Streams and lifecycle --------------------------------------------------------------

    def open_stream(self, host: str, port: int, timeout: float | None = None) -> Stream:
        """A direct-tcpip channel: a TCP connection to host:port made by the remote host."""
        try:
            return self._open_channel(
                lambda transport: transport.open_channel(
                    "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
                )
            )
        except paramiko.ChannelException as error:
            raise TunnelError(
                f"{self.where} could not connect to {host}:{port}: {error.text}"
            ) from None

    def describe(self) -> str:
        """'ssh user@host:port', the host as resolved from ~/.ssh/config."""
        return f"ssh {self.spec.user}@{self.spec.hostname}:{self.spec.port}"

    def close(self) -> None:
        """Close SFTP and every SSH connection, the jump hosts' last."""
        with self._lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            self._close_clients()

    def _close_clients(self) -> None:
        self._sftp = None  # it lives on the connection being closed
        for client in reversed(self._clients):
            client.close()
        self._clients = []

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _drain(source: paramiko.ChannelFile, sink: bytearray) -> None:
    """Read a channel stream to its end (one thread per stream, so neither blocks the other)."""
    while chunk := source.read(65536):
        sink += chunk


__all__ = ["SSHTransport"]
