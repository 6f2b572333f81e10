"""SSHTransport and Tunnel against a real sshd on 127.0.0.1, started by these tests."""

from __future__ import annotations

import concurrent.futures
import http.server
import os
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import (
    SSHServer,
    free_port,
    make_key,
    public_key,
    sshd_available,
    start_agent,
    start_sshd,
)

from slurm_sglang.transport import (
    AuthError,
    CommandNotFoundError,
    CommandTimeoutError,
    ConnectRefusedError,
    FileAccessError,
    FileMissingError,
    FilePermissionError,
    HostKeyChangedError,
    HostResolutionError,
    SSHTransport,
    UnknownHostKeyError,
    open_tunnel,
    transport_for,
)

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))

HOSTILE_ARGUMENTS = [
    "two words",
    "it's",
    '"double"',
    "$HOME",
    "${PATH}",
    "a;b",
    "`id`",
    "$(id)",
    "back\\slash",
    "*",
    "new\nline",
    "",
    "-n",
    '{"json": [1, "x y"]}',
    "ümlaut ✓",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    running = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield running
    running.stop()


@pytest.fixture
def client_dir(server: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ~/.ssh for the client: config with aliases, known_hosts with the server."""
    # Never read or write the real ~/.ssh, and never offer keys of a real agent.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    ssh_dir = tmp_path / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    host_block = (
        f"    HostName 127.0.0.1\n    Port {server.port}\n    User {server.user}\n"
        f"    IdentityFile {server.client_key}\n"
    )
    (ssh_dir / "config").write_text(
        f"Host cluster\n{host_block}"
        f"Host jumpbox\n{host_block}"
        f"Host behind-jump\n{host_block}    ProxyJump jumpbox\n"
        f"Host behind-two\n{host_block}    ProxyJump jumpbox,cluster\n"
    )
    (ssh_dir / "known_hosts").write_text(server.known_hosts_line)
    return ssh_dir


@pytest.fixture
def cluster(client_dir: Path) -> Iterator[SSHTransport]:
    transport = SSHTransport("cluster", config_path=client_dir / "config")
    yield transport
    transport.close()


def test_run_returns_output_and_code(cluster: SSHTransport) -> None:
    result = cluster.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert cluster.run(["cat"], input="fed through stdin\n").stdout == "fed through stdin\n"
    assert cluster.describe() == f"ssh {cluster.spec.user}@127.0.0.1:{cluster.spec.port}"


def test_hostile_arguments_arrive_byte_for_byte(cluster: SSHTransport) -> None:
    result = cluster.run(["printf", "%s\\0", *HOSTILE_ARGUMENTS])
    assert result.stdout.split("\0")[:-1] == HOSTILE_ARGUMENTS


def test_one_connection_serves_many_commands(server: SSHServer, cluster: SSHTransport) -> None:
    before = server.accepted_logins()
    for index in range(3):
        assert cluster.run(["echo", str(index)]).stdout == f"{index}\n"
    cluster.write_text(f"{cluster.home()}/.slurm-sglang-one-connection", "x")
    assert server.accepted_logins() == before + 1


def test_reconnects_after_the_connection_drops(server: SSHServer, cluster: SSHTransport) -> None:
    assert cluster.run(["echo", "before"]).stdout == "before\n"
    before = server.accepted_logins()
    sessions = [pid for pid, parent in _parents().items() if parent == server.process.pid]
    assert sessions  # this transport's connection, served by a child of the listening sshd
    for pid in sessions:
        os.kill(pid, 15)
    assert cluster.run(["echo", "after"]).stdout == "after\n"
    assert cluster.read_text(str(server.root / "authorized_keys")).startswith("ssh-ed25519 ")
    assert server.accepted_logins() == before + 1


def test_sftp_write_read_and_follow(cluster: SSHTransport, tmp_path: Path) -> None:
    # The sshd runs on this machine, so its files are visible here too.
    target = tmp_path / "it's a dir" / "sub" / "script.sbatch"
    cluster.makedirs(str(target.parent))
    text = "#!/bin/bash\necho 'hello $USER'\n" + "ümlaut\n" * 1000
    cluster.write_text(str(target), text, mode=0o750)
    assert target.read_text() == text
    assert target.stat().st_mode & 0o777 == 0o750
    assert cluster.read_text(str(target)) == text
    assert cluster.exists(str(target)) and not cluster.exists(str(target) + ".nope")
    assert [p.name for p in target.parent.iterdir()] == ["script.sbatch"]

    log = tmp_path / "job.log"
    log.write_bytes(b"first\n")
    assert cluster.read_bytes_from(str(log), 0) == b"first\n"
    with log.open("ab") as appending:
        appending.write(b"second\n")
    assert cluster.read_bytes_from(str(log), 6) == b"second\n"
    assert cluster.read_bytes_from(str(log), 13) == b""


def test_home_relative_paths(cluster: SSHTransport) -> None:
    name = f".slurm-sglang-test-{secrets.token_hex(4)}"
    try:
        cluster.write_text(f"~/{name}", "home")
        assert Path(cluster.home(), name).read_text() == "home"
    finally:
        Path(cluster.home(), name).unlink(missing_ok=True)


def test_file_errors_are_one_clear_line(cluster: SSHTransport, tmp_path: Path) -> None:
    with pytest.raises(FileMissingError, match="no such file or directory"):
        cluster.read_text(str(tmp_path / "missing.txt"))
    with pytest.raises(FileMissingError, match="missing-dir"):
        cluster.write_text(str(tmp_path / "missing-dir" / "x"), "x")
    # /sys refuses new files even to root, so this fails the same for every user.
    with pytest.raises(FilePermissionError, match="permission denied"):
        cluster.write_text("/sys/slurm-sglang-test", "x")


def test_env_values_arrive_but_never_in_a_command_line(
    server: SSHServer, cluster: SSHTransport
) -> None:
    secret = f"hunter2-{secrets.token_hex(8)} with 'quotes' $and\nnewline"
    assert cluster.run(["printenv", "API_TOKEN"], env={"API_TOKEN": secret}).stdout == secret + "\n"

    marker = f"{secrets.randbelow(10**6) + 10**6}.5"  # a sleep argument no one else uses
    outcome: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=cluster.run(["sleep", marker], check=False, env={"API_TOKEN": secret})
        )
    )
    runner.start()
    sleeper = _wait_for_process([b"sleep", marker.encode()])
    try:
        command_lines = _command_lines()
        assert sleeper in command_lines  # the scan sees the remote command itself
        assert not [pid for pid, line in command_lines.items() if secret.encode() in line]
        environ = Path(f"/proc/{sleeper}/environ").read_bytes().split(b"\0")
        assert b"API_TOKEN=" + secret.encode() in environ
        assert secret not in server.log()
        assert not list(Path("/tmp").glob("slurm-sglang-env.*/env"))
    finally:
        os.kill(sleeper, 15)
        runner.join()
    assert outcome["result"] is not None


def test_missing_command_names_it_and_the_fix(cluster: SSHTransport) -> None:
    with pytest.raises(CommandNotFoundError) as raised:
        cluster.run(["sbatch", "--parsable", "job.sbatch"], env={"PATH": "/nonexistent"})
    assert str(raised.value) == "sbatch not found on cluster: is SLURM's client installed there?"
    assert raised.value.returncode == 127
    result = cluster.run(["slurm-sglang-no-such-command"], check=False)
    assert result.returncode == 127


def test_alias_with_user_port_and_identity_file(server: SSHServer, client_dir: Path) -> None:
    with SSHTransport("cluster", config_path=client_dir / "config") as transport:
        assert (transport.spec.hostname, transport.spec.port) == ("127.0.0.1", server.port)
        assert transport.spec.identity_files == (str(server.client_key),)
        assert transport.run(["id", "-un"]).stdout.strip() == server.user


def test_explicit_destination_without_config(server: SSHServer, client_dir: Path) -> None:
    (client_dir / "config").unlink()
    transport = transport_for(
        f"{server.user}@127.0.0.1:{server.port}",
        identity_file=server.client_key,
        config_path=client_dir / "config",
        known_hosts=client_dir / "known_hosts",
    )
    try:
        assert transport.run(["echo", "plain"]).stdout == "plain\n"
    finally:
        transport.close()


@pytest.mark.parametrize(("alias", "logins"), [("behind-jump", 2), ("behind-two", 3)])
def test_proxy_jump(server: SSHServer, client_dir: Path, alias: str, logins: int) -> None:
    before = server.accepted_logins()
    with SSHTransport(alias, config_path=client_dir / "config") as transport:
        assert transport.run(["echo", "through the jump"]).stdout == "through the jump\n"
        assert transport.read_text(str(client_dir / "config")).startswith("Host cluster")
    assert server.accepted_logins() == before + logins


def test_unknown_host_refused_then_trusted_and_recorded(
    server: SSHServer, client_dir: Path
) -> None:
    known_hosts = client_dir / "known_hosts"
    known_hosts.unlink()
    expected_fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{server.host_key}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    before = server.accepted_logins()
    with pytest.raises(UnknownHostKeyError) as raised:
        SSHTransport("cluster", config_path=client_dir / "config").connect()
    message = str(raised.value)
    assert expected_fingerprint in message and "--trust-new-host" in message
    assert "\n" not in message
    assert server.accepted_logins() == before
    assert not known_hosts.exists()

    with SSHTransport("cluster", config_path=client_dir / "config", trust_new_host=True) as trusted:
        assert trusted.run(["true"]).returncode == 0
    assert known_hosts.read_text() == server.known_hosts_line
    with SSHTransport("cluster", config_path=client_dir / "config") as later:
        assert later.run(["echo", "known now"]).stdout == "known now\n"


def test_changed_host_key_is_refused(server: SSHServer, client_dir: Path, tmp_path: Path) -> None:
    impostor = make_key(tmp_path / "impostor")
    (client_dir / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {public_key(impostor)}\n")
    with pytest.raises(HostKeyChangedError, match=r"HOST KEY CHANGED.*ssh-keygen -R"):
        SSHTransport("cluster", config_path=client_dir / "config", trust_new_host=True).connect()


def test_wrong_key_names_the_keys_tried(
    server: SSHServer, client_dir: Path, tmp_path: Path
) -> None:
    wrong = make_key(tmp_path / "not_authorized")
    (client_dir / "config").write_text("")
    with pytest.raises(AuthError) as raised:
        SSHTransport(
            f"127.0.0.1:{server.port}", identity_file=wrong, config_path=client_dir / "config"
        ).connect()
    assert f"refused every key tried ({wrong})" in str(raised.value)


def test_refused_port(client_dir: Path) -> None:
    port = free_port()
    with pytest.raises(ConnectRefusedError, match=f"connection refused by 127.0.0.1 port {port}"):
        SSHTransport(f"127.0.0.1:{port}", config_path=client_dir / "config").connect()


def test_unknown_host_name(client_dir: Path) -> None:
    with pytest.raises(HostResolutionError, match=r"cannot resolve no-such-host\.invalid"):
        SSHTransport("no-such-host.invalid", config_path=client_dir / "config").connect()


def test_keys_from_the_agent(
    server: SSHServer, client_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, socket_path = start_agent(tmp_path, server.client_key)
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        (client_dir / "config").write_text(
            f"Host agent-only\n    HostName 127.0.0.1\n    Port {server.port}\n"
        )
        with SSHTransport("agent-only", config_path=client_dir / "config") as transport:
            assert transport.spec.identity_files == ()
            assert transport.run(["echo", "via agent"]).stdout == "via agent\n"
    finally:
        agent.terminate()
        agent.wait()


def test_missing_identity_file_is_named(
    server: SSHServer, client_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-key"
    (client_dir / "config").write_text(
        f"Host gone\n    HostName 127.0.0.1\n    Port {server.port}\n    IdentityFile {missing}\n"
    )
    with pytest.raises(AuthError, match=f"refused every key tried \\({missing} \\(missing\\)\\)"):
        SSHTransport("gone", config_path=client_dir / "config").connect()


def test_proxy_command(server: SSHServer, client_dir: Path) -> None:
    proxy = shlex.join(
        [
            "ssh", "-F", "none", "-i", str(server.client_key), "-p", str(server.port),
            "-o", f"UserKnownHostsFile={client_dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-W", "%h:%p", f"{server.user}@127.0.0.1",
        ]
    )  # fmt: skip
    (client_dir / "config").write_text(
        f"Host via-command\n    HostName 127.0.0.1\n    Port {server.port}\n"
        f"    IdentityFile {server.client_key}\n    ProxyCommand {proxy}\n"
    )
    before = server.accepted_logins()
    with SSHTransport("via-command", config_path=client_dir / "config") as transport:
        assert transport.run(["echo", "through ssh -W"]).stdout == "through ssh -W\n"
    assert server.accepted_logins() == before + 2


def test_commands_in_parallel_share_the_connection(cluster: SSHTransport) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda index: cluster.run(["echo", str(index)]).stdout, range(16)))
    assert outputs == [f"{index}\n" for index in range(16)]


def test_command_timeout(cluster: SSHTransport) -> None:
    with pytest.raises(CommandTimeoutError, match="still running after"):
        cluster.run(["sleep", "5"], timeout=0.3)
    assert cluster.run(["echo", "still usable"]).stdout == "still usable\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs in sshd's own mount namespace")
def test_full_disk_on_write(tmp_path: Path, client_dir: Path) -> None:
    full_server = start_sshd(tmp_path / "sshd", private_mounts=True)
    try:
        (client_dir / "known_hosts").write_text(full_server.known_hosts_line)
        small = tmp_path / "small-disk"
        small.mkdir()
        with SSHTransport(
            f"127.0.0.1:{full_server.port}",
            identity_file=full_server.client_key,
            config_path=client_dir / "config",
        ) as transport:
            # Only sshd's namespace sees this 64 KiB disk.
            transport.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)])
            with pytest.raises(FileAccessError, match="full disk or an exhausted quota"):
                transport.write_text(str(small / "script.sbatch"), "x" * 512 * 1024)
            assert transport.run(["ls", "-A", str(small)]).stdout == ""
    finally:
        full_server.stop()


# Tunnel ---------------------------------------------------------------------------------

STREAM_CHUNKS = [f"chunk {index} ".encode() * 200 for index in range(8)]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in STREAM_CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.02)  # separate writes, as a token stream arrives
            self.wfile.write(b"0\r\n\r\n")
            return
        body = f"echo {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_tunnel_through_ssh(
    cluster: SSHTransport, http_server: http.server.ThreadingHTTPServer
) -> None:
    remote_port = http_server.server_address[1]
    with open_tunnel(cluster, "127.0.0.1", int(remote_port)) as tunnel:
        assert tunnel.url == f"http://127.0.0.1:{tunnel.local_port}"
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{tunnel.local_port}"], capture_output=True, text=True
        ).stdout.split("\n")
        addresses = {line.split()[3] for line in listening if line.strip()}
        assert addresses == {f"127.0.0.1:{tunnel.local_port}"}

        def fetch(index: int) -> str:
            with urllib.request.urlopen(f"{tunnel.url}/n/{index}", timeout=60) as response:
                return str(response.read().decode())

        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(fetch, range(50)))
        assert replies == [f"echo /n/{index}" for index in range(50)]

        with urllib.request.urlopen(f"{tunnel.url}/stream", timeout=60) as response:
            assert response.read() == b"".join(STREAM_CHUNKS)
    assert tunnel.failures == 0


def test_tunnel_to_a_closed_port(cluster: SSHTransport) -> None:
    with open_tunnel(cluster, "127.0.0.1", free_port()) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=30) as client:
            assert client.recv(1) == b""  # closed at once: the login node could not connect
        assert tunnel.failures == 1


def _parents() -> dict[int, int]:
    """Every process's parent pid on this machine, by pid."""
    parents = {}
    for proc in Path("/proc").iterdir():
        if re.fullmatch(r"\d+", proc.name):
            try:
                # The command name in field 2 may hold spaces; fields after its ")" are plain.
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(proc.name)] = int(fields[1])
    return parents


def _command_lines() -> dict[int, bytes]:
    """Every process's command line on this machine, by pid."""
    lines = {}
    for proc in Path("/proc").iterdir():
        if re.fullmatch(r"\d+", proc.name):
            try:
                lines[int(proc.name)] = (proc / "cmdline").read_bytes()
            except OSError:
                continue  # the process ended meanwhile
    return lines


def _wait_for_process(cmdline: list[bytes], timeout: float = 60.0) -> int:
    """The pid whose command line is exactly cmdline, once it exists."""
    wanted = b"\0".join(cmdline) + b"\0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, line in _command_lines().items():
            if line == wanted:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no process {cmdline!r} appeared")
