"""The HTTP side: the head's API server and the worker ranks' dummy health server.

Threaded stdlib http.server speaking HTTP/1.1 with keep-alive and chunked server-sent
events, so OpenAI clients and sglang-router can use it as they use sglang's uvicorn.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .chat import ChatJob
from .completions import CompletionJob
from .generation import Generation
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .native_generate import GenerateJob
from .request_fields import DONE, Body, RequestError, error_body
from .service import HeadService
from .standin_log import fatal, log

FLUSH_CACHE_TEXT = (
    "Cache flushed.\nPlease check backend logs for more details. (When there are running or "
    "waiting requests, the operation will not be performed.)\n"
)


class StandinHTTPServer(ThreadingHTTPServer):
    """A threaded server with a deep accept queue, on IPv4 or IPv6 as --host says."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)


class _Handler(BaseHTTPRequestHandler):
    """Shared plumbing: JSON and SSE replies, each with the X-Standin-Node header."""

    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""
    node_name = ""
    server_name = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs stay off, as sglang's are unless --log-requests."""

    def _start(self, status: int, content_type: str | None, length: int | None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("X-Standin-Node", self.node_name)
        self.send_header("X-Standin-Server", self.server_name)
        self.end_headers()

    def reply_bytes(self, status: int, data: bytes, content_type: str | None) -> None:
        """Send a complete response with a body (possibly empty)."""
        self._start(status, content_type, len(data))
        self.wfile.write(data)

    def reply_json(self, status: int, body: Any) -> None:
        """Send a JSON response."""
        self.reply_bytes(status, json.dumps(body).encode(), "application/json")

    def reply_events(self, events: Iterator[Body | str]) -> None:
        """Stream server-sent events in HTTP chunks; stop quietly if the client leaves."""
        self._start(200, "text/event-stream", None)
        try:
            for event in events:
                payload = event if event == DONE else json.dumps(event)
                data = f"data: {payload}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class WorkerHealthHandler(_Handler):
    """sglang's launch_dummy_health_check_server: 200 once this node has loaded."""

    def do_GET(self) -> None:
        """Answer /health, /health_generate and /ping with 200."""
        if self.path.split("?")[0] in ("/health", "/health_generate", "/ping"):
            self.reply_bytes(200, b"", None)
        else:
            self.reply_json(404, {"detail": "Not Found"})


class HeadHandler(_Handler):
    """The head's API: health, model and server info, OpenAI and native generation."""

    service: HeadService
    # The generations of the request this connection is serving, once parsed (for /metrics).
    admitted: list[Generation] | None = None
    started_at = 0.0
    # The fault this request gets (SGLANG_STANDIN_FAULT, on every FAULT_EVERY-th request).
    fault = ""

    def do_GET(self) -> None:
        """Route GET requests."""
        self._route("GET")

    def do_POST(self) -> None:
        """Route POST requests."""
        self._route("POST")

    def _route(self, method: str) -> None:
        path = self.path.split("?")[0].rstrip("/") or "/"
        body = self.read_body() if method == "POST" else b""
        if path.startswith("/health"):
            if path not in ("/health", "/health_generate"):
                self.reply_json(404, {"detail": "Not Found"})
            else:
                self.reply_bytes(200 if self.service.ready.is_set() else 503, b"", None)
            return
        # sglang's API-key middleware lets /metrics through (utils/auth.py: for Prometheus
        # scraping without secrets); without --enable-metrics it is not mounted at all.
        if path == "/metrics" and self.service.metrics is not None:
            self.reply_bytes(200, self.service.metrics.render().encode(), METRICS_CONTENT_TYPE)
            return
        if not self.service.authorized(self.headers.get("Authorization")):
            self.reply_json(401, {"error": "Unauthorized"})
            return
        gets: dict[str, Callable[[], Any]] = {
            "/v1/models": self.service.models,
            "/model_info": self.service.model_info,
            "/get_model_info": self.service.model_info,
            "/server_info": self.service.server_info,
            "/get_server_info": self.service.server_info,
            "/get_load": self.service.load,
            f"/v1/models/{self.service.name}": self.service.model_card,
        }
        posts: dict[str, Callable[[Body], None]] = {
            "/v1/completions": self._completions,
            "/v1/chat/completions": self._chat,
            "/generate": self._generate,
        }
        if path == "/flush_cache":
            self.reply_bytes(200, FLUSH_CACHE_TEXT.encode(), "text/plain; charset=utf-8")
        elif path in gets and method == "GET":
            self.reply_json(200, gets[path]())
        elif path in posts and method == "POST":
            self._generation(posts[path], body)
        elif path in gets or path in posts:
            self.reply_json(405, {"detail": "Method Not Allowed"})
        else:
            self.reply_json(404, {"detail": "Not Found"})

    def _generation(self, endpoint: Callable[[Body], None], raw: bytes) -> None:
        try:
            request = json.loads(raw or b"{}")
            if not isinstance(request, dict):
                raise RequestError("the request body must be a JSON object")
            self.fault = self.service.fault_now()
            if self.fault == "error":
                self.reply_json(500, error_body("the stand-in was told to fail "
                                                "(SGLANG_STANDIN_FAULT=error)", 500))
                return
            if self.fault == "no-tokens":
                _no_tokens(request)
            self.service.count_running(+1)
            self.admitted = None
            self.started_at = time.monotonic()
            try:
                self.service.before_forward()
                if self.service.first_token_seconds > 0:
                    time.sleep(self.service.first_token_seconds)
                endpoint(request)
            finally:
                self.service.count_running(-1)
                # A request that ended before its answer was complete (a client gone).
                self._finished(bool(request.get("stream")))
        except json.JSONDecodeError as error:
            self.reply_json(400, error_body(f"invalid JSON body: {error}"))
        except RequestError as error:
            self.reply_json(400, error_body(str(error)))

    def _admit(self, generations: list[Generation]) -> None:
        """The request is parsed and in the batch: its tokens count as used from now."""
        self.admitted = generations
        if self.service.metrics is not None:
            self.service.metrics.started(_tokens(generations))

    def _finished(self, streaming: bool) -> None:
        """Count the request as finished, before its answer (or its [DONE]) goes out, as
        sglang's tokenizer does: a client that has its answer reads it in /metrics."""
        metrics, generations = self.service.metrics, self.admitted
        if metrics is None or generations is None:
            return
        self.admitted = None
        seconds = time.monotonic() - self.started_at
        first_token = self.service.first_token_seconds + self.service.token_seconds
        metrics.finished(_tokens(generations),
                         [(g.prompt_tokens, len(g.tokens)) for g in generations], streaming,
                         min(first_token, seconds), seconds)

    def _answer(self, job: CompletionJob | ChatJob | GenerateJob) -> None:
        if job.stream:
            events = job.events(self._pace)
            if self.fault == "truncate":
                events = _truncated(events, len(job.generations[0].tokens) // 2)
            self.reply_events(self._counted(events))
        else:
            body = job.response(self._pace)
            self._finished(False)
            self.reply_json(200, body)

    def _counted(self, events: Iterator[Body | str]) -> Iterator[Body | str]:
        for event in events:
            if event == DONE:
                self._finished(True)
            yield event
        self._finished(True)

    def _pace(self, tokens: int) -> None:
        if self.service.token_seconds > 0:
            time.sleep(self.service.token_seconds * tokens)

    def _completions(self, request: Body) -> None:
        job = CompletionJob.from_body(request, self.service.name, self.service.context_length)
        self._admit(job.generations)
        self._answer(job)

    def _chat(self, request: Body) -> None:
        job = ChatJob.from_body(request, self.service.name, self.service.context_length)
        self._admit(job.generations)
        self._answer(job)

    def _generate(self, request: Body) -> None:
        job = GenerateJob.from_body(request, self.service.context_length)
        self._admit(job.generations)
        self._answer(job)


def _tokens(generations: list[Generation]) -> int:
    return sum(g.prompt_tokens + len(g.tokens) for g in generations)


def _truncated(events: Iterator[Body | str], kept: int) -> Iterator[Body | str]:
    """SGLANG_STANDIN_FAULT=truncate: the first `kept` events (at least one), then the stream
    ends cleanly at the HTTP level, without its final chunk (finish_reason, usage) or [DONE]."""
    for number, event in enumerate(events):
        if number >= max(kept, 1) or event == DONE:
            return
        yield event


def _no_tokens(request: Body) -> None:
    """SGLANG_STANDIN_FAULT=no-tokens: every API's length limit set to 0, answers stay 200."""
    params = request.get("sampling_params")
    request["sampling_params"] = {**(params if isinstance(params, dict) else {}),
                                  "max_new_tokens": 0}
    request["max_tokens"] = 0
    request.pop("max_completion_tokens", None)


def bind_http(host: str, port: int, handler: type[_Handler], node_name: str) -> StandinHTTPServer:
    """Bind --host:--port as uvicorn would, exiting with uvicorn's message if it cannot."""
    handler.node_name = node_name
    handler.server_name = f"{node_name}:{port}"
    try:
        server = StandinHTTPServer(host, port, handler)
    except OSError as error:
        fatal(
            f"ERROR:    [Errno {error.errno}] error while attempting to bind on address "
            f"({host!r}, {port}): {(error.strerror or str(error)).lower()}"
        )
    shown = f"[{host}]" if ":" in host else host
    log(f"INFO:     Uvicorn running on http://{shown}:{port} (Press CTRL+C to quit)")
    return server
