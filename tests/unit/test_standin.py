"""The sglang stand-in as real processes on loopback: rendezvous, failure, HTTP API, refusals.

Each rank runs `python3 -m sglang.launch_server` with the stand-in on PYTHONPATH, on its own
loopback address (127.0.0.N), as each node would on its own address.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from slurm_sglang.sandbox.standin.sglang import generation, group, server_args

STANDIN_ROOT = Path(__file__).resolve().parents[2] / "slurm_sglang" / "sandbox" / "standin"
MODEL = "/models/standin-7b"
JSON_OVERRIDE = '{"rope_scaling": {"type": "yarn", "factor": 4.0}, "note": "a b\'c $HOME"}'
EXIT_DEADLINE_S = 30.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 20.0) -> None:
    """Poll `condition` until true; fail naming `what` if the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def http(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """GET (or POST JSON) `url`; return status, headers and body text (status 0: refused)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()
    except OSError:
        return 0, {}, ""


class Rank:
    """One stand-in process (one node's rank) with its stderr in a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sglang.launch_server", *argv],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        """Everything the rank logged so far."""
        return self.log_path.read_text()

    def wait_exit(self) -> int:
        """Wait for the rank to exit (it must, within the deadline) and return its code."""
        try:
            return self.process.wait(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank did not exit; log:\n{self.log()}")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None


class Cluster:
    """Starts ranks on 127.0.0.N and kills whatever is left at the end of a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ranks: list[Rank] = []
        self.http_port = free_port()
        self.dist_port = free_port()

    def start(self, node_rank: int, args: list[str], **env: str) -> Rank:
        """Start node rank `node_rank` on 127.0.0.(rank+1) with sglang flags `args`."""
        address = f"127.0.0.{node_rank + 1}"
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(STANDIN_ROOT),
            "SGLANG_HOST_IP": address,
            "SGLANG_STANDIN_WARMUP_SECONDS": "0.2",
            **env,
        }
        rank = Rank(args, self.tmp_path / f"rank{node_rank}-{len(self.ranks)}.log", environment)
        self.ranks.append(rank)
        return rank

    def group_args(self, nnodes: int, node_rank: int, *extra: str) -> list[str]:
        """The flags a launcher gives node rank `node_rank` of an `nnodes` group."""
        return [
            "--model-path", MODEL, "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--dist-init-addr", f"127.0.0.1:{self.dist_port}",
            "--host", f"127.0.0.{node_rank + 1}", "--port", str(self.http_port), *extra,
        ]  # fmt: skip

    def url(self, path: str, node_rank: int = 0) -> str:
        """URL of `path` on node rank `node_rank`'s HTTP port."""
        return f"http://127.0.0.{node_rank + 1}:{self.http_port}{path}"

    def wait_ready(self, node_rank: int = 0) -> None:
        """Wait for a 200 from /health on that rank, failing early if a rank died."""

        def ready() -> bool:
            dead = [rank for rank in self.ranks if not rank.alive()]
            if dead:
                pytest.fail(f"a rank exited early:\n{dead[0].log()}")
            return http(self.url("/health", node_rank))[0] == 200

        wait_until(ready, f"/health 200 on node rank {node_rank}")

    def kill_all(self) -> None:
        """SIGKILL every rank still running (workers ignore SIGTERM, as sglang's do)."""
        for rank in self.ranks:
            if rank.alive():
                rank.process.kill()
            rank.process.wait()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A Cluster on loopback, with proxies cleared for local HTTP, killed at the end."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    group = Cluster(tmp_path)
    yield group
    group.kill_all()


def openai_client(cluster: Cluster, api_key: str = "unused") -> openai.OpenAI:
    """An OpenAI client for the head (the fixture has cleared any proxy settings)."""
    return openai.OpenAI(base_url=cluster.url("/v1"), api_key=api_key, max_retries=0)


def test_two_ranks_rendezvous_and_report_every_rank(cluster: Cluster) -> None:
    extra = ["--tp", "4", "--json-model-override-args", JSON_OVERRIDE]
    worker_args = cluster.group_args(2, 1, *extra, "--base-gpu-id", "2")
    worker = cluster.start(1, worker_args, CUDA_VISIBLE_DEVICES="4,5,6,7")
    head = cluster.start(0, cluster.group_args(2, 0, *extra))
    cluster.wait_ready()

    status, headers, text = http(cluster.url("/server_info"))
    info = json.loads(text)
    assert status == 200
    assert headers["X-Standin-Node"] == socket.gethostname()
    assert info["standin"] is True
    assert info["nnodes"] == 2
    assert info["tp_size"] == 4
    assert info["json_model_override_args"] == JSON_OVERRIDE
    assert [rank["node_rank"] for rank in info["ranks"]] == [0, 1]
    assert [rank["argv"] for rank in info["ranks"]] == [head.argv, worker.argv]
    assert [rank["ip"] for rank in info["ranks"]] == ["127.0.0.1", "127.0.0.2"]
    assert info["ranks"][0]["gpus"]["physical"] == ["0", "1"]
    assert info["ranks"][1]["gpus"]["physical"] == ["6", "7"]
    assert http(cluster.url("/get_server_info"))[0] == 200
    assert http(cluster.url("/health", node_rank=1))[0] == 200
    assert http(cluster.url("/ping", node_rank=1))[0] == 200

    head.process.send_signal(signal.SIGTERM)
    assert head.wait_exit() == 0
    assert worker.wait_exit() == 0
    assert "Received ShutdownReq from node rank 0" in worker.log()
    for line in ("Init parallel begin.", "Init parallel ends", "Load weight begin.",
                 "Load weight end.", "The server is fired up and ready to roll!"):  # fmt: skip
        assert line in head.log()


def test_three_ranks_then_one_drops_and_the_survivors_keep_running(cluster: Cluster) -> None:
    # Workers start first: they keep retrying until the head listens, as TCPStore clients do.
    second = cluster.start(2, cluster.group_args(3, 2, "--tp-size", "3"))
    first = cluster.start(1, cluster.group_args(3, 1, "--tp-size", "3"))
    head = cluster.start(0, cluster.group_args(3, 0, "--tp-size", "3", "--watchdog-timeout", "2"))
    cluster.wait_ready()
    info = json.loads(http(cluster.url("/server_info"))[2])
    assert [rank["argv"] for rank in info["ranks"]] == [head.argv, first.argv, second.argv]
    assert [rank["ip"] for rank in info["ranks"]] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    # sglang tells no one that a worker died: the head and the other worker carry on, and
    # neither leaves on SIGTERM; an idle head still answers /health from its last state.
    second.process.kill()
    time.sleep(3)
    for survivor in (head, first):
        survivor.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: "SIGTERM received" in head.log() and "SIGTERM received" in first.log(),
        "both survivors' SIGTERM log lines",
    )
    time.sleep(0.5)
    assert head.alive() and first.alive()
    assert http(cluster.url("/health"))[0] == 200
    # The next forward batch blocks in the collective until the watchdog ends the head; its
    # worker then loses rank 0 and exits too.
    request = {"text": "hi", "sampling_params": {"max_new_tokens": 1}}
    assert http(cluster.url("/generate"), request)[0] != 200
    assert head.wait_exit() != 0
    assert "Watchdog caught collective operation timeout" in head.log()
    assert first.wait_exit() != 0
    assert "Connection closed by peer" in first.log()


def test_worker_ignores_sigterm_and_dies_on_sigkill(cluster: Cluster) -> None:
    worker = cluster.start(1, cluster.group_args(2, 1, "--tp", "2"))
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2"))
    cluster.wait_ready()

    worker.process.send_signal(signal.SIGTERM)
    expected = "SIGTERM received on node_rank 1; waiting for the rank-0 ShutdownReq broadcast"
    wait_until(lambda: expected in worker.log(), "the worker's SIGTERM log line")
    assert worker.alive()
    assert http(cluster.url("/health"))[0] == 200

    worker.process.kill()
    assert worker.wait_exit() == -signal.SIGKILL
    time.sleep(2)
    assert head.alive(), head.log()


def test_workers_exit_when_the_head_dies(cluster: Cluster) -> None:
    worker = cluster.start(1, cluster.group_args(2, 1, "--tp", "2"))
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2"))
    cluster.wait_ready()
    head.process.kill()
    assert worker.wait_exit() != 0
    assert "Connection closed by peer" in worker.log()


def test_hung_worker_goes_unnoticed_by_the_head(cluster: Cluster) -> None:
    quick = {"SGLANG_STANDIN_HEARTBEAT_SECONDS": "0.2", "SGLANG_STANDIN_HEARTBEAT_TIMEOUT": "1"}
    worker = cluster.start(1, cluster.group_args(2, 1, "--tp", "2"), **quick)
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2"), **quick)
    cluster.wait_ready()
    worker.process.send_signal(signal.SIGSTOP)  # alive for TCP, silent for the group
    time.sleep(2)
    assert head.alive(), head.log()
    worker.process.send_signal(signal.SIGCONT)


def test_head_binds_its_port_only_after_every_rank_loaded(cluster: Cluster) -> None:
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2"))
    wait_until(lambda: "Waiting for 1 other node rank" in head.log(), "the head to listen")
    assert http(cluster.url("/v1/models"))[0] == 0  # refused: no rank has joined

    cluster.start(1, cluster.group_args(2, 1, "--tp", "2"), SGLANG_STANDIN_LOAD_SECONDS="600")
    wait_until(lambda: "Load weight end." in head.log(), "the head to load")
    assert http(cluster.url("/v1/models"))[0] == 0  # refused: node rank 1 is still loading
    assert http(cluster.url("/health", node_rank=1))[0] == 0


def test_health_is_503_during_warmup_while_models_answer(cluster: Cluster) -> None:
    args = ["--model-path", MODEL, "--port", str(cluster.http_port), "--tp", "2", "--dp", "2",
            "--enable-dp-attention", "--ep", "2", "--served-model-name", "standin"]  # fmt: skip
    head = cluster.start(0, args, SGLANG_STANDIN_WARMUP_SECONDS="600")
    wait_until(lambda: http(cluster.url("/v1/models"))[0] == 200, "/v1/models to answer")
    assert http(cluster.url("/health"))[0] == 503
    assert http(cluster.url("/health_generate"))[0] == 503
    assert json.loads(http(cluster.url("/v1/models"))[2])["data"][0]["id"] == "standin"
    assert json.loads(http(cluster.url("/model_info"))[2])["model_path"] == MODEL
    info = json.loads(http(cluster.url("/server_info"))[2])
    assert info["status"] == "warming_up"
    # The deprecated --dp N --enable-dp-attention becomes attention DP, as in sglang.
    assert (info["attn_dp_size"], info["dp_size"], info["ep_size"]) == (2, 1, 2)
    assert "--enable-dp-attention is deprecated" in head.log()
    assert "ready to roll" not in head.log()


def test_openai_client_across_two_ranks(cluster: Cluster) -> None:
    cluster.start(1, cluster.group_args(2, 1, "--tp", "2"))
    cluster.start(0, cluster.group_args(2, 0, "--tp", "2", "--served-model-name", "standin"))
    cluster.wait_ready()
    client = openai_client(cluster)

    completion = client.completions.create(model="standin", prompt="Hello", max_tokens=4)
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens <= 4

    batch = client.completions.create(model="standin", prompt=["one", "two two"], max_tokens=3)
    assert [choice.index for choice in batch.choices] == [0, 1]

    messages: Any = [{"role": "user", "content": "Say something"}]
    chat = client.chat.completions.create(model="standin", messages=messages)
    content = chat.choices[0].message.content
    assert content and chat.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(model="standin", messages=messages, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 2
    assert "".join(pieces) == content

    scored = client.chat.completions.create(
        model="standin", messages=messages, max_tokens=3, logprobs=True, top_logprobs=2
    )
    assert scored.choices[0].logprobs is not None
    entries = scored.choices[0].logprobs.content or []
    assert len(entries) == 3
    assert all(len(entry.top_logprobs) == 2 and entry.logprob < 0 for entry in entries)

    streamed = client.completions.create(
        model="standin", prompt="Hello", max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == (
        completion.choices[0].text
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4

    legacy = client.completions.create(model="standin", prompt="Hi", max_tokens=2, logprobs=2)
    assert legacy.choices[0].logprobs is not None
    assert len(legacy.choices[0].logprobs.token_logprobs or []) == 2


def test_native_generate_stop_and_stream(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)])
    cluster.wait_ready()
    body: dict[str, Any] = {
        "text": "Tell me",
        "sampling_params": {"max_new_tokens": 5, "temperature": 0},
    }
    status, _, text = http(cluster.url("/generate"), body)
    result = json.loads(text)
    assert status == 200
    assert result["meta_info"]["completion_tokens"] == 5
    assert result["meta_info"]["finish_reason"] == {"type": "length", "length": 5}

    second_word = result["text"].split()[1]
    stopped = {**body, "sampling_params": {**body["sampling_params"], "stop": [second_word]}}
    cut = json.loads(http(cluster.url("/generate"), stopped)[2])
    assert second_word not in cut["text"]
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": second_word}

    events = http(cluster.url("/generate"), {**body, "stream": True})[2].split("\n\n")
    payloads = [event.removeprefix("data: ") for event in events if event]
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["text"] == result["text"]


def test_fifty_concurrent_streams(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)],
                  SGLANG_STANDIN_TOKEN_SECONDS="0.02")  # fmt: skip
    cluster.wait_ready()
    client = openai_client(cluster)

    def chat(index: int) -> str:
        messages: Any = [{"role": "user", "content": f"request {index}"}]
        stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
        replies = list(pool.map(chat, range(60)))
    assert all(replies)


def test_api_key_is_enforced_except_on_health(cluster: Cluster) -> None:
    args = ["--model-path", MODEL, "--port", str(cluster.http_port), "--api-key", "s3cret"]
    cluster.start(0, args)
    cluster.wait_ready()
    assert http(cluster.url("/v1/models"))[0] == 401
    assert http(cluster.url("/server_info"), headers={"Authorization": "Bearer nope"})[0] == 401
    assert http(cluster.url("/v1/models"), headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert http(cluster.url("/health_generate"))[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai_client(cluster, "wrong").models.list()
    assert openai_client(cluster, "s3cret").models.list().data[0].id == MODEL


REFUSED_FLAGS = [
    (["--tp", "8", "--dp", "2", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:1"], 1,
     "multi-node data-parallel replicas are not supported; use attention DP "
     "(--attn-dp-size) across nodes"),
    (["--pp", "2"], 2, "ambiguous option: --pp could match --pp-async-batch-depth, "
     "--pp-max-micro-batch-size, --pp-size"),
    (["--enable-ep-moe"], 2, "unrecognized arguments: --enable-ep-moe"),
    (["--tp", "3", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:1"], 1,
     "must be divisible by nnodes"),
    (["--json-model-override-args", "{not json"], 1, "is not valid JSON"),
]  # fmt: skip


def test_flags_refused_as_sglang_refuses_them(cluster: Cluster) -> None:
    # All cases start at once: each is one short-lived process.
    ranks = [cluster.start(0, ["--model-path", MODEL, *flags]) for flags, _, _ in REFUSED_FLAGS]
    for rank, (flags, exit_code, message) in zip(ranks, REFUSED_FLAGS, strict=True):
        code = rank.wait_exit()
        assert code == exit_code and message in rank.log(), f"{flags}: exit {code}\n{rank.log()}"


def test_rendezvous_timeouts_exit_non_zero_with_torch_messages(cluster: Cluster) -> None:
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2", "--dist-timeout", "1"))
    nobody_listens = free_port()
    lonely_args = cluster.group_args(2, 1, "--tp", "2")
    lonely_args[lonely_args.index("--dist-init-addr") + 1] = f"127.0.0.1:{nobody_listens}"
    lonely = cluster.start(1, lonely_args, SGLANG_STANDIN_DIST_TIMEOUT="1")
    assert head.wait_exit() != 0
    assert "waiting for clients. 1/2 clients joined." in head.log()
    assert lonely.wait_exit() != 0
    assert (
        "client socket has timed out after 1000ms while trying to connect to "
        f"(127.0.0.1, {nobody_listens})" in lonely.log()
    )


def test_head_refuses_a_mismatched_rank_and_everyone_exits(cluster: Cluster) -> None:
    head = cluster.start(0, cluster.group_args(3, 0, "--tp", "3"))
    good = cluster.start(1, cluster.group_args(3, 1, "--tp", "3"))
    wait_until(lambda: "Node rank 1 joined" in head.log(), "node rank 1 to join")
    wrong = cluster.start(2, [*cluster.group_args(3, 2, "--tp", "3"), "--model-path", "/other"])
    assert wrong.wait_exit() != 0
    assert head.wait_exit() != 0
    assert good.wait_exit() != 0
    assert "mismatched --model-path" in head.log()
    assert "mismatched --model-path" in wrong.log()


@pytest.mark.parametrize(
    ("wrong_rank", "message"),
    [("1", "duplicate node rank 1"), ("5", "node rank 5 is out of range for --nnodes 3")],
)
def test_duplicate_or_out_of_range_rank_is_refused(
    cluster: Cluster, wrong_rank: str, message: str
) -> None:
    head = cluster.start(0, cluster.group_args(3, 0, "--tp", "3"))
    cluster.start(1, cluster.group_args(3, 1, "--tp", "3"))
    wait_until(lambda: "Node rank 1 joined" in head.log(), "node rank 1 to join")
    wrong = cluster.start(2, [*cluster.group_args(3, 2, "--tp", "3"), "--node-rank", wrong_rank])
    assert wrong.wait_exit() != 0
    assert head.wait_exit() != 0
    assert message in head.log()
    assert message in wrong.log()


def test_taken_dist_init_port_fails_like_torch(cluster: Cluster) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.dist_port))
        squatter.listen()
        head = cluster.start(0, cluster.group_args(2, 0, "--tp", "2"))
        assert head.wait_exit() != 0
    assert "server socket has failed to listen" in head.log()
    assert "EADDRINUSE" in head.log()


def test_ipv6_dist_init_address_in_brackets(cluster: Cluster) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    ipv6 = ["--tp", "2", "--dist-init-addr", f"[::1]:{cluster.dist_port}"]
    cluster.start(1, [*cluster.group_args(2, 1), *ipv6])
    cluster.start(0, [*cluster.group_args(2, 0), *ipv6])
    cluster.wait_ready()
    info = json.loads(http(cluster.url("/server_info"))[2])
    assert info["dist_init_addr"] == f"[::1]:{cluster.dist_port}"
    assert len(info["ranks"]) == 2


def test_gpu_ordinal_past_visible_devices_fails_the_group(cluster: Cluster) -> None:
    worker = cluster.start(1, cluster.group_args(2, 1, "--tp", "4"), CUDA_VISIBLE_DEVICES="3")
    head = cluster.start(0, cluster.group_args(2, 0, "--tp", "4"))
    assert worker.wait_exit() != 0
    assert head.wait_exit() != 0
    assert "invalid device ordinal" in worker.log()
    assert "invalid device ordinal" in head.log()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.0.0.1:5000", ("10.0.0.1", 5000)), ("head-0:29500", ("head-0", 29500)),
     ("[fd00::1]:5000", ("fd00::1", 5000))],
)  # fmt: skip
def test_dist_init_addr_parses_hosts_and_bracketed_ipv6(
    value: str, expected: tuple[str, int]
) -> None:
    assert group.parse_dist_init_addr(value) == expected


@pytest.mark.parametrize("value", ["10.0.0.1", "fd00::1:5000", "[fd00::1]5000", "h:0", "h:x"])
def test_dist_init_addr_refuses_malformed_values(value: str) -> None:
    with pytest.raises(ValueError, match="dist-init-addr"):
        group.parse_dist_init_addr(value)


def test_parser_takes_sglang_prefixes_and_aliases() -> None:
    args = server_args.parse_server_args(
        ["--model", "m", "--tp", "4", "--dp", "2", "--ep", "8", "--pp-size", "2"]
    )
    assert (args.model_path, args.tp_size, args.dp_size, args.ep_size) == ("m", 4, 2, 8)
    assert (args.pp_size, args.host, args.port, args.dist_timeout) == (2, "127.0.0.1", 30000, None)


def test_generation_is_deterministic_and_honours_stop_and_max_tokens() -> None:
    first = generation.generate("prompt", None, [], 0.0, None, 0)
    assert first == generation.generate("prompt", None, [], 0.0, 123, 5)
    assert first.finish_reason == "stop" and first.tokens
    capped = generation.generate("prompt", 2, [], 0.0, None, 0)
    assert (capped.text, capped.finish_reason) == (
        "".join(choice.token for choice in first.tokens[:2]),
        "length",
    )
    stop_word = first.tokens[1].token.strip()
    stopped = generation.generate("prompt", None, [stop_word], 0.0, None, 0)
    assert stopped.matched_stop == stop_word and stop_word not in stopped.text
    sampled = {generation.generate("prompt", None, [], 1.0, 7, index).text for index in range(4)}
    assert len(sampled) > 1


def test_metrics_only_with_enable_metrics(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--host", "127.0.0.1", "--port",
                      str(cluster.http_port)])
    cluster.wait_ready()
    assert http(cluster.url("/metrics"))[0] == 404


