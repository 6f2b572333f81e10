"""Resolve a host the way OpenSSH would: ~/.ssh/config aliases, HostName, User, Port,
IdentityFile, ProxyJump chains and ProxyCommand."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from slurm_sglang.transport.base import SSHConfigError

DEFAULT_PORT = 22
# Key files OpenSSH tries when no IdentityFile is configured, in its order.
DEFAULT_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk")
_MAX_JUMPS = 8


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to open one SSH connection, jumps included."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    jumps: tuple[HostSpec, ...] = field(default=())
    proxy_command: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """The name this host has in known_hosts: host, or [host]:port off port 22."""
        return self.hostname if self.port == DEFAULT_PORT else f"[{self.hostname}]:{self.port}"


def split_destination(destination: str) -> tuple[str | None, str, int | None]:
    """Split '[user@]host[:port]' (IPv6 in brackets, or 'ssh://...') into its parts."""
    text = destination.removeprefix("ssh://")
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _parse_port(rest[1:], destination)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(port_text, destination)
    else:
        host = text
    if not host:
        raise SSHConfigError(f"no host in SSH destination {destination!r}")
    return user or None, host, port


def load_config(config_path: str | os.PathLike[str]) -> paramiko.SSHConfig:
    """Parse an ssh_config file; a missing file is an empty configuration."""
    path = Path(config_path).expanduser()
    if not path.exists():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (paramiko.ConfigParseError, OSError) as error:
        raise SSHConfigError(f"cannot read SSH config {path}: {error}") from None


def resolve_host(
    destination: str,
    config: paramiko.SSHConfig,
    *,
    key_dir: str | os.PathLike[str],
    user: str | None = None,
    port: int | None = None,
    identity_file: str | os.PathLike[str] | None = None,
    depth: int = 0,
) -> HostSpec:
    """Resolve destination through config; explicit user/port/identity_file win over it."""
    if depth > _MAX_JUMPS:
        raise SSHConfigError(f"ProxyJump chain longer than {_MAX_JUMPS} hops at {destination!r}")
    given_user, alias, given_port = split_destination(destination)
    entry = config.lookup(alias)
    hostname = str(entry.get("hostname", alias))
    resolved_port = port or given_port or _parse_port(str(entry.get("port", DEFAULT_PORT)), alias)
    resolved_user = user or given_user or str(entry.get("user") or getpass.getuser())

    identity_files: list[str] = []
    if identity_file is not None:
        identity_files.append(str(Path(identity_file).expanduser()))
    configured: list[str] = list(entry.get("identityfile") or [])
    identity_files += [str(Path(path).expanduser()) for path in configured]
    if not configured:
        identity_files += [
            str(Path(key_dir).expanduser() / name)
            for name in DEFAULT_KEY_NAMES
            if (Path(key_dir).expanduser() / name).exists()
        ]

    jumps: tuple[HostSpec, ...] = ()
    proxy_jump = str(entry.get("proxyjump", "none"))
    if proxy_jump.lower() != "none":
        jumps = tuple(
            resolve_host(hop.strip(), config, key_dir=key_dir, depth=depth + 1)
            for hop in proxy_jump.split(",")
            if hop.strip()
        )
    proxy_command = entry.get("proxycommand")
    if proxy_command is not None and str(proxy_command).lower() == "none":
        proxy_command = None
    if jumps and proxy_command:
        # OpenSSH uses whichever comes first in the file; paramiko cannot tell us which did.
        raise SSHConfigError(f"{alias}: both ProxyJump and ProxyCommand are set; keep one")
    return HostSpec(
        alias=alias,
        hostname=hostname,
        port=resolved_port,
        user=resolved_user,
        identity_files=tuple(dict.fromkeys(identity_files)),
        jumps=jumps,
        proxy_command=str(proxy_command) if proxy_command else None,
    )


def _parse_port(text: str, context: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise SSHConfigError(f"bad port {text!r} for {context!r}") from None
    if not 0 < port < 65536:
        raise SSHConfigError(f"port {port} out of range for {context!r}")
    return port
