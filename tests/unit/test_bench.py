"""bench: the seed's plan, sglang's client argv, the validity gate and the report, with the client
faked (it writes the JSONL sglang's client would)."""

from __future__ import annotations

import http.server
import json
import math
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from slurm_sglang.bench import (
    BenchPoint,
    BenchRun,
    BenchSettings,
    client_argv,
    client_env,
    compare_summaries,
    judge,
    local_runner,
    plan_points,
    run_bench,
)
from slurm_sglang.bench_plot import plot_summary
from slurm_sglang.cli import main
from slurm_sglang.errors import UserInputError


def _labels(types: Sequence[str], **overrides: Any) -> list[str]:
    return [p.label for p in plan_points(types, BenchSettings(**overrides))]


def test_the_seeds_sizes_rates_and_sweeps_are_the_defaults() -> None:
    points = plan_points(["throughput", "prefill", "decode", "latency", "concurrency"],
                         BenchSettings())
    by_type: dict[str, list[BenchPoint]] = {}
    for point in points:
        by_type.setdefault(point.type, []).append(point)
    assert [(p.input_len, p.output_len, p.request_rate) for p in by_type["throughput"]] == [
        (512, 256, math.inf)]
    assert [(p.input_len, p.output_len, p.request_rate) for p in by_type["prefill"]] == [
        (n, 1, 4.0) for n in (128, 512, 2048, 4096, 16384)]
    assert [(p.input_len, p.output_len, p.request_rate) for p in by_type["decode"]] == [
        (128, n, 4.0) for n in (128, 256, 512, 1024)]
    assert [(p.input_len, p.output_len, p.request_rate) for p in by_type["latency"]] == [
        (128, 128, 1.0), (512, 256, 1.0), (4096, 512, 1.0)]
    assert [(p.max_concurrency, p.request_rate) for p in by_type["concurrency"]] == [
        (c, math.inf) for c in (1, 4, 16, 64, 256)]
    assert {p.num_prompts for p in points} == {100}
    # No internet on nodes: never sglang's `random`, which downloads ShareGPT.
    assert {p.dataset for p in points} == {"random-ids"}


def test_overrides_replace_the_seeds_sweeps() -> None:
    assert _labels(["concurrency"], concurrencies=(2, 8)) == ["concurrency 2", "concurrency 8"]
    assert _labels(["prefill"], input_lens=(64, 256)) == ["in 64", "in 256"]
    assert _labels(["throughput"], request_rates=(2.0, math.inf)) == [
        "in 512 out 256 rate 2", "in 512 out 256 rate inf"]
    assert _labels(["latency"], input_lens=(32,), output_lens=(8,)) == ["in 32 out 8 rate 1"]


def test_sharegpt_needs_a_local_file_and_says_where_to_get_it() -> None:
    with pytest.raises(UserInputError, match=r"^--dataset-path: .*huggingface\.co"):
        plan_points(["sharegpt"], BenchSettings())
    points = plan_points(["sharegpt", "throughput"], BenchSettings(dataset_path="/d/sg.json"))
    assert [(p.dataset, p.request_rate) for p in points] == [
        ("sharegpt", math.inf), ("sharegpt", 4.0), ("random", math.inf)]


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UserInputError, match=r"^--type: unknown 'speed'"):
        plan_points(["speed"], BenchSettings())


def test_client_argv_is_sglangs_own_module_with_every_setting() -> None:
    point = BenchPoint("concurrency", "concurrency 4", "random-ids", 20, 64, 32, math.inf, 4)
    settings = BenchSettings(range_ratio=1.0, model="m", tokenizer="/tok", warmup_requests=2)
    argv = client_argv(point, "http://h:1", "/o/r.jsonl", settings)
    assert argv[:2] == ["-m", "sglang.benchmark.serving"]
    joined = " ".join(argv)
    for part in ("--backend sglang", "--base-url http://h:1", "--dataset-name random-ids",
                 "--num-prompts 20", "--request-rate inf", "--seed 42",
                 "--output-file /o/r.jsonl", "--output-details", "--random-input-len 64",
                 "--random-output-len 32", "--random-range-ratio 1", "--max-concurrency 4",
                 "--model m", "--tokenizer /tok", "--warmup-requests 2"):
        assert part in joined


