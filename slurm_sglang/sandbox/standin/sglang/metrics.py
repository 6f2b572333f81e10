"""sglang 0.5.23's /metrics (--enable-metrics): its names, types, help texts and labels.

Read from sglang/srt/observability/metrics_collector.py of the real package: the tokenizer's
counters and histograms (labels model_name, engine_type, and is_streaming where sglang adds
it) and the scheduler's gauges (model_name, engine_type, tp_rank, pp_rank, moe_ep_rank). The
numbers come from the requests this head really served, so a test can send N requests and
read N. The text is prometheus_client's in multiprocess mode, as sglang serves it: labels in
sorted order, counters' HELP and TYPE named with _total, no _created samples.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_TYPE = "unified"  # DisaggregationMode.to_engine_type("null")
DEFAULT_MAX_TOTAL_TOKENS = 262144
THROUGHPUT_WINDOW_SECONDS = 5.0

# sglang's default buckets (TokenizerMetricsCollector).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600,
               1200, 1800, 2400)

COUNTERS = (
    ("sglang:prompt_tokens_total", "Number of prefill tokens processed."),
    ("sglang:generation_tokens_total", "Number of generation tokens processed."),
    ("sglang:num_requests_total", "Number of requests processed."),
)
HISTOGRAMS = (
    ("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
     TTFT_BUCKETS),
    ("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
     E2E_BUCKETS),
)
GAUGES = (
    ("sglang:num_running_reqs", "The number of running requests."),
    ("sglang:num_queue_reqs", "The number of requests in the waiting queue."),
    ("sglang:gen_throughput", "The generation throughput (token/s)."),
    ("sglang:cache_hit_rate", "The prefix cache hit rate."),
    ("sglang:token_usage", "The token usage."),
    ("sglang:num_used_tokens", "The number of used tokens."),
    ("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool."),
)


def _number(value: float) -> str:
    """prometheus_client's floatToGoString."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{name}="{escaped(value)}"' for name, value in pairs) + "}"


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(bound) for bound in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound),
                     len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out = []
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            pairs = [*sorted(labels.items()), ("le", _number(bound))]
            out.append(f"{name}_bucket{_labels(pairs)} {_number(cumulative)}")
        pairs = sorted(labels.items())
        out.append(f"{name}_count{_labels(pairs)} {_number(cumulative)}")
        out.append(f"{name}_sum{_labels(pairs)} {_number(self.total)}")
        return out


class Metrics:
    """One head's metrics, updated by its request threads, rendered on GET /metrics."""

    def __init__(self, model_name: str, max_total_tokens: int | None) -> None:
        self.base = {"engine_type": ENGINE_TYPE, "model_name": model_name}
        self.scheduler = {**self.base, "moe_ep_rank": "0", "pp_rank": "0", "tp_rank": "0"}
        self.max_total_tokens = max_total_tokens or DEFAULT_MAX_TOTAL_TOKENS
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], float] = {}
        self._histograms: dict[tuple[str, str], _Histogram] = {}
        self._running = 0
        self._used_tokens = 0
        self._finished: list[tuple[float, int]] = []  # (when, generated tokens)

    def started(self, tokens: int) -> None:
        """A request entered the batch holding `tokens` KV slots (prompt and output)."""
        with self._lock:
            self._running += 1
            self._used_tokens += tokens

    def finished(self, tokens: int, requests: Sequence[tuple[int, int]], streaming: bool,
                 first_token_seconds: float, seconds: float) -> None:
        """A request left the batch: each of its generations counts as one of sglang's
        requests, (prompt tokens, generated tokens), as sglang splits n > 1 and batches."""
        stream = "true" if streaming else "false"
        with self._lock:
            self._running -= 1
            self._used_tokens -= tokens
            for prompt, generated in requests:
                self._add("sglang:prompt_tokens_total", stream, prompt)
                self._add("sglang:generation_tokens_total", stream, generated)
                self._add("sglang:num_requests_total", stream, 1)
                self._observe("sglang:time_to_first_token_seconds", stream,
                              first_token_seconds, TTFT_BUCKETS)
                self._observe("sglang:e2e_request_latency_seconds", stream, seconds,
                              E2E_BUCKETS)
                self._finished.append((time.monotonic(), generated))

    def _add(self, name: str, stream: str, value: float) -> None:
        self._counters[(name, stream)] = self._counters.get((name, stream), 0.0) + value

    def _observe(self, name: str, stream: str, value: float, bounds: Sequence[float]) -> None:
        self._histograms.setdefault((name, stream), _Histogram(bounds)).observe(value)

    def render(self) -> str:
        """The exposition text; a counter has samples only once a request set its labels."""
        now = time.monotonic()
        with self._lock:
            self._finished = [(when, n) for when, n in self._finished
                              if now - when <= THROUGHPUT_WINDOW_SECONDS]
            gauges = {
                "sglang:num_running_reqs": float(self._running),
                "sglang:num_queue_reqs": 0.0,
                "sglang:gen_throughput": sum(n for _, n in self._finished)
                / THROUGHPUT_WINDOW_SECONDS,
                # The stand-in keeps no prefix cache: nothing is ever a hit.
                "sglang:cache_hit_rate": 0.0,
                "sglang:token_usage": round(self._used_tokens / self.max_total_tokens, 2),
                "sglang:num_used_tokens": float(self._used_tokens),
                "sglang:max_total_num_tokens": float(self.max_total_tokens),
            }
            lines: list[str] = []
            for name, help_text in COUNTERS:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                for (counter, stream), value in sorted(self._counters.items()):
                    if counter == name:
                        pairs = sorted({**self.base, "is_streaming": stream}.items())
                        lines.append(f"{name}{_labels(pairs)} {_number(value)}")
            for name, help_text, _ in HISTOGRAMS:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
                for (histogram, stream), values in sorted(self._histograms.items(),
                                                          key=lambda item: item[0]):
                    if histogram == name:
                        lines += values.lines(name, {**self.base, "is_streaming": stream})
            for name, help_text in GAUGES:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                          f"{name}{_labels(sorted(self.scheduler.items()))} "
                          f"{_number(gauges[name])}"]
        return "\n".join(lines) + "\n"
