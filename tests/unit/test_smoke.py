"""The smoke checker against real HTTP servers on loopback.

Passing runs use the sglang stand-in (a real process, as a user's server would be); failing
runs use a small OpenAI-style server written here whose faults each break one API promise,
so every check is shown able to fail for the reason it names.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang.smoke import SmokeCheck, SmokeReport, run_smoke

STANDIN_ROOT = Path(__file__).resolve().parents[2] / "slurm_sglang" / "sandbox" / "standin"
MODEL = "/models/standin-7b"
CHECK_NAMES = [
    "health", "models", "completion", "batch completion", "chat", "sampling parameters",
    "streaming chat", "streaming completion", "logprobs", "stop sequences", "native /generate",
]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _health(url: str) -> int:
    try:
        with _OPENER.open(f"{url}/health", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One stand-in server (one node) on loopback with an API key; yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("standin") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(STANDIN_ROOT), "SGLANG_STANDIN_WARMUP_SECONDS": "0.1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "sglang.launch_server", "--model-path", MODEL,
             "--host", "127.0.0.1", "--port", str(port), "--api-key", "sesame"],
            stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _health(url) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"stand-in did not become healthy:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def test_every_check_passes_against_the_standin(standin: str) -> None:
    report = run_smoke(standin, api_key="sesame")
    assert [check.name for check in report.checks] == CHECK_NAMES
    assert report.failed == [], report.format_table()
    assert report.ok
    assert report.model == MODEL
    assert report.format_table().splitlines()[-1] == (
        f"smoke: ok, 11/11 checks passed against {standin} (model {MODEL})")


def test_an_openai_base_url_names_the_same_server(standin: str) -> None:
    report = run_smoke(standin + "/v1/", api_key="sesame")
    assert report.url == standin
    assert report.ok, report.format_table()


def test_a_missing_api_key_fails_the_api_checks_but_not_health(standin: str) -> None:
    report = run_smoke(standin + "/")
    assert not report.ok
    assert [check.name for check in report.checks if check.passed] == ["health"]
    models = report.checks[1]
    assert models.name == "models" and models.detail.startswith("HTTP 401")


def test_a_model_that_is_not_served_is_named_with_the_served_ones(standin: str) -> None:
    report = run_smoke(standin, model="llama-9000", api_key="sesame")
    models = report.checks[1]
    assert not models.passed
    assert models.detail == f"'llama-9000' not served (served: {MODEL})"


def test_nothing_listening_fails_every_check_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    report = run_smoke(url, timeout=2)
    assert [check.name for check in report.checks] == CHECK_NAMES
    assert report.failed == report.checks
    assert all(check.detail.startswith(f"no answer from {url}/") for check in report.checks)
    assert report.format_table().splitlines()[-1].startswith("smoke: FAILED, 0/11 checks passed")


# ---- a server with faults -------------------------------------------------------------------

class FaultyApi(BaseHTTPRequestHandler):
    """An OpenAI-style server whose text is ten words from the prompt; `faults` break promises."""

    faults: frozenset[str] = frozenset()
    counter = itertools.count()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _tokens(self, prompt: str, limit: int | None, temperature: float,
                stop: list[str], native: bool = False) -> tuple[list[str], str]:
        start = sum(map(ord, prompt))
        if temperature > 0 or "random" in self.faults:
            start += next(self.counter)
        tokens = [" " + WORDS[(start + i) % len(WORDS)] for i in range(10)]
        if limit is not None and (native or "ignore max_tokens" not in self.faults):
            tokens = tokens[:limit]
        if stop and "ignore stop" not in self.faults:
            for index, token in enumerate(tokens):
                if any(word in token for word in stop):
                    return tokens[:index], "stop"
        return tokens, "length"

    def _stream(self, events: list[Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        if "no done" not in self.faults:
            self.wfile.write(b"data: [DONE]\n\n")

    def do_GET(self) -> None:
        """/health and /v1/models."""
        if self.path == "/health":
            self._send(503 if "warming up" in self.faults else 200, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "faulty", "object": "model"}]})
        else:
            self._send(404, {"message": f"no route {self.path}"})

    def do_POST(self) -> None:
        """/v1/completions, /v1/chat/completions and /generate."""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        temperature = float(body.get("temperature", 1.0))
        stop = body.get("stop") or []
        if self.path == "/generate":
            params = body.get("sampling_params", {})
            limit = None if "ignore max_new_tokens" in self.faults else params["max_new_tokens"]
            tokens, _ = self._tokens(body["text"], limit, 0, [], native=True)
            self._send(200, {"text": "".join(tokens),
                             "meta_info": {"completion_tokens": len(tokens)}})
            return
        chat = self.path == "/v1/chat/completions"
        prompts = [json.dumps(body["messages"])] if chat else body["prompt"]
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if "one choice" in self.faults:
            prompts = prompts[:1]
        choices, used = [], 0
        for index, prompt in enumerate(prompts):
            tokens, reason = self._tokens(prompt, body.get("max_tokens"), temperature, stop)
            used += len(tokens)
            choice: dict[str, Any] = {"index": index, "finish_reason": reason, "logprobs": None}
            if chat:
                role = None if "no role" in self.faults else "assistant"
                choice["message"] = {"role": role, "content": "".join(tokens).lstrip()}
                if body.get("logprobs") and "no logprobs" not in self.faults:
                    top = [{"token": t, "logprob": -1.0} for t in tokens[:body["top_logprobs"]]]
                    choice["logprobs"] = {"content": [
                        {"token": t, "logprob": -0.5, "top_logprobs": top} for t in tokens]}
            else:
                choice["text"] = "".join(tokens)
                if body.get("logprobs") is not None and "no logprobs" not in self.faults:
                    choice["logprobs"] = {"tokens": tokens,
                                          "token_logprobs": [-0.5] * len(tokens)}
            choices.append((choice, tokens))
        if body.get("stream"):
            events = []
            for choice, tokens in choices:
                for token in tokens:
                    part = {"delta": {"content": token}} if chat else {"text": token}
                    events.append({"choices": [{"index": choice["index"], **part}]})
            self._stream(events)
            return
        self._send(200, {"choices": [choice for choice, _ in choices],
                         "usage": {"completion_tokens": used}})


@pytest.fixture
def faulty() -> Iterator[tuple[str, type[FaultyApi]]]:
    """The faulty server on a free loopback port; set `handler.faults` before a run."""
    handler = type("Handler", (FaultyApi,), {"faults": frozenset(), "counter": itertools.count()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_faulty_server_without_faults_passes(faulty: tuple[str, type[FaultyApi]]) -> None:
    url, _ = faulty
    report = run_smoke(url)
    assert report.failed == [], report.format_table()


@pytest.mark.parametrize(("fault", "failing", "detail"), [
    ("warming up", ["health"], "/health answered 503 (503: still warming up)"),
    ("one choice", ["batch completion"], "1 choices for 3 prompts"),
    ("no role", ["chat"], "role None"),
    ("ignore max_tokens", ["sampling parameters"], "max_tokens 4 gave 10 tokens"),
    ("random", ["sampling parameters"], "temperature 0 gave two texts"),
    ("no done", ["streaming chat", "streaming completion"],
     "the stream ended without data: [DONE]"),
    ("no logprobs", ["logprobs"], "completion: no token_logprobs"),
    ("ignore stop", ["stop sequences"], "stop 'alpha' still in"),
    ("ignore max_new_tokens", ["native /generate"], "max_new_tokens 4 gave completion_tokens 10"),
])
def test_each_broken_promise_fails_its_check(faulty: tuple[str, type[FaultyApi]], fault: str,
                                              failing: list[str], detail: str) -> None:
    url, handler = faulty
    handler.faults = frozenset({fault})
    report = run_smoke(url)
    assert [check.name for check in report.failed] == failing, report.format_table()
    assert report.failed[0].detail.startswith(detail)
    assert not report.ok


# ---- the table and the JSON ------------------------------------------------------------------

def test_table_rows_verdicts_and_long_details_cut_to_one_line() -> None:
    report = SmokeReport("http://10.0.0.1:30000", "m", [
        SmokeCheck("health", True, 3.2, "/health 200"),
        SmokeCheck("chat", False, 1234.5, "line one\nline two " + "x" * 100),
    ])
    lines = report.format_table().splitlines()
    assert lines[0] == "check   result      ms  detail"
    assert lines[1] == "health  pass         3  /health 200"
    assert lines[2].startswith("chat    FAIL      1234  line one line two xxx")
    assert lines[2].endswith("...") and len(lines[2]) == len("chat    FAIL      1234  ") + 70
    assert lines[3] == "smoke: FAILED, 1/2 checks passed against http://10.0.0.1:30000 (model m)"
    assert [check.name for check in report.failed] == ["chat"]


def test_json_summary_round_trips_and_an_empty_report_is_not_ok() -> None:
    report = SmokeReport("http://h:1", "m", [SmokeCheck("models", True, 1.25, "m")])
    assert json.loads(json.dumps(report.to_dict())) == {
        "url": "http://h:1", "model": "m", "ok": True,
        "checks": [{"name": "models", "passed": True, "ms": 1.2, "detail": "m"}],
    }
    assert not SmokeReport("http://h:1", "m").ok
