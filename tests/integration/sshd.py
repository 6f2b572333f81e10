"""A real OpenSSH server on 127.0.0.1 for tests: its own host key, authorized key, config,
and a client side (ssh_config, known_hosts, keys) in a temporary directory."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
_START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_key(path: Path) -> Path:
    """Generate an ed25519 key pair without passphrase at path (and path.pub)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


def public_key(path: Path) -> str:
    """'type base64' of a key pair's public half, without its comment."""
    key_type, key_data = Path(f"{path}.pub").read_text().split()[:2]
    return f"{key_type} {key_data}"


@dataclass
class SSHServer:
    """A running sshd and the files a client needs to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    user: str
    root: Path
    host_key: Path
    client_key: Path
    ssh_dir: Path
    log_path: Path

    @property
    def known_hosts_line(self) -> str:
        """This server's entry as ssh writes it in known_hosts."""
        return f"[127.0.0.1]:{self.port} {public_key(self.host_key)}\n"

    def log(self) -> str:
        """Everything sshd logged so far."""
        return self.log_path.read_text(errors="replace")

    def accepted_logins(self) -> int:
        """How many key logins sshd accepted so far."""
        return self.log().count("Accepted publickey for")

    def stop(self) -> None:
        """Terminate sshd and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_sshd(root: Path, *, private_mounts: bool = False) -> SSHServer:
    """Start sshd -D on a free port of 127.0.0.1 with everything under root.

    private_mounts runs it in its own mount namespace (root only): what its sessions mount
    stays invisible to this machine and vanishes with it."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = make_key(root / "ssh_host_ed25519_key")
    ssh_dir = root / "client-ssh"
    ssh_dir.mkdir(mode=0o700)
    client_key = make_key(ssh_dir / "id_test")
    authorized_keys = root / "authorized_keys"
    authorized_keys.write_text(public_key(client_key) + "\n")
    if os.geteuid() == 0:
        # Privilege separation wants this directory; it is missing in fresh containers.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log_path = root / "sshd.log"
    namespace = ["unshare", "--mount", "--propagation", "private", "--"] if private_mounts else []
    process = subprocess.Popen(
        [*namespace, SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    server = SSHServer(
        process=process,
        port=port,
        user=getpass.getuser(),
        root=root,
        host_key=host_key,
        client_key=client_key,
        ssh_dir=ssh_dir,
        log_path=log_path,
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while "Server listening on 127.0.0.1" not in server.log():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"sshd did not start:\n{server.log()}")
        time.sleep(0.05)
    return server


def sshd_available() -> str | None:
    """None when sshd and ssh-keygen are here, else why not."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        return "needs OpenSSH's server: apt-get install openssh-server"
    return None


def start_agent(root: Path, *keys: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A real ssh-agent listening on a socket under root, holding keys."""
    socket_path = root / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + _START_TIMEOUT
    while not socket_path.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            agent.kill()
            raise RuntimeError("ssh-agent did not start")
        time.sleep(0.05)
    for key in keys:
        subprocess.run(
            ["ssh-add", "-q", str(key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)},
            check=True,
            capture_output=True,
        )
    return agent, socket_path
