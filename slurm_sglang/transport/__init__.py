"""One chokepoint for commands, files and TCP streams: here (LocalTransport) or over SSH.

Everything that runs a program or touches a file where jobs live goes through a Transport;
`transport_for` picks one from the CLI's `--ssh` value."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from slurm_sglang.transport.base import (
    AuthError,
    CommandError,
    CommandNotFoundError,
    CommandResult,
    CommandTimeoutError,
    ConnectError,
    ConnectRefusedError,
    ConnectTimeoutError,
    DiskFullError,
    FileAccessError,
    FileMissingError,
    FilePermissionError,
    HostKeyChangedError,
    HostKeyError,
    HostResolutionError,
    SSHConfigError,
    Stream,
    Transport,
    TransportError,
    TunnelError,
    UnknownHostKeyError,
)
from slurm_sglang.transport.local import LocalTransport
from slurm_sglang.transport.tunnel import Tunnel, open_tunnel

if TYPE_CHECKING:
    from slurm_sglang.transport.ssh import SSHTransport


def __getattr__(name: str) -> Any:
    # paramiko takes a fifth of a second to import: only a remote job needs it.
    if name == "SSHTransport":
        from slurm_sglang.transport.ssh import SSHTransport

        return SSHTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def transport_for(
    ssh: str | None,
    *,
    user: str | None = None,
    port: int | None = None,
    identity_file: str | os.PathLike[str] | None = None,
    trust_new_host: bool = False,
    config_path: str | os.PathLike[str] = "~/.ssh/config",
    known_hosts: str | os.PathLike[str] = "~/.ssh/known_hosts",
) -> Transport:
    """LocalTransport when ssh is None, else an SSHTransport to '[user@]host[:port]' or an alias."""
    if ssh is None:
        return LocalTransport()
    from slurm_sglang.transport.ssh import SSHTransport

    return SSHTransport(
        ssh,
        user=user,
        port=port,
        identity_file=identity_file,
        trust_new_host=trust_new_host,
        config_path=config_path,
        known_hosts=known_hosts,
    )


__all__ = [
    "AuthError",
    "CommandError",
    "CommandNotFoundError",
    "CommandResult",
    "CommandTimeoutError",
    "ConnectError",
    "ConnectRefusedError",
    "ConnectTimeoutError",
    "DiskFullError",
    "FileAccessError",
    "FileMissingError",
    "FilePermissionError",
    "HostKeyChangedError",
    "HostKeyError",
    "HostResolutionError",
    "LocalTransport",
    "SSHConfigError",
    "SSHTransport",
    "Stream",
    "Transport",
    "TransportError",
    "Tunnel",
    "TunnelError",
    "UnknownHostKeyError",
    "open_tunnel",
    "transport_for",
]