def test_the_api_key_travels_in_the_environment_only() -> None:
    env = client_env("sekret", {"API_KEY": "other", "PATH": "/bin"})
    assert env["OPENAI_API_KEY"] == "sekret" and "API_KEY" not in env
    point = BenchPoint("throughput", "t", "random-ids", 1, 1, 1, 1.0)
    assert "sekret" not in " ".join(client_argv(point, "http://h", "/o", BenchSettings()))


def _result(n: int, out: int, errors: list[str] | None = None,
            texts: list[str] | None = None, lens: list[int] | None = None) -> dict[str, Any]:
    errors = errors if errors is not None else [""] * n
    texts = texts if texts is not None else ["x"] * n
    lens = lens if lens is not None else [out] * n
    completed = sum(1 for e in errors if not e)
    return {"completed": completed, "total_output_tokens": sum(lens), "median_ttft_ms": 10.0,
            "p90_ttft_ms": 11.0, "p99_ttft_ms": 12.0, "output_throughput": 100.0,
            "request_throughput": 2.0, "total_throughput": 300.0, "errors": errors,
            "generated_texts": texts, "output_lens": lens}


def _run(result: dict[str, Any], n: int = 10, exit_code: int = 0) -> BenchRun:
    point = BenchPoint("throughput", "t", "random-ids", n, 8, 4, math.inf)
    return BenchRun(point, [], exit_code, result)


def test_gate_passes_a_clean_run_and_counts_tokens() -> None:
    run = judge(_run(_result(10, 4)), expected_output_len=4)
    assert run.ok and run.output_tokens == 40 and run.failed == 0


def test_gate_fails_zero_completed_and_zero_tokens() -> None:
    run = judge(_run(_result(10, 4, errors=["Traceback boom"] * 10)))
    assert not run.ok and "0 requests completed" in run.reasons
    assert "0 output tokens" in run.reasons


def test_gate_fails_a_200_without_tokens_that_sglang_counts_as_full_length() -> None:
    # bench_serving's sglang backend keeps the requested length when no text ever came.
    run = judge(_run(_result(10, 4, texts=[""] * 10)))
    assert not run.ok and run.output_tokens == 0 and run.answered_without_tokens == 10
    assert "0 output tokens" in run.reasons


def test_gate_fails_any_server_error_and_more_than_one_percent_failed() -> None:
    errors = [""] * 199 + ["Internal Server Error: boom"]
    run = judge(_run(_result(200, 4, errors=errors), n=200))
    assert not run.ok and run.reasons[0].startswith("1 server errors, first: Internal Server")
    client_side = [""] * 197 + ["Traceback (most recent call last): timeout"] * 3
    assert not judge(_run(_result(200, 4, errors=client_side), n=200)).ok
    one = [""] * 199 + ["Traceback (most recent call last): timeout"]
    assert judge(_run(_result(200, 4, errors=one), n=200)).ok


def test_gate_fails_streams_that_stop_short_when_lengths_are_exact() -> None:
    run = judge(_run(_result(10, 4, lens=[4] * 9 + [2])), expected_output_len=4)
    assert not run.ok and "1 streams ended before their 4 tokens" in run.reasons[0]


def test_gate_fails_a_client_that_wrote_nothing() -> None:
    run = _run({}, exit_code=1)
    run.client_tail = "ValueError: Warmup failed - Error: Internal Server Error\n"
    judge(run)
    assert run.reasons == ["sglang's client wrote no result (exit 1): ValueError: Warmup failed "
                           "- Error: Internal Server Error"]


