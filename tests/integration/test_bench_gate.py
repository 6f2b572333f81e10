"""The validity gate failing on purpose: sglang 0.5.23's real client against a stand-in told to
answer with no tokens, with server errors, or with streams that end without their final chunk.

One stand-in on loopback (no SLURM needed: the gate reads what the client measured); needs
tests/sglang_bench/install.sh's venv. sglang's client sends one warm-up request first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench_client import (
    BENCH_PYTHON,
    MISSING,
    OUTPUT_LEN,
    PROMPTS,
    SIZES,
    cli,
    local_standin,
    model_dir,
    report_of,
)

pytestmark = pytest.mark.skipif(not BENCH_PYTHON.is_file(), reason=MISSING)


def _bench(url: str, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli(["bench", url, *SIZES, "--tokenizer", str(model_dir(tmp_path)), "--python",
                str(BENCH_PYTHON), "--output-dir", str(tmp_path / "bench"), "--json", *extra])
    return done.returncode, report_of(done)


def test_no_tokens_fails_the_gate_though_sglang_counts_full_length(tmp_path: Path) -> None:
    with local_standin(model_dir(tmp_path), tmp_path / "standin.log",
                       SGLANG_STANDIN_FAULT="no-tokens") as url:
        code, report = _bench(url, tmp_path)
    (run,) = report["runs"]
    assert code == 1 and not report["ok"]
    assert run["reasons"] == ["0 output tokens"]
    assert run["output_tokens"] == 0 and run["answered_without_tokens"] == PROMPTS
    # What the gate is for: sglang's own totals claim every requested token.
    assert run["result"]["completed"] == PROMPTS
    assert run["result"]["total_output_tokens"] == PROMPTS * OUTPUT_LEN


def test_server_errors_fail_the_gate_with_their_count(tmp_path: Path) -> None:
    # Every 4th generation fails: the warm-up is the 1st, so the 12 measured are the 2nd to
    # 13th and the 4th, 8th and 12th answer 500.
    with local_standin(model_dir(tmp_path), tmp_path / "standin.log",
                       SGLANG_STANDIN_FAULT="error", SGLANG_STANDIN_FAULT_EVERY="4") as url:
        code, report = _bench(url, tmp_path)
    (run,) = report["runs"]
    assert code == 1 and not report["ok"]
    assert run["failed"] == 3 and run["result"]["completed"] == PROMPTS - 3
    assert run["output_tokens"] == (PROMPTS - 3) * OUTPUT_LEN
    assert len(run["reasons"]) == 1
    assert run["reasons"][0].startswith("3 server errors, first: Internal Server Error: ")
    assert "SGLANG_STANDIN_FAULT=error" in run["reasons"][0]


def test_streams_without_their_final_chunk_fail_the_gate(tmp_path: Path) -> None:
    with local_standin(model_dir(tmp_path), tmp_path / "standin.log",
                       SGLANG_STANDIN_FAULT="truncate") as url:
        code, report = _bench(url, tmp_path)
    (run,) = report["runs"]
    assert code == 1 and not report["ok"]
    assert run["reasons"] == [f"{PROMPTS} streams ended before their {OUTPUT_LEN} tokens "
                              "(no final chunk)"]
    # sglang's client took each cut stream for a whole answer of half the length.
    assert run["result"]["completed"] == PROMPTS and run["failed"] == PROMPTS
    assert run["output_tokens"] == PROMPTS * (OUTPUT_LEN // 2)


def test_a_clean_server_passes_with_exact_counts(tmp_path: Path) -> None:
    with local_standin(model_dir(tmp_path), tmp_path / "standin.log") as url:
        code, report = _bench(url, tmp_path, "--type", "throughput,concurrency",
                              "--concurrency", "1,4")
    assert code == 0 and report["ok"]
    runs = report["runs"]
    assert [run["label"] for run in runs] == [
        "in 32 out 16 rate inf", "concurrency 1", "concurrency 4"]
    for run in runs:
        assert run["failed"] == 0 and run["result"]["completed"] == PROMPTS
        assert run["output_tokens"] == PROMPTS * OUTPUT_LEN
