"""Smoke test of a served endpoint: the seed's API checks, each one row of a pass/fail table.

Standard library HTTP only (urllib), so the check runs wherever the toolkit runs, with no
OpenAI client installed. Requests go straight to the URL: proxies from the environment are
ignored, since the endpoint is a cluster node or a local tunnel.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT_S = 30.0
PROMPT = "The capital of France is"
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
BATCH_PROMPTS = ["One, two, three,", "The sky is", "SLURM schedules"]
SHORT_MAX_TOKENS = 4
MAX_TOKENS = 16
TOP_LOGPROBS = 2
_DETAIL_WIDTH = 70

Json = Any


class SmokeFailure(Exception):
    """A check's expectation not met; the message is the table's detail."""


@dataclass(frozen=True)
class SmokeCheck:
    """One row: which API was checked, whether it passed, how long it took, and what was seen."""

    name: str
    passed: bool
    milliseconds: float
    detail: str


@dataclass
class SmokeReport:
    """Every check against one endpoint, in the order they ran."""

    url: str
    model: str
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[SmokeCheck]:
        """The checks that did not pass."""
        return [check for check in self.checks if not check.passed]

    def format_table(self) -> str:
        """A plain-text table, one row per check, and a verdict line."""
        width = max([len("check")] + [len(check.name) for check in self.checks])
        lines = [f"{'check':<{width}}  result      ms  detail"]
        for check in self.checks:
            verdict = "pass" if check.passed else "FAIL"
            detail = check.detail.replace("\n", " ")
            if len(detail) > _DETAIL_WIDTH:
                detail = detail[: _DETAIL_WIDTH - 3] + "..."
            lines.append(f"{check.name:<{width}}  {verdict:<6} {check.milliseconds:7.0f}  {detail}")
        passed = len(self.checks) - len(self.failed)
        summary = "ok" if self.ok else "FAILED"
        lines.append(f"smoke: {summary}, {passed}/{len(self.checks)} checks passed "
                     f"against {self.url} (model {self.model})")
        return "\n".join(lines)

    def text(self) -> str:
        """What `smoke` prints: the table."""
        return self.format_table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for `--json`."""
        return {
            "url": self.url,
            "model": self.model,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "passed": c.passed, "ms": round(c.milliseconds, 1),
                 "detail": c.detail}
                for c in self.checks
            ],
        }


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but take the API key only to the scheme, host and port it was for.

    urllib copies every header onto the redirected request: a redirect would hand the key to
    whatever host the answer names.
    """

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        """The redirected request, without Authorization when it leaves the origin."""
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class _Client:
    """JSON over HTTP to one endpoint, with the API key on every request."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        # An OpenAI base URL (http://host:port/v1) names the same server.
        self.base = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  _SameOriginCredentials())

    def _request(self, path: str, body: Json | None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=self.headers)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        return request

    def call(self, path: str, body: Json | None = None) -> Json:
        """GET (or POST when a body is given) and return the decoded JSON answer."""
        try:
            with self.opener.open(self._request(path, body), timeout=self.timeout) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            raise SmokeFailure(f"HTTP {error.code}: {_error_text(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            raise SmokeFailure(f"no answer from {self.base}{path}: {_reason(error)}") from None
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            raise SmokeFailure(f"{path} answered with something that is not JSON: "
                               f"{text[:80]!r}") from None

    def status(self, path: str) -> int:
        """GET and return only the HTTP status."""
        try:
            with self.opener.open(self._request(path, None), timeout=self.timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (urllib.error.URLError, OSError) as error:
            raise SmokeFailure(f"no answer from {self.base}{path}: {_reason(error)}") from None

    def stream(self, path: str, body: Json) -> Iterator[Json]:
        """POST with stream on and yield each server-sent event's JSON, up to [DONE]."""
        try:
            response = self.opener.open(self._request(path, body), timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise SmokeFailure(f"HTTP {error.code}: {_error_text(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            raise SmokeFailure(f"no answer from {self.base}{path}: {_reason(error)}") from None
        with response:
            for raw in response:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    return
                yield json.loads(payload)
        raise SmokeFailure("the stream ended without data: [DONE]")


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error)


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read().decode("utf-8", errors="replace")
    except OSError:
        return str(error.reason)
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:120] or str(error.reason)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body.get("detail")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            return str(message)
    return text[:120]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def _first_choice(body: Json) -> Json:
    choices: Json = body.get("choices") if isinstance(body, dict) else None
    _expect(isinstance(choices, list) and len(choices) > 0, f"no choices in {str(body)[:80]}")
    return choices[0]


def _completion_tokens(body: Json) -> int | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class _Checks:
    """The checks themselves; each returns its detail or raises SmokeFailure."""

    def __init__(self, client: _Client, model: str) -> None:
        self.client = client
        self.model = model

    def _complete(self, **fields: Any) -> Json:
        return self.client.call("/v1/completions", {"model": self.model, **fields})

    def _chat(self, **fields: Any) -> Json:
        return self.client.call("/v1/chat/completions",
                                {"model": self.model, "messages": CHAT_MESSAGES, **fields})

    def health(self) -> str:
        status = self.client.status("/health")
        _expect(status == 200, f"/health answered {status} (503: still warming up)")
        return "/health 200"

    def completion(self) -> str:
        body = self._complete(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        text = _first_choice(body).get("text")
        _expect(isinstance(text, str) and text != "", "empty completion text")
        return f"{_quoted(text)}, {_completion_tokens(body)} tokens"

    def batch_completion(self) -> str:
        body = self._complete(prompt=BATCH_PROMPTS, max_tokens=SHORT_MAX_TOKENS, temperature=0)
        choices = body.get("choices") or []
        _expect(len(choices) == len(BATCH_PROMPTS),
                f"{len(choices)} choices for {len(BATCH_PROMPTS)} prompts")
        indexes = sorted(choice.get("index") for choice in choices)
        _expect(indexes == list(range(len(BATCH_PROMPTS))), f"choice indexes {indexes}")
        empty = [choice["index"] for choice in choices if not choice.get("text")]
        _expect(not empty, f"empty text for prompt(s) {empty}")
        return f"{len(choices)} prompts, {len(choices)} choices"

    def chat(self) -> str:
        body = self._chat(max_tokens=MAX_TOKENS, temperature=0)
        message: Json = _first_choice(body).get("message") or {}
        _expect(message.get("role") == "assistant", f"role {message.get('role')!r}")
        content = message.get("content")
        _expect(isinstance(content, str) and content != "", "empty assistant message")
        return f"{_quoted(content)}, {_completion_tokens(body)} tokens"

    def sampling_parameters(self) -> str:
        fields = {"prompt": PROMPT, "max_tokens": SHORT_MAX_TOKENS, "temperature": 0,
                  "top_p": 0.9}
        first = self._complete(**fields)
        second = self._complete(**fields)
        tokens = _completion_tokens(first)
        _expect(tokens is not None, "no usage.completion_tokens in the answer")
        _expect(tokens is not None and tokens <= SHORT_MAX_TOKENS,
                f"max_tokens {SHORT_MAX_TOKENS} gave {tokens} tokens")
        first_text = _first_choice(first).get("text")
        second_text = _first_choice(second).get("text")
        _expect(first_text == second_text,
                f"temperature 0 gave two texts: {_quoted(first_text or '')} and "
                f"{_quoted(second_text or '')}")
        return (f"max_tokens {SHORT_MAX_TOKENS} -> {tokens} tokens; temperature 0 + top_p 0.9 "
                "repeatable")

    def streaming_chat(self) -> str:
        pieces: list[str] = []
        events = 0
        for event in self.client.stream("/v1/chat/completions", {
                "model": self.model, "messages": CHAT_MESSAGES, "max_tokens": MAX_TOKENS,
                "temperature": 0, "stream": True}):
            events += 1
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    pieces.append(content)
        _expect(pieces != [], f"{events} events, no delta content")
        return f"{events} events, {_quoted(''.join(pieces))}"

    def streaming_completion(self) -> str:
        pieces: list[str] = []
        events = 0
        for event in self.client.stream("/v1/completions", {
                "model": self.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                "temperature": 0, "stream": True}):
            events += 1
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    pieces.append(choice["text"])
        _expect(len(pieces) > 1, f"{events} events, {len(pieces)} with text (not streamed)")
        return f"{events} events, {_quoted(''.join(pieces))}"

    def logprobs(self) -> str:
        completion = _first_choice(self._complete(
            prompt=PROMPT, max_tokens=SHORT_MAX_TOKENS, temperature=0, logprobs=TOP_LOGPROBS))
        found: Json = completion.get("logprobs") or {}
        values: Json = found.get("token_logprobs")
        _expect(isinstance(values, list) and values != [], "completion: no token_logprobs")
        _expect(all(isinstance(v, (int, float)) and v <= 0 for v in values if v is not None),
                f"completion: logprobs not <= 0: {values}")
        chat = _first_choice(self._chat(max_tokens=SHORT_MAX_TOKENS, temperature=0,
                                        logprobs=True, top_logprobs=TOP_LOGPROBS))
        content: Json = (chat.get("logprobs") or {}).get("content")
        _expect(isinstance(content, list) and content != [], "chat: no logprobs.content")
        top = content[0].get("top_logprobs")
        _expect(isinstance(top, list) and len(top) == TOP_LOGPROBS,
                f"chat: top_logprobs {TOP_LOGPROBS} gave {top}")
        return f"completion {len(values)} tokens, chat {len(content)} tokens x top {len(top)}"

    def stop_sequences(self) -> str:
        free = _first_choice(self._complete(prompt=PROMPT, max_tokens=MAX_TOKENS,
                                            temperature=0)).get("text") or ""
        words = free.split()
        _expect(len(words) >= 2, f"too short to pick a stop word from: {_quoted(free)}")
        stop = words[len(words) // 2]
        stopped = _first_choice(self._complete(prompt=PROMPT, max_tokens=MAX_TOKENS,
                                               temperature=0, stop=[stop]))
        text = stopped.get("text") or ""
        _expect(stop not in text, f"stop {stop!r} still in {_quoted(text)}")
        _expect(len(text) < len(free), f"stop {stop!r} did not shorten {_quoted(text)}")
        _expect(stopped.get("finish_reason") == "stop",
                f"finish_reason {stopped.get('finish_reason')!r}, expected 'stop'")
        return f"stop {stop!r}: {len(free)} -> {len(text)} chars, finish_reason stop"

    def native_generate(self) -> str:
        body = self.client.call("/generate", {
            "text": PROMPT,
            "sampling_params": {"max_new_tokens": SHORT_MAX_TOKENS, "temperature": 0}})
        _expect(isinstance(body, dict), f"answer is not an object: {str(body)[:80]}")
        text = body.get("text")
        _expect(isinstance(text, str) and text != "", "empty text")
        meta = body.get("meta_info") or {}
        tokens = meta.get("completion_tokens")
        _expect(isinstance(tokens, int) and tokens <= SHORT_MAX_TOKENS,
                f"max_new_tokens {SHORT_MAX_TOKENS} gave completion_tokens {tokens}")
        return f"{_quoted(text)}, {tokens} tokens"


def _timed(name: str, check: Callable[[], str]) -> SmokeCheck:
    started = time.perf_counter()
    try:
        detail = check()
        passed = True
    except SmokeFailure as failure:
        detail, passed = str(failure), False
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        # A malformed answer (JSON of the wrong shape) is a failed check, not a crash.
        detail, passed = f"unexpected answer: {type(error).__name__}: {error}", False
    return SmokeCheck(name, passed, (time.perf_counter() - started) * 1000, detail)


def _models(client: _Client, model: str | None) -> tuple[SmokeCheck, str]:
    found: list[str] = []

    def list_models() -> str:
        body = client.call("/v1/models")
        data: Json = body.get("data") if isinstance(body, dict) else None
        _expect(isinstance(data, list) and data != [], "no models listed")
        found.extend(str(item.get("id")) for item in data)
        if model is not None:
            _expect(model in found, f"{model!r} not served (served: {', '.join(found)})")
        return ", ".join(found)

    check = _timed("models", list_models)
    return check, model or (found[0] if found else "default")


def run_smoke(url: str, model: str | None = None, api_key: str | None = None,
              timeout: float = DEFAULT_TIMEOUT_S) -> SmokeReport:
    """Run every API check against ``url`` (http://HOST:PORT[/v1]); ``timeout`` is per request."""
    client = _Client(url, api_key, timeout)
    health = _timed("health", _Checks(client, model or "").health)
    models, chosen = _models(client, model)
    report = SmokeReport(client.base, chosen, [health, models])
    checks = _Checks(client, chosen)
    for name, check in (
        ("completion", checks.completion),
        ("batch completion", checks.batch_completion),
        ("chat", checks.chat),
        ("sampling parameters", checks.sampling_parameters),
        ("streaming chat", checks.streaming_chat),
        ("streaming completion", checks.streaming_completion),
        ("logprobs", checks.logprobs),
        ("stop sequences", checks.stop_sequences),
        ("native /generate", checks.native_generate),
    ):
        report.checks.append(_timed(name, check))
    return report


__all__ = ["SmokeCheck", "SmokeReport", "run_smoke"]
