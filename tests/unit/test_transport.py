"""LocalTransport, its errors, ssh_config resolution and the local tunnel (no SSH server)."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_sglang.transport import (
    CommandError,
    CommandNotFoundError,
    CommandResult,
    CommandTimeoutError,
    FileMissingError,
    FilePermissionError,
    LocalTransport,
    SSHConfigError,
    SSHTransport,
    Transport,
    TunnelError,
    open_tunnel,
    transport_for,
)
from slurm_sglang.transport.ssh_config import load_config, resolve_host, split_destination

PYTHON = sys.executable


@pytest.fixture
def local() -> LocalTransport:
    return LocalTransport()


def test_run_captures_output(local: LocalTransport) -> None:
    result = local.run([PYTHON, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert result == CommandResult(
        (PYTHON, "-c", "import sys; print('out'); print('err', file=sys.stderr)"),
        0,
        "out\n",
        "err\n",
    )
    assert local.run(["cat"], input="through stdin").stdout == "through stdin"


def test_failure_carries_code_command_stdout_stderr(local: LocalTransport) -> None:
    script = "import sys; print('partial'); print('boom: disk on fire', file=sys.stderr); exit(3)"
    with pytest.raises(CommandError) as raised:
        local.run([PYTHON, "-c", script, "arg with space"])
    error = raised.value
    assert (error.returncode, error.stdout, error.stderr) == (
        3,
        "partial\n",
        "boom: disk on fire\n",
    )
    assert error.argv == (PYTHON, "-c", script, "arg with space")
    assert error.command.endswith("'arg with space'")
    assert str(error) == f"{error.command} failed on this machine (exit 3): boom: disk on fire"
    assert local.run([PYTHON, "-c", script], check=False).returncode == 3


def test_missing_program(local: LocalTransport) -> None:
    with pytest.raises(CommandNotFoundError) as raised:
        local.run(["slurm-sglang-no-such-program", "x"])
    assert raised.value.returncode == 127
    assert str(raised.value).startswith("slurm-sglang-no-such-program not found on this machine:")
    assert local.run(["slurm-sglang-no-such-program"], check=False).returncode == 127


def test_missing_slurm_command_hint() -> None:
    result = CommandResult(("/usr/bin/squeue", "--me"), 127, "", "squeue: not found\n")
    error = CommandNotFoundError(result, "login.example")
    assert (
        str(error)
        == "/usr/bin/squeue not found on login.example: is SLURM's client installed there?"
    )


def test_timeout(local: LocalTransport) -> None:
    with pytest.raises(CommandTimeoutError, match=r"still running after 0\.2s"):
        local.run([PYTHON, "-c", "import time; time.sleep(30)"], timeout=0.2)


def test_env_adds_to_inherited_environment(
    local: LocalTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_SGLANG_INHERITED", "kept")
    script = "import os; print(os.environ['SLURM_SGLANG_INHERITED'], os.environ['EXTRA'])"
    assert local.run([PYTHON, "-c", script], env={"EXTRA": "a b'$"}).stdout == "kept a b'$\n"
    with pytest.raises(ValueError, match="invalid environment variable name"):
        local.run(["true"], env={"BAD NAME": "x"})


def test_files(local: LocalTransport, tmp_path: Path) -> None:
    target = tmp_path / "dir with 'quote'" / "a" / "run.sbatch"
    local.makedirs(str(target.parent))
    local.makedirs(str(target.parent))
    local.write_text(str(target), "old")
    local.write_text(str(target), "#!/bin/bash\nnew\n", mode=0o700)
    assert local.read_text(str(target)) == "#!/bin/bash\nnew\n"
    assert target.stat().st_mode & 0o777 == 0o700
    assert [path.name for path in target.parent.iterdir()] == ["run.sbatch"]
    assert local.exists(str(target)) and not local.exists(str(target) + "x")
    assert local.read_bytes_from(str(target), 12) == b"new\n"
    assert local.read_bytes_from(str(target), 100) == b""


def test_file_errors(local: LocalTransport, tmp_path: Path) -> None:
    with pytest.raises(FileMissingError, match="no such file or directory"):
        local.read_text(str(tmp_path / "missing"))
    with pytest.raises(FileMissingError):
        local.write_text(str(tmp_path / "missing-dir" / "file"), "x")
    # /sys refuses new files to every user, root included.
    with pytest.raises(FilePermissionError, match="permission denied"):
        local.write_text("/sys/slurm-sglang-test", "x")


def test_describe_and_home(local: LocalTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert isinstance(local, Transport)
    assert local.describe() == "local"
    assert local.home() == "/home/someone"


# ssh_config -------------------------------------------------------------------------------

SSH_CONFIG = """\
Host login
    HostName login01.cluster.example
    User alice
    Port 2222
    IdentityFile ~/.ssh/cluster_key

Host inner
    HostName 10.0.0.5
    ProxyJump bastion,bob@gate.example:2200

