"""The remote path end to end: the CLI on 'a laptop' reaches the sandbox through a real sshd.

sshd runs on 127.0.0.1 (tests/integration/sshd.py) on this machine, where SLURM's client
commands reach the sandbox; the CLI runs as a subprocess with its own HOME (~/.ssh/config
alias, known_hosts) and state directory, exactly as a user would run it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI
from serving import job_containers, wait_job_gone
from sshd import SSHServer, free_port, make_key, sshd_available, start_sshd

from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available())),
]

CONCURRENT_REQUESTS = 50
TUNNEL_LINE = re.compile(
    r"^tunnel: (http://127\.0\.0\.1:(\d+)) -> (\S+):(\d+) \(Ctrl-C to close\)$")
# Reaches the ranks through sbatch's exported environment, never a command line.
JOB_ENV = {"SGLANG_STANDIN_LOAD_SECONDS": "1", "SGLANG_STANDIN_TOKEN_SECONDS": "0.005"}


@dataclass
class Laptop:
    """The client side: a HOME with ~/.ssh, a state directory, and the CLI run from there."""

    home: Path
    server: SSHServer

    @property
    def known_hosts(self) -> Path:
        """The client's known_hosts file."""
        return self.home / ".ssh" / "known_hosts"

    def env(self) -> dict[str, str]:
        """The CLI's environment: this HOME, this state directory, no real ssh-agent."""
        env = {name: value for name, value in os.environ.items() if name != "SSH_AUTH_SOCK"}
        env.update(HOME=str(self.home), SLURM_SGLANG_STATE_DIR=str(self.home / "state"))
        return env

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `python -m slurm_sglang ARGV` and wait for it."""
        return subprocess.run([sys.executable, "-m", "slurm_sglang", *argv], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def start_cli(self, *argv: str) -> subprocess.Popen[str]:
        """Start `python -m slurm_sglang ARGV` in the background."""
        return subprocess.Popen([sys.executable, "-m", "slurm_sglang", *argv], env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class RemoteJob:
    """A job submitted over SSH and followed until ready."""

    job_id: str
    endpoint: dict[str, object]
    seconds_to_ready: float


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    home = tmp_path_factory.mktemp("laptop")
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    stranger_key = make_key(ssh_dir / "id_not_authorized")
    block = f"    HostName 127.0.0.1\n    Port {server.port}\n    User {server.user}\n"
    (ssh_dir / "config").write_text(
        f"Host login\n{block}    IdentityFile {server.client_key}\n"
        f"Host login-wrong-key\n{block}    IdentityFile {stranger_key}\n"
    )
    yield Laptop(home, server)
    server.stop()


def _records(laptop: Laptop) -> list[dict[str, str]]:
    listed = laptop.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, str]] = json.loads(listed.stdout)
    return rows


def _submit_argv(sandbox: SandboxInfo, *extra: str) -> list[str]:
    model = sandbox.shared_dir / "models" / "tiny"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return ["submit", "--ssh", "login", "--cluster", str(sandbox.profile_path), "--nodes", "2",
            "--name", "remote-test", "--timeout", "150", *extra,
            *(f"--env={name}={value}" for name, value in JOB_ENV.items()),
            "--", "--model-path", str(model), "--tp", "16"]


def test_unknown_host_key_is_refused(laptop: Laptop, sandbox: SandboxInfo) -> None:
    refused = laptop.cli(*_submit_argv(sandbox))
    assert refused.returncode == 4  # a transport error (errors.py)
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"slurm-sglang: unknown host key for [127.0.0.1]:{laptop.server.port} ")
    assert "SHA256:" in line and "--trust-new-host" in line
    assert not laptop.known_hosts.exists() or not laptop.known_hosts.read_text().strip()
    assert _records(laptop) == []  # nothing submitted, nothing recorded


@pytest.fixture(scope="module")
def remote_job(laptop: Laptop, sandbox: SandboxInfo) -> Iterator[RemoteJob]:
    """Submitted with --trust-new-host, followed over SSH until ready; scancelled at the end."""
    started = time.monotonic()
    submitted = laptop.cli(*_submit_argv(sandbox, "--trust-new-host"))
    seconds = time.monotonic() - started
    rows = _records(laptop)
    job_id = rows[0]["job_id"] if rows else ""
    try:
        assert submitted.returncode == 0, submitted.stderr
        assert "recorded new host key for [127.0.0.1]" in submitted.stderr
        # A job on a login node is HOST:JOB everywhere (a local job with the same id differs).
        assert f"python -m slurm_sglang tunnel login:{job_id}" in submitted.stdout
        status = laptop.cli("status", "--json", job_id)
        view = json.loads(status.stdout)
        assert (view["job_id"], view["host"], view["status"]) == (job_id, "login", "ready")
        assert f"ready: {view['url']}\n" in submitted.stdout
        print(f"\nremote submit -> ready over SSH: {seconds:.1f} s (job {job_id})\n"
              + submitted.stderr)
        yield RemoteJob(job_id, view["endpoint"], seconds)
    finally:
        if job_id:
            subprocess.run(["scancel", job_id], check=False)
            wait_job_gone(job_id)


def test_trusted_host_key_is_recorded(laptop: Laptop, remote_job: RemoteJob) -> None:
    recorded = laptop.known_hosts.read_text()
    assert recorded == laptop.server.known_hosts_line
    assert laptop.known_hosts.stat().st_mode & 0o777 == 0o600
    assert laptop.cli("status", remote_job.job_id).returncode == 0  # no flag needed any more


def test_wrong_key_fails_with_one_line(laptop: Laptop, sandbox: SandboxInfo,
                                       remote_job: RemoteJob) -> None:
    argv = _submit_argv(sandbox)  # the host key is known by now: only the user key is wrong
    failed = laptop.cli(*[("login-wrong-key" if word == "login" else word) for word in argv])
    assert failed.returncode == 4  # a transport error (errors.py)
    line = failed.stderr.strip().splitlines()[-1]
    assert "refused every key tried" in line and "id_not_authorized" in line
    assert [row["job_id"] for row in _records(laptop)] == [remote_job.job_id]


def test_sbatch_refusal_is_one_line(laptop: Laptop, sandbox: SandboxInfo,
                                    remote_job: RemoteJob) -> None:
    refused = laptop.cli(*_submit_argv(sandbox, "--partition", "no-such-partition"))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "slurm-sglang: error: sbatch on login refused the job: "
        "Batch job submission failed: Invalid partition name specified")


@pytest.fixture
def tunnel(laptop: Laptop, remote_job: RemoteJob) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`tunnel JOB` running in the background, and its local URL."""
    local_port = free_port()
    process = laptop.start_cli("tunnel", remote_job.job_id, "--local-port", str(local_port))
    try:
        assert process.stdout is not None and process.stderr is not None
        match = TUNNEL_LINE.match(process.stdout.readline().strip())
        assert match, process.stderr.read() if process.poll() is not None else "no tunnel line"
        assert int(match.group(2)) == local_port
        assert (match.group(3), int(match.group(4))) == (
            remote_job.endpoint["head_ip"], remote_job.endpoint["port"])
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


