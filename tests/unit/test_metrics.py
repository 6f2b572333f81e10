"""Metrics: the stand-in's names and types against sglang's source, the parser and summary,
a server that stopped answering, and the Grafana dashboard's structure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from slurm_sglang.metrics import (
    Target,
    parse_exposition,
    read_target,
    summarize_server,
    table,
    targets_of,
)
from slurm_sglang.sandbox.standin.sglang.metrics import COUNTERS, GAUGES, HISTOGRAMS, Metrics
from slurm_sglang.transport.base import CommandResult

REAL_COLLECTOR = (Path.home() / ".cache" / "slurm-sglang" / "sglang-0.5.23-parser" / "lib"
                  / "python3.11" / "site-packages" / "sglang" / "srt" / "observability"
                  / "metrics_collector.py")
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-slurm-sglang.json"


def _served(requests: int, streamed: int = 0) -> str:
    metrics = Metrics("tiny", None)
    for index in range(requests + streamed):
        metrics.started(20)
        metrics.finished(20, [(4, 16)], index >= requests, 0.01, 0.05)
    return metrics.render()


@pytest.mark.skipif(not REAL_COLLECTOR.exists(), reason="sglang 0.5.23's source not installed")
def test_stand_in_names_and_types_are_sglangs() -> None:
    source = REAL_COLLECTOR.read_text()
    real = dict((name, kind.lower()) for kind, name in re.findall(
        r'(Gauge|Counter|Histogram)\(\s*name="(sglang:[a-z0-9_]+)"', source))
    ours = {**{n: "counter" for n, _ in COUNTERS}, **{n: "gauge" for n, _ in GAUGES},
            **{n: "histogram" for n, _, _ in HISTOGRAMS}}
    assert {name: real.get(name) for name in ours} == ours
    for name, help_text in [*COUNTERS, *GAUGES, *((n, h) for n, h, _ in HISTOGRAMS)]:
        assert f'name="{name}",\n            documentation="{help_text}"' in source, name


def test_after_n_requests_the_counters_say_n() -> None:
    types, samples = parse_exposition(_served(5, streamed=2))
    assert types["sglang:num_requests_total"] == "counter"
    assert types["sglang:num_running_reqs"] == "gauge"
    assert types["sglang:e2e_request_latency_seconds"] == "histogram"
    values = summarize_server(samples)
    assert values["requests"] == 7 and values["generation_tokens"] == 7 * 16
    assert values["prompt_tokens"] == 7 * 4 and values["running"] == 0
    streaming = {s.labels["is_streaming"]: s.value for s in samples
                 if s.name == "sglang:num_requests_total"}
    assert streaming == {"false": 5.0, "true": 2.0}
    count = [s for s in samples if s.name == "sglang:e2e_request_latency_seconds_count"]
    assert sum(s.value for s in count) == 7
    assert all(s.labels["model_name"] == "tiny" and s.labels["engine_type"] == "unified"
               for s in samples)


def test_before_any_request_counters_have_no_samples_and_read_zero() -> None:
    text = _served(0)
    assert "# TYPE sglang:num_requests_total counter" in text
    assert not re.search(r"^sglang:num_requests_total\{", text, re.M)
    assert summarize_server(parse_exposition(text)[1])["requests"] == 0


class _Curl:
    """A transport whose curl answers as told."""

    def __init__(self, returncode: int, stdout: str, stderr: str = "") -> None:
        self.answer = (returncode, stdout, stderr)

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        return CommandResult(tuple(argv), *self.answer)


TARGET = Target("replica-1", "server", "http://10.0.0.12:30002/metrics", 1)


def test_a_replica_that_stopped_answering_is_named() -> None:
    curl = _Curl(7, "\nslurm-sglang-http-code:000",
                 "curl: (7) Failed to connect to 10.0.0.12 port 30002: Connection refused")
    reading = read_target(curl, TARGET)  # type: ignore[arg-type]
    assert not reading.ok and "stopped answering" in (reading.error or "")
    assert "replica-1: metrics stopped answering (curl: (7) Failed to connect" in table([reading])


def test_a_server_without_enable_metrics_answers_404() -> None:
    reading = read_target(_Curl(0, '{"detail":"Not Found"}\nslurm-sglang-http-code:404'),  # type: ignore[arg-type]
                          TARGET)
    assert reading.error == "answered HTTP 404 (a server started without --enable-metrics?)"


def test_a_server_that_answers_is_summarized() -> None:
    reading = read_target(_Curl(0, _served(3) + "\nslurm-sglang-http-code:200"),  # type: ignore[arg-type]
                          TARGET)
    assert reading.ok and reading.values["requests"] == 3
    assert reading.to_dict()["name"] == "replica-1"


def test_targets_of_an_endpoint_written_before_metrics_were_listed() -> None:
    old = {"url": "http://h:1", "replicas": [{"replica": 0, "url": "http://a:2"}]}
    assert targets_of(old) == [Target("replica-0", "server", "http://a:2/metrics", 0)]
    assert targets_of({"url": "http://h:1"}) == [Target("server", "server", "http://h:1/metrics")]


def test_grafana_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "slurm_job_id" in variables["job"]["query"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    known = {n for n, _ in COUNTERS} | {n for n, _ in GAUGES} | {n for n, _, _ in HISTOGRAMS}
    known |= {"smg_worker_cb_outcomes_total", "smg_worker_health"}
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = set(re.findall(r"(sglang:[a-z0-9_]+|smg_[a-z0-9_]+)", target["expr"]))
            assert names and {re.sub(r"_bucket$", "", n) for n in names} <= known, names
            assert 'slurm_job_id=~"$job"' in target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")")