class FakeClient:
    """Stands in for subprocess: records argv and env, writes sglang's JSONL line."""

    def __init__(self, tokens: int = 4, texts: str = "x") -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.probes = 0
        self.tokens = tokens
        self.texts = texts

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> Any:
        import subprocess

        if argv[0] == "-c":  # the probe: the client's version and the server's /server_info
            self.probes += 1
            probed = {"client": "0.5.23", "server_info": {"version": "0.5.23", "tp_size": 2}}
            return subprocess.CompletedProcess(argv, 0, json.dumps(probed) + "\n", "")
        self.calls.append((list(argv), dict(env)))
        n = int(argv[argv.index("--num-prompts") + 1])
        path = Path(argv[argv.index("--output-file") + 1])
        result = _result(n, self.tokens, texts=[self.texts] * n)
        path.write_text(json.dumps(result) + "\n")
        return subprocess.CompletedProcess(argv, 0, "client output\n", "")


def test_run_bench_saves_every_run_and_prints_a_table_per_type(tmp_path: Path) -> None:
    client = FakeClient()
    settings = BenchSettings(num_prompts=5, concurrencies=(1, 4), input_lens=(8,),
                             output_lens=(4,), range_ratio=1.0)
    report = run_bench("http://h:1/", ["throughput", "concurrency"], settings, tmp_path, client,
                       api_key="k", served={"job": "7"})
    assert report.ok and len(client.calls) == 3
    assert all(env["OPENAI_API_KEY"] == "k" for _, env in client.calls)
    table = report.format_table()
    assert table.splitlines()[0] == "throughput:"
    assert "concurrency:" in table and "TTFT ms p50" in table
    assert table.splitlines()[-1] == "bench: ok, 3/3 runs valid against http://h:1"
    saved = json.loads(Path(report.files[0]).read_text())
    assert saved["served"] == {"job": "7", "client_sglang_version": "0.5.23",
                               "client_host": "", "client_python": "",
                               "server_sglang_version": "0.5.23", "server_model": "",
                               "server_info_error": ""} and saved["ok"]
    assert client.probes == 1
    assert saved["runs"][1]["argv"][:3] == ["python", "-m", "sglang.benchmark.serving"]
    assert "errors" not in saved["runs"][0]["result"]
    assert len(list(tmp_path.glob("*.jsonl"))) == 3 and len(list(tmp_path.glob("*.log"))) == 3


def test_run_bench_reports_failure_when_the_server_sent_no_tokens(tmp_path: Path) -> None:
    report = run_bench("http://h", ["throughput"], BenchSettings(num_prompts=3), tmp_path,
                       FakeClient(texts=""))
    assert not report.ok
    assert report.format_table().splitlines()[-1].startswith("bench: FAILED, 0/1 runs valid")