def _sockets(*filters: str) -> list[str]:
    listed = subprocess.run(["ss", "-Htnp", *filters], capture_output=True, text=True, check=True)
    return listed.stdout.splitlines()


def test_openai_client_through_the_tunnel(laptop: Laptop, remote_job: RemoteJob,
                                           tunnel: tuple[subprocess.Popen[str], str]) -> None:
    process, url = tunnel
    listening = [line for line in _sockets("-l") if f"pid={process.pid}," in line]
    assert listening and all(line.split()[3].startswith("127.0.0.1:") for line in listening)

    model = str(remote_job.endpoint["model"])
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    assert [entry.id for entry in client.models.list()] == [model]
    completion = client.completions.create(model=model, prompt="Hello", max_tokens=16)
    assert completion.choices[0].text and completion.usage and completion.usage.completion_tokens
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=16)
    assert chat.choices[0].message.content

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count"}], max_tokens=64, stream=True)
    head = f"{remote_job.endpoint['head_ip']}:{remote_job.endpoint['port']}"
    pieces = [next(iter(stream)).choices[0].delta.content or ""]
    # Mid-stream, the TCP connection to the head belongs to sshd, not to the tunnel process.
    # Established ones only: an earlier test's client may have left one in CLOSE-WAIT.
    carriers = _sockets("state", "established", "dst", head)
    assert carriers and all("sshd" in line and f"pid={process.pid}," not in line
                            for line in carriers)
    pieces += [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) >= 5  # arrived as many chunks

    def one(index: int) -> int:
        answer = client.completions.create(model=model, prompt=f"request {index}", max_tokens=32)
        assert answer.choices[0].text
        return answer.usage.completion_tokens if answer.usage else 0

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        tokens = list(pool.map(one, range(CONCURRENT_REQUESTS)))
    seconds = time.monotonic() - started
    assert len(tokens) == CONCURRENT_REQUESTS and all(tokens)
    print(f"\n{CONCURRENT_REQUESTS} concurrent completions through the tunnel: {seconds:.2f} s, "
          f"{CONCURRENT_REQUESTS / seconds:.1f} req/s, {sum(tokens) / seconds:.0f} tokens/s")

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None and "tunnel closed" in process.stderr.read()
    assert not [line for line in _sockets("-l") if f"pid={process.pid}," in line]