def test_metrics_count_the_requests_served_and_need_no_api_key(cluster: Cluster) -> None:
    from slurm_sglang.metrics import parse_exposition, summarize_server

    cluster.start(0, ["--model-path", MODEL, "--host", "127.0.0.1", "--port",
                      str(cluster.http_port), "--api-key", "s3cret", "--enable-metrics"])
    cluster.wait_ready()
    key = {"Authorization": "Bearer s3cret"}
    for _ in range(3):
        status, _, _ = http(cluster.url("/v1/completions"),
                            {"model": MODEL, "prompt": "Hi", "max_tokens": 5}, key)
        assert status == 200
    # n=2 is two of sglang's requests.
    assert http(cluster.url("/v1/completions"),
                {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "n": 2}, key)[0] == 200
    status, headers, text = http(cluster.url("/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = summarize_server(parse_exposition(text)[1])
    assert values["requests"] == 5 and values["generation_tokens"] == 25
    assert values["running"] == 0


def _stream_payloads(text: str) -> list[str]:
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def test_fault_no_tokens_answers_200_with_no_token(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)],
                  SGLANG_STANDIN_FAULT="no-tokens")  # fmt: skip
    cluster.wait_ready()
    body = {"text": "Tell me", "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    status, _, text = http(cluster.url("/generate"), body)
    assert status == 200
    assert (json.loads(text)["text"], json.loads(text)["meta_info"]["completion_tokens"]) == ("", 0)
    status, _, text = http(cluster.url("/v1/completions"),
                           {"model": MODEL, "prompt": "Tell me", "max_tokens": 8})
    assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 0


def test_fault_error_answers_every_generation_with_500(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)],
                  SGLANG_STANDIN_FAULT="error")  # fmt: skip
    cluster.wait_ready()
    for path, body in (("/generate", {"text": "Hi", "stream": True}),
                       ("/v1/completions", {"model": MODEL, "prompt": "Hi"}),
                       ("/v1/chat/completions",
                        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})):
        status, _, text = http(cluster.url(path), body)
        assert status == 500 and "SGLANG_STANDIN_FAULT=error" in text, path
    assert http(cluster.url("/v1/models"))[0] == 200  # only generations fail