@pytest.mark.parametrize(("argv", "field"), [
    (["--type", "nope"], "--type"),
    (["--concurrency", "1,x"], "--concurrency"),
    (["--input-len", "0"], "--input-len"),
    (["--request-rate", "-1"], "--request-rate"),
    (["--type", "sharegpt"], "--dataset-path"),
    (["--backend", "vllm"], "--backend"),
])
def test_bad_input_is_one_line_naming_the_field_and_exit_2(
        argv: list[str], field: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["bench", "http://127.0.0.1:9", "--python", "/bin/sh", "--output-dir",
                 str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"slurm-sglang: error: {field}")


def test_lengths_are_exact_unless_told_otherwise() -> None:
    point = plan_points(["throughput"], BenchSettings())[0]
    argv = client_argv(point, "http://h", "/o", BenchSettings())
    assert argv[argv.index("--random-range-ratio") + 1] == "1"
    spread = client_argv(point, "http://h", "/o", BenchSettings(range_ratio=0.0))
    assert spread[spread.index("--random-range-ratio") + 1] == "0"


class TruncatingClient(FakeClient):
    """sglang's client against a server whose streams end after half their tokens: each
    request counts as a success with the tokens it saw."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> Any:
        import subprocess

        if argv[0] == "-c":
            return super().__call__(argv, env)
        n = int(argv[argv.index("--num-prompts") + 1])
        out = int(argv[argv.index("--random-output-len") + 1])
        path = Path(argv[argv.index("--output-file") + 1])
        path.write_text(json.dumps(_result(n, out // 2)) + "\n")
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_a_stream_without_its_final_chunk_fails_the_gate_with_exact_counts(
        tmp_path: Path) -> None:
    settings = BenchSettings(num_prompts=12, input_lens=(32,), output_lens=(16,))
    report = run_bench("http://h", ["throughput"], settings, tmp_path, TruncatingClient())
    (run,) = report.runs
    assert not report.ok and run.output_tokens == 12 * 8 and run.failed == 12
    assert run.reasons == ["12 streams ended before their 16 tokens (no final chunk)"]
    # With sglang's spread of lengths nothing says how long each stream should have been.
    spread = BenchSettings(num_prompts=12, input_lens=(32,), output_lens=(16,), range_ratio=0.0)
    assert run_bench("http://h", ["throughput"], spread, tmp_path, TruncatingClient()).ok


def _summary(url: str, ttft: float, tokens_per_s: float, ok: bool = True) -> dict[str, Any]:
    return {"url": url, "started": "T", "runs": [
        {"type": "concurrency", "label": "concurrency 4", "ok": ok,
         "result": {"median_ttft_ms": ttft, "output_throughput": tokens_per_s}},
        {"type": "throughput", "label": "in 8 out 4 rate inf", "ok": True, "result": {}}]}


def test_compare_prints_the_deltas_run_by_run() -> None:
    first = _summary("http://a", 20.0, 1000.0)
    second = _summary("http://b", 25.0, 800.0, ok=False)
    second["runs"] = second["runs"][:1]
    lines = compare_summaries(first, second).splitlines()
    assert lines[0] == "http://a (T) -> http://b (T)"
    assert lines[1].split()[:3] == ["run", "TTFT", "p50"]
    row = lines[2]
    assert row.startswith("concurrency 4 ")
    assert "20.0 -> 25.0 (+25.0%)" in row and "1000.0 -> 800.0 (-20.0%)" in row
    assert row.endswith("ok -> FAILED")
    assert lines[3].startswith("throughput: in 8 out 4 rate inf") and lines[3].endswith(
        "only in first")


def test_bench_compare_on_the_command_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_summary("http://a", 20.0, 1000.0)))
    b.write_text(json.dumps(_summary("http://a", 10.0, 2000.0)))
    assert main(["bench", "compare", str(a), str(b)]) == 0
    assert "20.0 -> 10.0 (-50.0%)" in capsys.readouterr().out
    assert main(["bench", "compare", str(a)]) == 2
    assert capsys.readouterr().err.strip() == (
        "slurm-sglang: error: bench compare: give two reports, bench compare A.json B.json")
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("[1]")
    assert main(["bench", "compare", str(a), str(jsonl)]) == 2
    assert "is not a bench report (no 'runs'" in capsys.readouterr().err
    assert main(["bench", "compare", str(a), str(tmp_path / "gone.json")]) == 2
    assert "gone.json does not exist" in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UserInputError) as refused:
        plot_summary(_summary("http://a", 1.0, 1.0), Path("/nonexistent/p.png"))
    assert str(refused.value) == ("--plot: needs matplotlib, which is not installed here "
                                  "(pip install 'slurm-sglang[plot]')")


def test_plot_draws_latency_and_throughput_against_the_sweep(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = {"url": "http://a", "started": "T", "runs": [
        {"type": "concurrency", "label": f"c {c}", "ok": True, "x": c,
         "result": {"median_ttft_ms": c * 2.0, "output_throughput": c * 100.0}}
        for c in (1, 4, 16)]}
    path = plot_summary(data, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class LeakyServerClient(FakeClient):
    """sglang's client stores the server's /server_info in its JSONL: here it holds the key."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> Any:
        done = super().__call__(argv, env)
        if argv[0] != "-c":
            path = Path(argv[argv.index("--output-file") + 1])
            result = json.loads(path.read_text())
            result["server_info"] = {"launch_command": "launch_server --api-key sekret"}
            path.write_text(json.dumps(result) + "\n")
            done.stdout = "server args: --api-key sekret\n"
        return done


def test_the_api_key_is_scrubbed_from_every_saved_file_and_the_report(tmp_path: Path) -> None:
    report = run_bench("http://h", ["throughput"], BenchSettings(num_prompts=2, output_lens=(4,)),
                       tmp_path, LeakyServerClient(), api_key="sekret")
    assert report.ok
    assert "sekret" not in json.dumps(report.to_dict())
    saved = sorted(tmp_path.iterdir())
    assert len(saved) == 3
    for path in saved:
        assert "sekret" not in path.read_text() and path.stat().st_mode & 0o077 == 0, path
    assert "<redacted>" in (tmp_path / Path(report.files[1]).name).read_text()


def test_the_plot_module_needs_only_what_the_clients_python_has() -> None:
    # Where this python lacks matplotlib, the client's python draws: it has none of the CLI's
    # own dependencies.
    import subprocess
    import sys

    code = ("import sys, slurm_sglang.bench_plot; print(sorted({m.split('.')[0] for m in "
            "sys.modules} & {'paramiko', 'pydantic', 'jinja2', 'yaml', 'submitit'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


def test_a_client_python_without_sglang_is_one_line_before_any_run(tmp_path: Path) -> None:
    import subprocess

    def no_sglang(argv: Sequence[str], env: Mapping[str, str]) -> Any:
        probed = {"client": "not importable: No module named 'sglang'", "server_info": {},
                  "host": "n1", "python": "/usr/bin/python3"}
        assert argv[0] == "-c", "a benchmark run started"
        return subprocess.CompletedProcess(argv, 0, json.dumps(probed) + "\n", "")

    with pytest.raises(UserInputError) as refused:
        run_bench("http://h", ["throughput"], BenchSettings(), tmp_path, no_sglang)
    assert str(refused.value).startswith(
        "--client: sglang is not importable: No module named 'sglang' (/usr/bin/python3 on n1); ")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server that wants an API key: 401 on every path, each path it was asked noted."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("key", "said"), [(None, "needs an API key"),
                                           ("wrong", "refused the API key given")])
