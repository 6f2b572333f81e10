"""Open an SSH connection the way OpenSSH would: jump hosts, host key checks against
known_hosts, key authentication, and one clear error line for each way it fails."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
from pathlib import Path

import paramiko

from slurm_sglang.transport.base import (
    AuthError,
    ConnectError,
    ConnectRefusedError,
    ConnectTimeoutError,
    HostKeyChangedError,
    HostResolutionError,
    TransportError,
    UnknownHostKeyError,
)
from slurm_sglang.transport.ssh_config import HostSpec

logger = logging.getLogger("slurm_sglang.transport")

TRUST_FLAG = "--trust-new-host"
_KEEPALIVE_SECONDS = 30


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse hosts missing from known_hosts, or record them when the user said to trust them."""

    def __init__(self, trust_new_host: bool, known_hosts: Path) -> None:
        self.trust_new_host = trust_new_host
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        """Raise UnknownHostKeyError, or append the key to known_hosts when trusted."""
        described = f"{key.get_name()} {fingerprint(key)}"
        if not self.trust_new_host:
            raise UnknownHostKeyError(
                f"unknown host key for {hostname} ({described}), not in {self.known_hosts}: "
                f"check that fingerprint with the cluster's admin, then pass {TRUST_FLAG} "
                "to record it"
            )
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="ascii") as known_hosts_file:
            known_hosts_file.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        logger.warning(
            "recorded new host key for %s (%s) in %s", hostname, described, self.known_hosts
        )