def test_fault_truncate_ends_streams_without_their_final_chunk(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)],
                  SGLANG_STANDIN_FAULT="truncate")  # fmt: skip
    cluster.wait_ready()
    body: dict[str, Any] = {"text": "Tell me", "stream": True,
                            "sampling_params": {"max_new_tokens": 10, "ignore_eos": True}}
    status, _, text = http(cluster.url("/generate"), body)
    payloads = _stream_payloads(text)
    assert status == 200 and "[DONE]" not in payloads
    events = [json.loads(payload) for payload in payloads]
    assert [event["meta_info"]["completion_tokens"] for event in events] == [1, 2, 3, 4, 5]
    assert all(event["meta_info"]["finish_reason"] is None for event in events)
    # A whole (non-streamed) answer is not cut.
    whole = json.loads(http(cluster.url("/generate"), {**body, "stream": False})[2])
    assert whole["meta_info"]["completion_tokens"] == 10


def test_faults_are_refused_unless_known() -> None:
    from slurm_sglang.sandbox.standin.sglang.settings import StandinSettings

    assert StandinSettings.from_environ({"SGLANG_STANDIN_FAULT": "truncate"}).fault == "truncate"
    with pytest.raises(ValueError, match="SGLANG_STANDIN_FAULT must be one of"):
        StandinSettings.from_environ({"SGLANG_STANDIN_FAULT": "slow"})


def test_fault_every_nth_request_only(cluster: Cluster) -> None:
    cluster.start(0, ["--model-path", MODEL, "--port", str(cluster.http_port)],
                  SGLANG_STANDIN_FAULT="error", SGLANG_STANDIN_FAULT_EVERY="3")  # fmt: skip
    cluster.wait_ready()
    statuses = [http(cluster.url("/generate"), {"text": f"r{i}"})[0] for i in range(7)]
    assert statuses == [200, 200, 500, 200, 200, 500, 200]
    from slurm_sglang.sandbox.standin.sglang.settings import StandinSettings

    with pytest.raises(ValueError, match="SGLANG_STANDIN_FAULT_EVERY must be a whole number"):
        StandinSettings.from_environ({"SGLANG_STANDIN_FAULT_EVERY": "0"})