def test_run_bench_stops_at_once_where_the_server_refuses_the_key(
        tmp_path: Path, key: str | None, said: str) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    real = local_runner(sys.executable, timeout=60)
    ran: list[Sequence[str]] = []

    def runner(argv: Sequence[str], env: Mapping[str, str]) -> Any:
        ran.append(argv)
        done = real(argv, env)
        # The probe needs sglang only to name the client's version; this python has none.
        found = json.loads(done.stdout.splitlines()[-1])
        found["client"] = "0.5.23"
        return subprocess.CompletedProcess(argv, 0, json.dumps(found) + "\n", "")

    _Refusing.asked.clear()
    try:
        with pytest.raises(UserInputError) as raised:
            run_bench(url, ["throughput"], BenchSettings(num_prompts=2), tmp_path / "out",
                      runner, api_key=key)
    finally:
        server.shutdown()
    assert str(raised.value) == (f"--api-key-file: {url} {said} (401 Unauthorized): pass the "
                                 "job's key with --api-key-file FILE or SLURM_SGLANG_API_KEY")
    # The probe only (not the minute-long client), asked once, and nothing written.
    assert len(ran) == 1 and ran[0][0] == "-c" and _Refusing.asked == ["/server_info"]
    assert not (tmp_path / "out").exists()
