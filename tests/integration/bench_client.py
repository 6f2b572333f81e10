"""What the bench tests share: sglang 0.5.23's real client (tests/sglang_bench/install.sh), the
tokenizer built offline for it, the stand-in on loopback, and the CLI run as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving import tiny_model

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slurm-sglang"
BENCH_PYTHON = CACHE / "sglang-0.5.23-bench" / "bin" / "python"
PARSER_VENV = CACHE / "sglang-0.5.23-parser"
TOKENIZER_SCRIPT = Path(__file__).resolve().parents[1] / "sglang_bench" / "tokenizer.py"
STANDIN_ROOT = Path(__file__).resolve().parents[2] / "slurm_sglang" / "sandbox" / "standin"
MISSING = "run tests/sglang_bench/install.sh (sglang 0.5.23's benchmark client)"
# 12 requests of exactly 32 tokens in and 16 out: every count below follows from these.
PROMPTS, INPUT_LEN, OUTPUT_LEN = 12, 32, 16
SIZES = ("--num-prompts", str(PROMPTS), "--input-len", str(INPUT_LEN), "--output-len",
         str(OUTPUT_LEN))


def model_dir(root: Path) -> Path:
    """root/models/bench-tiny: a stand-in model with the offline tokenizer sglang's client loads."""
    model = tiny_model(root / "models" / "bench-tiny")
    if not (model / "tokenizer.json").is_file():
        subprocess.run([str(BENCH_PYTHON), str(TOKENIZER_SCRIPT), str(model)], check=True,
                       capture_output=True)
    return model


def client_in_image_options() -> list[str]:
    """`bench` options that run the client in the job's image: the stand-in image has no
    sglang, so the client's venvs are mounted read-only and the image's python3 imports them."""
    venvs = [BENCH_PYTHON.parents[1], PARSER_VENV]
    sites = [str(site) for venv in venvs
             for site in sorted(venv.glob("lib/python3*/site-packages"))]
    options = ["--client", "job", "--client-env", "PYTHONPATH=" + ":".join(sites)]
    for venv in venvs:
        options += ["--client-mount", f"{venv}:{venv}:ro"]
    return options


def cli(argv: list[str], env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m slurm_sglang ARGV`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "slurm_sglang", *argv], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON report `bench --json` printed (stdout holds nothing else)."""
    assert done.stdout.strip().startswith("{"), done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def assert_every_request_counted(report: dict[str, Any], labels: list[str]) -> None:
    """Each run valid, with every request sent, answered, and its exact output tokens."""
    assert [run["label"] for run in report["runs"]] == labels
    for run in report["runs"]:
        assert run["ok"] and run["failed"] == 0, run["reasons"]
        assert run["result"]["completed"] == PROMPTS
        assert run["output_tokens"] == PROMPTS * OUTPUT_LEN
        assert run["result"]["total_output_tokens"] == PROMPTS * OUTPUT_LEN
        assert run["result"]["total_input_tokens"] == PROMPTS * INPUT_LEN
        assert run["argv"][1:3] == ["-m", "sglang.benchmark.serving"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_standin(model: Path, log: Path, **env: str) -> Iterator[str]:
    """The stand-in as one server on 127.0.0.1 with these SGLANG_STANDIN_* knobs; its URL."""
    port = free_port()
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "PYTHONPATH": str(STANDIN_ROOT), "SGLANG_STANDIN_WARMUP_SECONDS": "0.1", **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["python3", "-m", "sglang.launch_server", "--model-path", str(model), "--port",
             str(port), "--served-model-name", "bench-tiny"], stdout=sink,
            stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()