def test_status_endpoint_and_logs_over_ssh(laptop: Laptop, remote_job: RemoteJob) -> None:
    status = laptop.cli("status", "--json", remote_job.job_id)
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert (view["status"], view["host"], view["url"]) == ("ready", "login",
                                                          remote_job.endpoint["url"])
    endpoint = laptop.cli("endpoint", remote_job.job_id)
    assert endpoint.stdout.strip() == remote_job.endpoint["url"]

    rank_log = laptop.cli("logs", "--rank", "1", remote_job.job_id)
    assert rank_log.returncode == 0, rank_log.stderr
    assert "node_rank=1" in rank_log.stdout
    # --env travelled over SSH to sbatch, then into the rank's container.
    assert "Load weight end. elapsed=1.00 s" in rank_log.stdout
    driver_log = laptop.cli("logs", remote_job.job_id)
    assert f"ready: {remote_job.endpoint['url']}" in driver_log.stdout

    missing = laptop.cli("logs", "--rank", "7", remote_job.job_id)
    assert missing.returncode == 2 and "no log for rank 7" in missing.stderr

    # One tunnel reaches one port: the metrics are read on the login node, over SSH.
    metrics = laptop.cli("metrics", "--json", remote_job.job_id)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr
    (head,) = [t for t in json.loads(metrics.stdout)["targets"] if t["role"] == "server"]
    # The tunnel test before this one sent completions through this head.
    assert head["ok"] and head["requests"] and head["requests"] >= 1, head


def test_cancel_closes_the_tunnel_and_leaves_nothing(laptop: Laptop, sandbox: SandboxInfo,
                                                      remote_job: RemoteJob) -> None:
    process = laptop.start_cli("tunnel", remote_job.job_id)
    follower = laptop.start_cli("logs", "--follow", remote_job.job_id)
    followed: list[str] = []
    follower_output = follower.stdout
    assert follower_output is not None
    reader = threading.Thread(target=lambda: followed.extend(iter(follower_output.readline, "")))
    reader.start()
    try:
        assert process.stdout is not None and TUNNEL_LINE.match(process.stdout.readline().strip())
        cancelled = laptop.cli("cancel", remote_job.job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.strip() == (
            f"job login:{remote_job.job_id} cancelled (stopped); 2 node(s) confirmed their ranks "
            "ended and their containers are gone")
        # The open tunnel notices that its job stopped serving and ends by itself.
        assert process.wait(timeout=60) == 1
        assert process.stderr is not None
        assert f"job login:{remote_job.job_id} is stopped; closing" in process.stderr.read()
        # logs --follow kept reading the driver's log over SFTP, saw it stop, and ended.
        deadline = time.monotonic() + 30
        while not any("stopping every rank" in line for line in followed):
            assert time.monotonic() < deadline, "".join(followed)
            time.sleep(0.2)
        ready = f"ready: {remote_job.endpoint['url']}"
        assert any(line.rstrip("\n").split(" (no API key")[0] == ready for line in followed)
    finally:
        for started in (process, follower):
            if started.poll() is None:
                started.send_signal(signal.SIGINT)
                started.wait(timeout=30)
        reader.join(timeout=30)
    squeue = subprocess.run(["squeue", "-h", "-j", remote_job.job_id], capture_output=True,
                            text=True)
    assert not squeue.stdout.strip()
    assert job_containers(sandbox, remote_job.job_id) == {node: [] for node in sandbox.nodes}

    refused = laptop.cli("tunnel", f"login:{remote_job.job_id}")
    # A job that does not serve is the job's error (exit 1), not the user's input.
    assert refused.returncode == 1 and "is stopped, not ready" in refused.stderr
    assert follower.wait(timeout=60) == 0
