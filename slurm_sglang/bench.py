"""Serving benchmarks of a running server with sglang's own client, and their validity gate.

Every measurement comes from `python -m sglang.benchmark.serving` (sglang 0.5.23; the old
`sglang.bench_serving` is its deprecated alias): this module only plans the runs, builds the
client's argv, reads the JSONL the client writes and judges it. It never sends a request.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from slurm_sglang.errors import UserInputError
from slurm_sglang.transport.base import Transport, TransportError
from slurm_sglang.transport.local import LocalTransport

CLIENT_MODULE = "sglang.benchmark.serving"
BENCH_TYPES = ("throughput", "prefill", "decode", "latency", "concurrency", "sharegpt")
BACKENDS = ("sglang", "sglang-oai", "sglang-oai-chat")
# srtctl's rule, widened as the issue asks: more failures than this fraction fail the run.
MAX_FAILED_FRACTION = 0.01
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_URL = ("https://huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered/"
                f"resolve/main/{SHAREGPT_FILE}")
# The seed's bench.sh: 100 prompts and seed 42 everywhere.
SEED_NUM_PROMPTS = 100
SEED_SEED = 42


def _flag(flag: str, text: str, metavar: str | None = None, parse: str = "") -> dict[str, str]:
    """A setting's command-line option: its flag, help, metavar and how its text is read."""
    return {"flag": flag, "help": text, "metavar": metavar or "", "parse": parse}


@dataclass(frozen=True)
class BenchSettings:
    """What the user overrides; None keeps the seed's value for each type. Each field's
    metadata is its `bench` option (add_settings_arguments, settings_from)."""

    num_prompts: int | None = field(default=None, metadata=_flag(
        "--num-prompts", "requests per run (100)", parse="int"))
    input_lens: tuple[int, ...] | None = field(default=None, metadata=_flag(
        "--input-len", "input tokens, a sweep", "N[,N...]", "ints"))
    output_lens: tuple[int, ...] | None = field(default=None, metadata=_flag(
        "--output-len", "output tokens, a sweep", "N[,N...]", "ints"))
    request_rates: tuple[float, ...] | None = field(default=None, metadata=_flag(
        "--request-rate", "requests/s (inf: all at once)", "R[,R...]", "rates"))
    concurrencies: tuple[int, ...] | None = field(default=None, metadata=_flag(
        "--concurrency", "max concurrency sweep (concurrency type: 1,4,16,64,256)", "C[,C...]",
        "ints"))
    range_ratio: float | None = field(default=None, metadata=_flag(
        "--range-ratio", "random lengths in [ratio*N, N] (sglang's default 0; 1: exact)",
        parse="float"))
    dataset_path: str | None = field(default=None, metadata=_flag(
        "--dataset-path", "a local ShareGPT JSON (needed by sharegpt; nodes have no internet)",
        "FILE"))
    backend: str = field(default="sglang", metadata=_flag(
        "--backend", "sglang (/generate), sglang-oai, sglang-oai-chat"))
    model: str | None = field(default=None, metadata=_flag(
        "--model", "model name (default: the first of /v1/models)"))
    tokenizer: str | None = field(default=None, metadata=_flag(
        "--tokenizer", "a local tokenizer directory", "DIR"))
    seed: int = field(default=SEED_SEED, metadata=_flag(
        "--seed", "sampling seed (42, the seed's)", parse="int"))
    warmup_requests: int | None = field(default=None, metadata=_flag(
        "--warmup-requests", "sglang's warm-up requests (1)", parse="int"))


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per BenchSettings field, as written in its metadata (read as text;
    settings_from turns the text into values)."""
    for item in fields(BenchSettings):
        meta = item.metadata
        parser.add_argument(meta["flag"], dest=item.name, metavar=meta["metavar"] or None,
                            help=meta["help"])


def settings_from(given: Mapping[str, object]) -> BenchSettings:
    """BenchSettings from the options' texts (absent or None: the default); a bad value is one
    UserInputError naming its flag."""
    values: dict[str, Any] = {}
    for item in fields(BenchSettings):
        text, meta = given.get(item.name), item.metadata
        if text is None:
            continue
        if meta["parse"] == "ints":
            values[item.name] = parse_ints(str(text), meta["flag"])
        elif meta["parse"] == "rates":
            values[item.name] = parse_rates(str(text))
        elif meta["parse"] in ("int", "float"):
            try:
                values[item.name] = int(str(text)) if meta["parse"] == "int" else float(str(text))
            except ValueError:
                raise UserInputError(f"{meta['flag']}: {text!r} is not a {meta['parse']} "
                                     "number") from None
        else:
            values[item.name] = text
    if (values.get("num_prompts") or 1) < 1:
        raise UserInputError(f"--num-prompts: must be at least 1, got {values['num_prompts']}")
    return BenchSettings(**values)


@dataclass(frozen=True)
class BenchPoint:
    """One run of sglang's client: one size, rate and concurrency of one type."""

    type: str
    label: str
    dataset: str
    num_prompts: int
    input_len: int | None
    output_len: int | None
    request_rate: float
    max_concurrency: int | None = None

    @property
    def x(self) -> float | None:
        """Where the point sits on its type's sweep axis (None: the type has no axis)."""
        return {"prefill": self.input_len, "decode": self.output_len,
                "concurrency": self.max_concurrency}.get(self.type)


