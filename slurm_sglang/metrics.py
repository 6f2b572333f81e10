"""The job's Prometheus metrics: its targets, reading them where the job runs, and a summary.

Every sglang server of a job runs with --enable-metrics (launch_plan.server_argv_of), so its
/metrics is on its HTTP port; sglang-router serves its own on the plan's metrics port. The
job lists them all in endpoint.json ("metrics"). Reading goes through the transport: curl runs
where the job's files are (this machine, or the login node over SSH), since one SSH tunnel
reaches one port and a job has a server per replica.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slurm_sglang.transport import Transport

FETCH_TIMEOUT_SECONDS = 5.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: a series name, its labels and its value."""

    name: str
    labels: Mapping[str, str]
    value: float


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """Prometheus' text format: the TYPE of each family and every sample (unparsable lines
    are skipped, as a scraper would report them, not stop at them)."""
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        labels = {m.group(1): _unescape(m.group(2))
                  for m in _LABEL.finditer(match.group(3) or "")}
        samples.append(Sample(match.group(1), labels, value))
    return types, samples


@dataclass(frozen=True)
class Target:
    """One metrics endpoint of a job: a server (a replica's head) or the router."""

    name: str
    role: str
    url: str
    replica: int | None = None

    def to_dict(self) -> dict[str, object]:
        """The target as endpoint.json lists it."""
        return {"name": self.name, "role": self.role, "url": self.url, "replica": self.replica}


def targets_of(endpoint: Mapping[str, object]) -> list[Target]:
    """The job's metrics endpoints from endpoint.json; a job written before they were listed
    gets its servers' from the replicas (or its one URL) and no router."""
    listed = endpoint.get("metrics")
    if isinstance(listed, list):
        found = []
        for item in listed:
            if isinstance(item, dict) and item.get("url"):
                replica = item.get("replica")
                found.append(Target(str(item.get("name") or item["url"]),
                                    str(item.get("role") or "server"), str(item["url"]),
                                    replica if isinstance(replica, int) else None))
        return found
    replicas = endpoint.get("replicas")
    if isinstance(replicas, list) and replicas:
        return [Target(f"replica-{r.get('replica')}", "server", f"{r.get('url')}/metrics",
                       r.get("replica") if isinstance(r.get("replica"), int) else None)
                for r in replicas if isinstance(r, dict)]
    return [Target("server", "server", f"{endpoint.get('url')}/metrics")]


@dataclass
class TargetReading:
    """What one target said: its summary, or why it did not answer."""

    target: Target
    error: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    workers: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the target answered with metrics."""
        return self.error is None

    def to_dict(self) -> dict[str, object]:
        """The reading for --json."""
        data: dict[str, object] = {**self.target.to_dict(), "ok": self.ok, "error": self.error}
        data.update(self.values)
        if self.target.role == "router":
            data["workers"] = self.workers
        return data


def _total(samples: Iterable[Sample], name: str, **match: str) -> float | None:
    values = [s.value for s in samples
              if s.name == name and all(s.labels.get(k) == v for k, v in match.items())]
    return sum(values) if values else None


# sglang 0.5.23's names (sglang/srt/observability/metrics_collector.py): gauges per scheduler
# (summed over a server's tp/pp/dp ranks, averaged where they are ratios), counters per
# tokenizer.
SERVER_SUMS = {
    "running": "sglang:num_running_reqs",
    "queued": "sglang:num_queue_reqs",
    "gen_throughput": "sglang:gen_throughput",
    "requests": "sglang:num_requests_total",
    "prompt_tokens": "sglang:prompt_tokens_total",
    "generation_tokens": "sglang:generation_tokens_total",
    "aborted": "sglang:num_aborted_requests_total",
}
SERVER_RATIOS = {"token_usage": "sglang:token_usage", "cache_hit_rate": "sglang:cache_hit_rate"}


def summarize_server(samples: Sequence[Sample]) -> dict[str, float | None]:
    """A server's load: running and queued requests, token usage, cache hit rate, generation
    throughput, and what it has served (counters: 0 before its first request)."""
    values: dict[str, float | None] = {}
    for key, name in SERVER_SUMS.items():
        values[key] = _total(samples, name)
        if values[key] is None and name.endswith("_total"):
            values[key] = 0.0
    for key, name in SERVER_RATIOS.items():
        found = [s.value for s in samples if s.name == name]
        values[key] = sum(found) / len(found) if found else None
    return values


def summarize_router(samples: Sequence[Sample]) -> tuple[dict[str, float | None],
                                                        list[dict[str, object]]]:
    """sglang-router 0.3.2's metrics (smg_*): requests it routed, and per worker its health,
    the requests it answered and its circuit breaker's state (0 closed, 1 open, 2 half-open)."""
    values = {"requests": _total(samples, "smg_router_requests_total") or 0.0,
              "workers_healthy": _total(samples, "smg_worker_health")}
    urls = sorted({s.labels["worker"] for s in samples
                   if s.name.startswith("smg_worker_") and "worker" in s.labels})
    workers: list[dict[str, object]] = []
    for url in urls:
        workers.append({
            "url": url,
            "healthy": _total(samples, "smg_worker_health", worker=url) == 1,
            "requests": _total(samples, "smg_worker_cb_outcomes_total", worker=url,
                               outcome="success") or 0.0,
            "failures": _total(samples, "smg_worker_cb_outcomes_total", worker=url,
                               outcome="failure") or 0.0,
            "breaker": _total(samples, "smg_worker_cb_state", worker=url),
        })
    return values, workers