Host bastion
    HostName bastion.example
    User carol
    IdentityFile /keys/bastion

Host direct
    HostName direct.example
    ProxyJump none

Host *
    User defaultuser
"""


@pytest.fixture
def ssh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = tmp_path / ".ssh"
    directory.mkdir()
    (directory / "config").write_text(SSH_CONFIG)
    return directory


def test_alias_resolution(ssh_dir: Path) -> None:
    spec = resolve_host("login", load_config(ssh_dir / "config"), key_dir=ssh_dir)
    assert (spec.alias, spec.hostname, spec.user, spec.port) == (
        "login",
        "login01.cluster.example",
        "alice",
        2222,
    )
    assert spec.identity_files == (str(ssh_dir / "cluster_key"),)
    assert spec.known_hosts_name == "[login01.cluster.example]:2222"
    assert spec.jumps == ()


def test_explicit_values_win(ssh_dir: Path) -> None:
    spec = resolve_host(
        "login",
        load_config(ssh_dir / "config"),
        key_dir=ssh_dir,
        user="zed",
        port=22,
        identity_file="/keys/mine",
    )
    assert (spec.user, spec.port, spec.known_hosts_name) == ("zed", 22, "login01.cluster.example")
    assert spec.identity_files == ("/keys/mine", str(ssh_dir / "cluster_key"))


def test_proxy_jump_chain(ssh_dir: Path) -> None:
    spec = resolve_host("inner", load_config(ssh_dir / "config"), key_dir=ssh_dir)
    assert [(hop.hostname, hop.user, hop.port) for hop in spec.jumps] == [
        ("bastion.example", "carol", 22),
        ("gate.example", "bob", 2200),
    ]
    assert spec.jumps[0].identity_files == ("/keys/bastion",)
    assert resolve_host("direct", load_config(ssh_dir / "config"), key_dir=ssh_dir).jumps == ()


def test_default_keys_come_from_the_config_directory(ssh_dir: Path) -> None:
    (ssh_dir / "id_ed25519").write_text("not read here")
    spec = resolve_host("unlisted.example", load_config(ssh_dir / "config"), key_dir=ssh_dir)
    assert (spec.hostname, spec.user, spec.port) == ("unlisted.example", "defaultuser", 22)
    assert spec.identity_files == (str(ssh_dir / "id_ed25519"),)


def test_missing_config_is_empty(tmp_path: Path) -> None:
    spec = resolve_host("u@h.example:23", load_config(tmp_path / "nope"), key_dir=tmp_path)
    assert (spec.user, spec.hostname, spec.port, spec.identity_files) == ("u", "h.example", 23, ())


@pytest.mark.parametrize(
    ("destination", "parts"),
    [
        ("login", (None, "login", None)),
        ("alice@login:2222", ("alice", "login", 2222)),
        ("ssh://alice@login", ("alice", "login", None)),
        ("[::1]:2200", (None, "::1", 2200)),
        ("bob@[fe80::1]", ("bob", "fe80::1", None)),
    ],
)
def test_split_destination(destination: str, parts: tuple[str | None, str, int | None]) -> None:
    assert split_destination(destination) == parts


@pytest.mark.parametrize("destination", ["login:http", "login:70000", "alice@"])
def test_bad_destination(destination: str) -> None:
    with pytest.raises(SSHConfigError):
        split_destination(destination)


def test_transport_for(ssh_dir: Path) -> None:
    with transport_for(None) as local:
        assert isinstance(local, LocalTransport)
    remote = transport_for("login", config_path=ssh_dir / "config")
    assert isinstance(remote, SSHTransport) and isinstance(remote, Transport)
    # Nothing connects until the first command.
    assert remote.describe() == "ssh alice@login01.cluster.example:2222"


# Local tunnel (a plain TCP forward) -------------------------------------------------------


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_port() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def test_local_tunnel_forwards_on_loopback_only(echo_port: int) -> None:
    with open_tunnel(LocalTransport(), "127.0.0.1", echo_port) as tunnel:
        assert tunnel._listener.getsockname() == ("127.0.0.1", tunnel.local_port)
        for index in range(5):
            with urllib.request.urlopen(f"{tunnel.url}/r{index}", timeout=30) as response:
                assert response.read() == f"/r{index}".encode()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", tunnel.local_port)):
        pass


def test_tunnel_to_a_closed_port_counts_failures(unused_port: int) -> None:
    with open_tunnel(LocalTransport(), "127.0.0.1", unused_port) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=30) as client:
            assert client.recv(1) == b""  # closed at once: nothing to reach
        assert tunnel.failures == 1


def test_local_port_in_use(echo_port: int) -> None:
    with pytest.raises(TunnelError, match=f"local port {echo_port} is already in use"):
        open_tunnel(LocalTransport(), "127.0.0.1", 1, local_port=echo_port)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