class Connector:
    """Opens the chain of SSH clients (jump hosts first) that reaches one host."""

    def __init__(
        self,
        *,
        known_hosts: Path,
        trust_new_host: bool,
        use_agent: bool,
        connect_timeout: float,
    ) -> None:
        self._known_hosts = known_hosts
        self._policy = _HostKeyPolicy(trust_new_host, known_hosts)
        self._use_agent = use_agent
        self._connect_timeout = connect_timeout

    def open_chain(self, spec: HostSpec) -> list[paramiko.SSHClient]:
        """Connect to spec, through its jump hosts first; returns every client opened."""
        clients: list[paramiko.SSHClient] = []
        try:
            if spec.jumps:
                clients += self.open_chain(spec.jumps[0])
                for hop in spec.jumps[1:]:
                    clients.append(self._open_one(hop, self._tunnel_socket(clients[-1], hop)))
                clients.append(self._open_one(spec, self._tunnel_socket(clients[-1], spec)))
            elif spec.proxy_command:
                clients.append(self._open_one(spec, paramiko.ProxyCommand(spec.proxy_command)))
            else:
                clients.append(self._open_one(spec, self._dial(spec)))
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        return clients

    def _dial(self, spec: HostSpec) -> socket.socket:
        """Resolve and connect a TCP socket, telling DNS, refusal and timeout apart."""
        name = _name_for_messages(spec)
        # RFC 6761: .invalid never resolves; answer at once, without asking a DNS server.
        if spec.hostname.rstrip(".").lower().rsplit(".", 1)[-1] == "invalid":
            raise HostResolutionError(
                f"cannot resolve {name}: no such host (.invalid never exists)"
            )
        try:
            addresses = socket.getaddrinfo(spec.hostname, spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise HostResolutionError(
                f"cannot resolve {name}: {error.strerror} (check the name, your DNS or VPN, "
                "and HostName in ~/.ssh/config)"
            ) from None
        last_error: OSError | None = None
        for family, kind, protocol, _, address in addresses:
            connection = socket.socket(family, kind, protocol)
            connection.settimeout(self._connect_timeout)
            try:
                connection.connect(address)
            except OSError as error:
                connection.close()
                last_error = error
                continue
            return connection
        where = f"{name} port {spec.port}"
        if isinstance(last_error, ConnectionRefusedError):
            raise ConnectRefusedError(
                f"connection refused by {where}: no SSH server listens there (check Port)"
            )
        if isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                f"no answer from {where} within {self._connect_timeout:g}s "
                "(firewall, VPN, or a wrong host?)"
            )
        raise ConnectError(f"cannot connect to {where}: {last_error}")

    def _tunnel_socket(self, through: paramiko.SSHClient, spec: HostSpec) -> paramiko.Channel:
        """A direct-tcpip channel from a jump host to the next hop (ProxyJump)."""
        jump_transport = through.get_transport()
        assert jump_transport is not None
        try:
            return jump_transport.open_channel(
                "direct-tcpip",
                (spec.hostname, spec.port),
                ("127.0.0.1", 0),
                timeout=self._connect_timeout,
            )
        except paramiko.ChannelException as error:
            raise ConnectError(
                f"jump host could not reach {_name_for_messages(spec)} port {spec.port}: "
                f"{error.text}"
            ) from None
        except paramiko.SSHException as error:
            raise ConnectError(f"jump host could not reach {spec.hostname}: {error}") from None

    def _open_one(
        self, spec: HostSpec, sock: socket.socket | paramiko.Channel | paramiko.ProxyCommand
    ) -> paramiko.SSHClient:
        """SSH handshake, host key check and key authentication over an open socket."""
        client = paramiko.SSHClient()
        if self._known_hosts.exists():
            client.load_host_keys(str(self._known_hosts))
        client.set_missing_host_key_policy(self._policy)
        # OpenSSH skips identity files that do not exist; paramiko would fail on them.
        key_files = [path for path in spec.identity_files if os.path.isfile(path)]
        logger.debug("ssh: connecting to %s@%s:%d", spec.user, spec.hostname, spec.port)
        try:
            client.connect(
                spec.hostname,
                port=spec.port,
                username=spec.user,
                # paramiko accepts a list of paths here; its stubs say str.
                key_filename=key_files or None,  # type: ignore[arg-type]
                allow_agent=self._use_agent,
                look_for_keys=False,
                sock=sock,
                timeout=self._connect_timeout,
                banner_timeout=self._connect_timeout,
                auth_timeout=self._connect_timeout,
            )
        except BaseException as error:
            failed_in_auth = _handshake_done(client)
            client.close()
            sock.close()
            checks_done = not isinstance(
                error, TransportError | KeyboardInterrupt | paramiko.BadHostKeyException
            )
            if failed_in_auth and checks_done:
                raise self._auth_error(spec, error) from None
            raise self._connect_error(spec, error) from None
        connected = client.get_transport()
        assert connected is not None
        connected.set_keepalive(_KEEPALIVE_SECONDS)
        return client

    def _connect_error(self, spec: HostSpec, error: BaseException) -> BaseException:
        """The one-line TransportError a failure before authentication means to the user."""
        name = f"{spec.user}@{_name_for_messages(spec)}"
        if isinstance(error, TransportError | KeyboardInterrupt):
            return error
        if isinstance(error, paramiko.BadHostKeyException):
            return HostKeyChangedError(
                f"HOST KEY CHANGED for {spec.known_hosts_name}: expected "
                f"{error.expected_key.get_name()} {fingerprint(error.expected_key)}, got "
                f"{error.key.get_name()} {fingerprint(error.key)}. Someone may be intercepting "
                "the connection, or the server was reinstalled: ask its admin; if it was, "
                f"remove the old entry with: ssh-keygen -R '{spec.known_hosts_name}' "
                f"-f {self._known_hosts}"
            )
        if isinstance(error, TimeoutError | socket.timeout):
            return ConnectTimeoutError(f"{name} port {spec.port} did not finish the SSH handshake")
        if isinstance(error, paramiko.SSHException | EOFError | OSError):
            return ConnectError(
                f"SSH to {name} port {spec.port} failed: {error or type(error).__name__}"
            )
        return error

    def _auth_error(self, spec: HostSpec, error: BaseException) -> AuthError:
        """The one-line AuthError for a failure after the host key was verified."""
        name = f"{spec.user}@{_name_for_messages(spec)}"
        if isinstance(error, paramiko.BadAuthenticationType):
            return AuthError(
                f"{name} accepts only {', '.join(error.allowed_types)}; slurm-sglang "
                "authenticates with keys: install your public key there (ssh-copy-id)"
            )
        tried = self._keys_tried(spec)
        if isinstance(error, paramiko.PasswordRequiredException):
            return AuthError(
                f"{name}: a key is protected by a passphrase; load it into ssh-agent (ssh-add) "
                f"and retry (keys tried: {tried})"
            )
        return AuthError(
            f"{name} refused every key tried ({tried}): install the right public key there, "
            "or name your key with IdentityFile in ~/.ssh/config"
        )

    def _keys_tried(self, spec: HostSpec) -> str:
        tried = [
            path if os.path.isfile(path) else f"{path} (missing)" for path in spec.identity_files
        ]
        if self._use_agent and os.environ.get("SSH_AUTH_SOCK"):
            agent = paramiko.Agent()
            try:
                tried += [f"agent {key.get_name()} {fingerprint(key)}" for key in agent.get_keys()]
            finally:
                agent.close()
        return ", ".join(tried) if tried else "none: no IdentityFile, no default key, no agent"


def _handshake_done(client: paramiko.SSHClient) -> bool:
    """Whether the key exchange (and so the host key check) finished before the failure."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        return False
    try:
        transport.get_remote_server_key()
    except paramiko.SSHException:
        return False
    return not transport.is_authenticated()


def _name_for_messages(spec: HostSpec) -> str:
    return spec.alias if spec.alias == spec.hostname else f"{spec.alias} ({spec.hostname})"