def read_target(transport: Transport, target: Target,
                timeout: float = FETCH_TIMEOUT_SECONDS) -> TargetReading:
    """GET the target's /metrics with curl where the transport runs commands."""
    from slurm_sglang.transport import TransportError

    marker = "\nslurm-sglang-http-code:"
    try:
        result = transport.run(["curl", "-sS", "--noproxy", "*", "--max-time", f"{timeout:g}",
                                "-w", marker + "%{http_code}", target.url],
                               check=False, timeout=timeout + 10)
    except TransportError as exc:
        return TargetReading(target, f"not read: {exc}")
    body, _, code = result.stdout.rpartition(marker)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"curl exit {result.returncode}"])[-1]
        return TargetReading(target, f"stopped answering ({reason})")
    if code.strip() != "200":
        hint = " (a server started without --enable-metrics?)" if code.strip() == "404" else ""
        return TargetReading(target, f"answered HTTP {code.strip()}{hint}")
    _, samples = parse_exposition(body)
    if target.role == "router":
        values, workers = summarize_router(samples)
        return TargetReading(target, None, values, workers)
    return TargetReading(target, None, summarize_server(samples))


def read_all(transport: Transport, endpoint: Mapping[str, object]) -> list[TargetReading]:
    """Every target of the job, in endpoint.json's order (servers, then the router)."""
    return [read_target(transport, target) for target in targets_of(endpoint)]


def _cell(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(readings: Sequence[TargetReading]) -> str:
    """Servers as one table, the router's workers as another, unanswered targets named."""
    lines = [f"{'SERVER':<12} {'RUNNING':>7} {'QUEUED':>6} {'TOKENS':>6} {'CACHE':>6} "
             f"{'GEN TOK/S':>9} {'REQUESTS':>8}  URL"]
    for reading in readings:
        if reading.target.role != "server":
            continue
        if not reading.ok:
            lines.append(f"{reading.target.name:<12} {reading.error}  {reading.target.url}")
            continue
        v = reading.values
        usage = "-" if v.get("token_usage") is None else f"{100 * (v['token_usage'] or 0):.0f}%"
        hits = ("-" if v.get("cache_hit_rate") is None
                else f"{100 * (v['cache_hit_rate'] or 0):.0f}%")
        lines.append(f"{reading.target.name:<12} {_cell(v.get('running')):>7} "
                     f"{_cell(v.get('queued')):>6} {usage:>6} {hits:>6} "
                     f"{_cell(v.get('gen_throughput'), 1):>9} {_cell(v.get('requests')):>8}  "
                     f"{reading.target.url}")
    for reading in readings:
        if reading.target.role != "router":
            continue
        if not reading.ok:
            lines += ["", f"router: {reading.error}  {reading.target.url}"]
            continue
        lines += ["", f"router: {_cell(reading.values.get('requests'))} request(s) routed  "
                      f"{reading.target.url}",
                  f"  {'WORKER':<28} {'HEALTHY':>7} {'ANSWERED':>8} {'FAILED':>6}"]
        for worker in reading.workers:
            lines.append(f"  {worker['url']!s:<28} {'yes' if worker['healthy'] else 'NO':>7} "
                         f"{_cell(worker['requests']):>8} {_cell(worker['failures']):>6}")
    silent = [r for r in readings if not r.ok]
    if silent:
        lines += ["", *(f"{r.target.name}: metrics {r.error}" for r in silent)]
    return "\n".join(lines)