def _rate_text(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def _or(values: tuple[Any, ...] | None, seed: tuple[Any, ...]) -> tuple[Any, ...]:
    return values if values else seed


def _range_ratio(settings: BenchSettings) -> float:
    # Exact lengths unless told otherwise (sglang's own default, 0, draws them in [1, N]): the
    # table's sizes are then what ran, and a stream that stopped short is seen as short.
    return 1.0 if settings.range_ratio is None else settings.range_ratio


def _random_dataset(settings: BenchSettings) -> str:
    # sglang's `random` samples ShareGPT and downloads it when no local file is given;
    # nodes have no internet, so integer token ids unless the user brought the file.
    return "random" if settings.dataset_path else "random-ids"


def plan_points(types: Sequence[str], settings: BenchSettings) -> list[BenchPoint]:
    """The runs for these types: the seed's sizes, rates and sweeps, with overrides applied."""
    unknown = [name for name in types if name not in BENCH_TYPES]
    if unknown:
        raise UserInputError(
            f"--type: unknown {unknown[0]!r} (choose from {', '.join(BENCH_TYPES)})")
    n = settings.num_prompts or SEED_NUM_PROMPTS
    data = _random_dataset(settings)
    points: list[BenchPoint] = []
    for name in dict.fromkeys(types):
        ins, outs = settings.input_lens, settings.output_lens
        rates, conc = settings.request_rates, settings.concurrencies
        if name == "throughput":
            for i in _or(ins, (512,)):
                for o in _or(outs, (256,)):
                    for r in _or(rates, (math.inf,)):
                        points.append(BenchPoint(name, f"in {i} out {o} rate {_rate_text(r)}",
                                                 data, n, i, o, r))
        elif name == "prefill":
            for r in _or(rates, (4.0,)):
                for o in _or(outs, (1,)):
                    for i in _or(ins, (128, 512, 2048, 4096, 16384)):
                        points.append(BenchPoint(name, f"in {i}", data, n, i, o, r))
        elif name == "decode":
            for r in _or(rates, (4.0,)):
                for i in _or(ins, (128,)):
                    for o in _or(outs, (128, 256, 512, 1024)):
                        points.append(BenchPoint(name, f"out {o}", data, n, i, o, r))
        elif name == "latency":
            sizes: tuple[tuple[int, int], ...] = ((128, 128), (512, 256), (4096, 512))
            if ins or outs:
                sizes = tuple((i, o) for i in _or(ins, (512,)) for o in _or(outs, (256,)))
            for r in _or(rates, (1.0,)):
                for i, o in sizes:
                    points.append(BenchPoint(name, f"in {i} out {o} rate {_rate_text(r)}",
                                             data, n, i, o, r))
        elif name == "concurrency":
            for i in _or(ins, (512,)):
                for o in _or(outs, (256,)):
                    for c in _or(conc, (1, 4, 16, 64, 256)):
                        points.append(BenchPoint(name, f"concurrency {c}", data, n, i, o,
                                                 math.inf, c))
        else:
            if not settings.dataset_path:
                raise UserInputError(
                    f"--dataset-path: the sharegpt type needs a local {SHAREGPT_FILE} (nodes have "
                    f"no internet); fetch it where there is ({SHAREGPT_URL}), put it on shared "
                    "storage and pass its path")
            for r in _or(rates, (math.inf, 4.0)):
                points.append(BenchPoint(name, f"rate {_rate_text(r)}", "sharegpt", n,
                                         None, _or(outs, (None,))[0], r))
    return points


def client_argv(point: BenchPoint, base_url: str, output_file: str,
                settings: BenchSettings) -> list[str]:
    """The arguments after `python` for sglang's client: one run, its JSONL to output_file."""
    argv = ["-m", CLIENT_MODULE, "--backend", settings.backend, "--base-url", base_url,
            "--dataset-name", point.dataset, "--num-prompts", str(point.num_prompts),
            "--request-rate", _rate_text(point.request_rate), "--seed", str(settings.seed),
            "--output-file", output_file,
            # Per-request errors, texts and lengths: the validity gate reads them.
            "--output-details", "--disable-tqdm"]
    if settings.dataset_path:
        argv += ["--dataset-path", settings.dataset_path]
    if point.dataset.startswith("random"):
        argv += ["--random-input-len", str(point.input_len),
                 "--random-output-len", str(point.output_len)]
        argv += ["--random-range-ratio", f"{_range_ratio(settings):g}"]
    elif point.output_len is not None:
        argv += ["--sharegpt-output-len", str(point.output_len)]
    if point.max_concurrency is not None:
        argv += ["--max-concurrency", str(point.max_concurrency)]
    if settings.model:
        argv += ["--model", settings.model]
    if settings.tokenizer:
        argv += ["--tokenizer", settings.tokenizer]
    if settings.warmup_requests is not None:
        argv += ["--warmup-requests", str(settings.warmup_requests)]
    return argv


@dataclass
class BenchRun:
    """One point's outcome: sglang's numbers, and whether they may be reported as a success."""

    point: BenchPoint
    argv: list[str]
    exit_code: int
    result: dict[str, Any] = field(default_factory=dict)
    failed: int = 0
    answered_without_tokens: int = 0
    output_tokens: int = 0
    reasons: list[str] = field(default_factory=list)
    client_tail: str = ""

    @property
    def ok(self) -> bool:
        """True when the gate found nothing wrong."""
        return not self.reasons

    def metric(self, name: str) -> float | None:
        """One of sglang's result fields as a number (None when absent)."""
        value = self.result.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        """The run for JSON: the point, the exact client argv, the verdict and sglang's result."""
        details = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")
        return {
            "type": self.point.type, "label": self.point.label, "x": self.point.x,
            "point": {**self.point.__dict__, "request_rate": _rate_text(self.point.request_rate)},
            "argv": ["python", *self.argv], "exit_code": self.exit_code, "ok": self.ok,
            "reasons": self.reasons, "failed": self.failed,
            "answered_without_tokens": self.answered_without_tokens,
            "output_tokens": self.output_tokens,
            "result": {k: v for k, v in self.result.items() if k not in details},
        }


def judge(run: BenchRun, expected_output_len: int | None = None) -> BenchRun:
    """The validity gate: fills failed/output_tokens/reasons from the client's result.

    bench_serving's own totals are not enough: its sglang backend reports the requested
    length for a stream that carried no text, and counts a 200 whose stream stopped short as a
    success. So the gate reads each request: its error, text and length.
    """
    result, point = run.result, run.point
    if not result:
        last = run.client_tail.strip().splitlines()[-1:] or ["no output"]
        run.reasons.append(f"sglang's client wrote no result (exit {run.exit_code}): {last[0]}")
        run.failed = point.num_prompts
        return run
    errors = list(result.get("errors") or [])
    texts = list(result.get("generated_texts") or [])
    lens = list(result.get("output_lens") or [])
    sent = len(errors) or point.num_prompts
    server_errors = [e for e in errors if e and not e.lstrip().startswith("Traceback")]
    answered = [i for i, e in enumerate(errors) if not e]
    empty = [i for i in answered if i < len(texts) and not texts[i]]
    short = []
    if expected_output_len is not None:
        short = [i for i in answered if i not in empty and i < len(lens)
                 and lens[i] < expected_output_len]
    run.answered_without_tokens = len(empty)
    run.output_tokens = sum(int(lens[i]) for i in answered
                            if i not in empty and i < len(lens) and lens[i])
    run.failed = sent - len(answered) + len(empty) + len(short)
    completed = int(result.get("completed") or 0)
    if completed == 0 or len(answered) == 0:
        run.reasons.append("0 requests completed")
    if run.output_tokens == 0:
        run.reasons.append("0 output tokens")
    elif empty:
        run.reasons.append(f"{len(empty)} requests answered without a token")
    if server_errors:
        first = " ".join(server_errors[0].split())[:160]
        run.reasons.append(f"{len(server_errors)} server errors, first: {first}")
    if short:
        run.reasons.append(f"{len(short)} streams ended before their {expected_output_len} "
                           "tokens (no final chunk)")
    if run.failed > MAX_FAILED_FRACTION * sent and not run.reasons:
        run.reasons.append(f"{run.failed}/{sent} requests failed (more than "
                           f"{MAX_FAILED_FRACTION:.0%})")
    if run.exit_code != 0 and not run.reasons:
        run.reasons.append(f"sglang's client exited {run.exit_code}")
    return run


class ClientOutput(Protocol):
    """What a finished client run left: subprocess's CompletedProcess or a transport's result."""

    @property
    def returncode(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


# Runs `python ARGV` with env wherever the client lives (here, or in the job's image).
Runner = Callable[[Sequence[str], Mapping[str, str]], ClientOutput]


def local_runner(python: str, timeout: float | None = None) -> Runner:
    """Run the client with this python where the CLI runs."""
    def run(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, *argv], env=dict(env), capture_output=True, text=True,
                              timeout=timeout, check=False)
    return run


# Run by the client's python before the benchmark: the client's sglang version, host and python,
# and what the server says of itself (/server_info, with the key as the client sends it).
_PROBE = """
import json, os, socket, sys, urllib.request
import importlib.util
try:
    import sglang
    client = getattr(sglang, "__version__", "")
    # An image may hold an sglang without the client (a server-only build, the stand-in).
    if importlib.util.find_spec("sglang.benchmark.serving") is None:
        client = "not importable: No module named 'sglang.benchmark.serving'"
except Exception as error:
    client = "not importable: %s" % error
key = os.environ.get("OPENAI_API_KEY")
# sglang-router 0.3.2 answers the older name only.
for path in ("/server_info", "/get_server_info"):
    request = urllib.request.Request(sys.argv[1].rstrip("/") + path)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            info = json.load(answer)
        break
    except Exception as error:
        info = {"error": "%s: %s" % (path, error), "status": getattr(error, "code", 0)}
        # A refused key is refused under either name.
        if info["status"] == 401:
            break
print(json.dumps({"client": client, "server_info": info, "host": socket.gethostname(),
                  "python": sys.executable}))
"""


def probe(runner: Runner, url: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Where the client runs (host, python, sglang version) and what the server says of itself
    (/server_info), read by the client's own python."""
    done = runner(["-c", _PROBE, url], env)
    lines = (done.stdout or "").strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        found = {}
    if not isinstance(found, dict) or "client" not in found:
        last = ((done.stderr or "").strip().splitlines() or ["no output"])[-1]
        raise UserInputError(f"--client: sglang's client python did not start (exit "
                             f"{done.returncode}): {last}")
    if str(found["client"]).startswith("not importable"):
        where = f"{found.get('python') or 'python'} on {found.get('host') or '?'}"
        raise UserInputError(
            f"--client: sglang is {found['client']} ({where}); use an image with sglang, mount "
            "an environment that has it (--client-mount, --client-env PYTHONPATH=...), or run "
            "the client here (--client local --python PATH)")
    info = found.get("server_info")
    info = info if isinstance(info, dict) else {}
    # sglang's client would poll a server that refuses it for a minute, then fail every run.
    if info.get("status") == 401:
        which = "refused the API key given" if env.get("OPENAI_API_KEY") else "needs an API key"
        raise UserInputError(f"--api-key-file: {url} {which} (401 Unauthorized): pass the job's "
                             "key with --api-key-file FILE or SLURM_SGLANG_API_KEY")
    return {"client_sglang_version": found["client"], "client_host": found.get("host", ""),
            "client_python": found.get("python", ""),
            "server_sglang_version": info.get("version", ""),
            "server_model": info.get("served_model_name") or info.get("model_path", ""),
            "server_info_error": info.get("error", "")}


def find_client_python(python: str | None = None) -> str:
    """A python that imports sglang: the one given, $SLURM_SGLANG_BENCH_PYTHON, or the CLI's."""
    chosen = python or os.environ.get("SLURM_SGLANG_BENCH_PYTHON")
    if chosen:
        if not Path(chosen).is_file():
            raise UserInputError(f"--python: {chosen} does not exist")
        return chosen
    if importlib.util.find_spec("sglang") is None:
        raise UserInputError(
            "--python: sglang is not importable here; give a python that has it (--python or "
            "SLURM_SGLANG_BENCH_PYTHON), e.g. tests/sglang_bench/install.sh's")
    return sys.executable


def client_env(api_key: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client's environment: the key travels as OPENAI_API_KEY, never on a command line."""
    env = dict(os.environ if base is None else base)
    env.pop("API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    # Offline nodes: a hub lookup would hang on DNS before failing.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def _read_result(files: Transport, path: str, secret: str | None) -> dict[str, Any]:
    """The client's result (its JSONL's last line), with the API key scrubbed from the file:
    sglang's client stores the server's /server_info there, whose launch command and
    arguments can hold the key."""
    try:
        text = files.read_text(path)
    except TransportError:
        return {}
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    loaded = [_scrub_json(json.loads(line), secret) for line in lines]
    if secret and secret in text:
        files.write_text(path, "".join(json.dumps(item) + "\n" for item in loaded), 0o600)
    return loaded[-1] if isinstance(loaded[-1], dict) else {}


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "<redacted>") if secret else text


def _scrub_json(value: Any, secret: str | None) -> Any:
    """value with the secret replaced inside every string (never in the JSON's syntax)."""
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, list):
        return [_scrub_json(item, secret) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_json(item, secret) for key, item in value.items()}
    return value


@dataclass
class BenchReport:
    """Every run of one `bench` call, what was served, and where the files went."""

    url: str
    served: dict[str, Any]
    runs: list[BenchRun]
    started: str
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every run passed the validity gate."""
        return bool(self.runs) and all(run.ok for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The whole report for JSON."""
        return {"ok": self.ok, "url": self.url, "started": self.started, "served": self.served,
                "files": self.files, "runs": [run.to_dict() for run in self.runs]}

    def format_table(self) -> str:
        """A table per type: latencies at p50/p90/p99, throughput, failures; then the verdict."""
        lines: list[str] = []
        for name in dict.fromkeys(run.point.type for run in self.runs):
            runs = [run for run in self.runs if run.point.type == name]
            lines += [f"{name}:", _table(runs), ""]
        bad = [run for run in self.runs if not run.ok]
        for run in bad:
            lines.append(f"FAILED {run.point.type} ({run.point.label}): {'; '.join(run.reasons)}")
        verdict = "ok" if self.ok else "FAILED"
        lines.append(f"bench: {verdict}, {len(self.runs) - len(bad)}/{len(self.runs)} runs valid "
                     f"against {self.url}")
        return "\n".join(lines)

    def text(self) -> str:
        """The tables, then where the files went (the results, and any plot)."""
        text = self.format_table()
        if self.files:
            text += f"\nfiles: {self.files[0]}" + "".join(
                f"\n       {path}" for path in self.files[1:] if path.endswith(".png"))
        return text


def parse_types(given: Sequence[str] | None) -> list[str]:
    """--type values (repeatable, comma-separated; "all": every type) as a list of types."""
    types = [name for item in given or ["throughput"] for name in item.split(",") if name]
    return list(BENCH_TYPES) if "all" in types else types


def parse_ints(text: str | None, name: str) -> tuple[int, ...] | None:
    """A comma-separated sweep of whole numbers from 1 (None when not given)."""
    if not text:
        return None
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UserInputError(f"{name}: {text!r} is not a comma-separated list of whole "
                             "numbers") from None
    if not values or min(values) < 1:
        raise UserInputError(f"{name}: every value must be at least 1, got {text!r}")
    return values


def parse_rates(text: str | None) -> tuple[float, ...] | None:
    """--request-rate: a comma-separated sweep of rates above 0, inf for all at once."""
    if not text:
        return None
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UserInputError(f"--request-rate: {text!r} is not a comma-separated list of "
                             "numbers or inf") from None
    if not values or min(values) <= 0:
        raise UserInputError(f"--request-rate: every rate must be above 0, got {text!r}")
    return values


_COLUMNS = (("TTFT ms", "ttft"), ("ITL ms", "itl"), ("TPOT ms", "tpot"))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(runs: Sequence[BenchRun]) -> str:
    header = ["run", "sent", "failed"]
    for title, _ in _COLUMNS:
        header += [f"{title} p50", "p90", "p99"]
    header += ["out tok/s", "total tok/s", "req/s"]
    rows = [header]
    for run in runs:
        row = [run.point.label, str(run.point.num_prompts), str(run.failed)]
        for _, key in _COLUMNS:
            row += [_ms(run.metric(f"median_{key}_ms")), _ms(run.metric(f"p90_{key}_ms")),
                    _ms(run.metric(f"p99_{key}_ms"))]
        row += [_ms(run.metric("output_throughput")), _ms(run.metric("total_throughput")),
                f"{run.metric('request_throughput') or 0:.2f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_bench(url: str, types: Sequence[str], settings: BenchSettings, out_dir: Path | str,
              runner: Runner, *, api_key: str | None = None,
              served: Mapping[str, Any] | None = None,
              progress: Callable[[str], None] | None = None,
              files: Transport | None = None) -> BenchReport:
    """Run every point through sglang's client, judge each, save them under out_dir.

    files is where out_dir is and where the client writes (default: this machine); the
    client's versions and the server's /server_info join `served` first.
    """
    if settings.backend not in BACKENDS:
        raise UserInputError(f"--backend: {settings.backend!r} is not one of {', '.join(BACKENDS)}")
    if settings.dataset_path and files is None and not Path(settings.dataset_path).is_file():
        raise UserInputError(
            f"--dataset-path: {settings.dataset_path} does not exist; fetch {SHAREGPT_FILE} where "
            f"there is internet ({SHAREGPT_URL}) and put it there")
    points = plan_points(types, settings)
    files = files or LocalTransport()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = str(out_dir).rstrip("/")
    env = client_env(api_key)
    report = BenchReport(url.rstrip("/"), dict(served or {}), [], stamp)
    report.served.update(probe(runner, report.url, env))
    files.makedirs(folder)
    for number, point in enumerate(points, 1):
        jsonl = f"{folder}/{stamp}-{number:02d}-{point.type}.jsonl"
        argv = client_argv(point, report.url, jsonl, settings)
        if progress:
            progress(f"[{number}/{len(points)}] {point.type}: {point.label}")
        done = runner(argv, env)
        output = _scrub((done.stdout or "")[-4000:] + (done.stderr or "")[-4000:], api_key)
        run = BenchRun(point, argv, done.returncode, _read_result(files, jsonl, api_key),
                       client_tail=output)
        report.runs.append(judge(run, point.output_len if _exact_lengths(point, settings)
                                 else None))
        report.files.append(jsonl)
        files.write_text(jsonl.removesuffix(".jsonl") + ".log", _scrub(
            f"$ python {shlex.join(argv)}\n{done.stdout or ''}{done.stderr or ''}", api_key), 0o600)
    summary = f"{folder}/{stamp}.json"
    report.files.insert(0, summary)
    # Built from scrubbed parts: the client's result and output lost the key when read.
    files.write_text(summary, json.dumps(report.to_dict(), indent=2, default=str) + "\n", 0o600)
    return report


def _exact_lengths(point: BenchPoint, settings: BenchSettings) -> bool:
    """Whether every request asks for exactly point.output_len tokens (the short-stream check)."""
    if point.dataset.startswith("random"):
        return _range_ratio(settings) == 1.0
    return point.output_len is not None  # sharegpt with --output-len


def plot_report(report: BenchReport, path: Path, python: str | None = None) -> Path:
    """Draw the report's sweeps into path (PNG), with matplotlib from this python or `python`.

    matplotlib is optional here; a local client's python often has it, so the picture is
    drawn there when this one lacks it (python: that python, its summary on this machine).
    """
    from slurm_sglang.bench_plot import plot_summary

    if importlib.util.find_spec("matplotlib") is not None or python is None:
        return plot_summary(report.to_dict(), path)
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_root, "MPLBACKEND": "Agg"}
    # bench_plot needs the standard library and matplotlib only, which that python has.
    done = subprocess.run(
        [python, "-c", "import json, pathlib, sys; from slurm_sglang.bench_plot import "
         "plot_summary; "
         "plot_summary(json.loads(pathlib.Path(sys.argv[1]).read_text()), "
         "pathlib.Path(sys.argv[2]))", report.files[0], str(path)],
        env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserInputError(f"--plot: {last.removeprefix('slurm_sglang.errors.UserInputError: ')}")
    return path


# What `bench compare` sets side by side: sglang's result fields, and whether lower is better.
_COMPARED = (("TTFT p50 ms", "median_ttft_ms", True), ("TTFT p99 ms", "p99_ttft_ms", True),
             ("ITL p50 ms", "median_itl_ms", True), ("TPOT p50 ms", "median_tpot_ms", True),
             ("out tok/s", "output_throughput", False), ("req/s", "request_throughput", False))


def load_summary(path: Path) -> dict[str, Any]:
    """A saved report (`<stamp>.json` under logs/<job>/bench/), checked to be one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"bench compare: {path} does not exist (give two <stamp>.json "
                             "files from logs/<job>/bench/)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"bench compare: {path} is not a bench report: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise UserInputError(f"bench compare: {path} is not a bench report (no 'runs'; give a "
                             "<stamp>.json, not a run's .jsonl)")
    return data


def _delta(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return "-"
    change = "" if not before else f" ({(after - before) / before * 100:+.1f}%)"
    return f"{before:.1f} -> {after:.1f}{change}"


def compare_summaries(first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    """A table of the changes from first to second, run by run (matched on type and label)."""
    def keyed(data: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(run["type"], run["label"]): run for run in data["runs"]}

    before, after = keyed(first), keyed(second)
    header = ["run", *(title for title, _, _ in _COMPARED), "valid"]
    rows = [header]
    for key in [*before, *(key for key in after if key not in before)]:
        old, new = before.get(key), after.get(key)
        name = key[1] if key[1].startswith(key[0]) else f"{key[0]}: {key[1]}"
        if old is None or new is None:
            rows.append([name, *(["-"] * len(_COMPARED)),
                         "only in " + ("second" if old is None else "first")])
            continue
        cells = [_delta(old["result"].get(field), new["result"].get(field))
                 for _, field, _ in _COMPARED]
        valid = f"{'ok' if old['ok'] else 'FAILED'} -> {'ok' if new['ok'] else 'FAILED'}"
        rows.append([name, *cells, valid])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"{first.get('url', '?')} ({first.get('started', '?')}) -> "
             f"{second.get('url', '?')} ({second.get('started', '?')})"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip())
    lines.append("lower is better for the latencies (ms), higher for tok/s and req/s")
    return "\n".join(lines)


def read_api_key(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The server's API key: from path (a file of the user's alone, its first line, as the
    script reads it), else environ's SLURM_SGLANG_API_KEY; None without either."""
    from slurm_sglang.launch_plan import api_key

    return api_key(path or "", environ) or None


def parse_assignments(items: Sequence[str] | None, name: str) -> dict[str, str]:
    """NAME=VALUE options (repeatable) as a dict; anything else is one UserInputError."""
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserInputError(f"{name}: {item!r} is not NAME=VALUE")
        found[key] = value
    return found


def compare_files(reports: Sequence[str]) -> str:
    """`bench compare A B`: two runs' summaries side by side."""
    if len(reports) != 2:
        raise UserInputError("bench compare: give two reports, bench compare A.json B.json")
    return compare_summaries(load_summary(Path(reports[0])), load_summary(Path(reports[1])))

