"""sglang 0.5.23's own parser on the argv every rank receives, and the offline table against it.

Needs the parser venv: tests/sglang_parser/install.sh (or $SLURM_SGLANG_SGLANG_PYTHON).
All argvs go through one check_with_sglang call, so sglang is imported once per module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from slurm_sglang.maintenance.known_flags import read_table_from
from slurm_sglang.sglang_flags import check_known_flags, load_known_flags, rewrite_argv
from slurm_sglang.sglang_parser import (
    PYTHON_ENV,
    ParserVerdict,
    check_with_sglang,
    default_parser_venv,
)

pytestmark = pytest.mark.sglang

SKIP_REASON = "sglang parser not installed: run tests/sglang_parser/install.sh"
MODEL = ["--model-path", "Qwen/Qwen2.5-14B-Instruct"]
MOE_MODEL = ["--model-path", "Qwen/Qwen1.5-MoE-A2.7B"]
NODES = 2
HEAD_IP = "10.0.0.1"
DIST_PORT = "5000"
PORT = "30000"

# The seed's examples as users type them.
SEED_EXAMPLES: dict[str, list[str]] = {
    "tp8": [*MODEL, "--tp", "8"],
    "tp4-pp2": [*MODEL, "--tp", "4", "--pp", "2"],
    "tp8-dp2": [*MODEL, "--tp", "8", "--dp", "2"],
    "tp8-dp2-dp-attention": [*MODEL, "--tp", "8", "--dp", "2", "--enable-dp-attention"],
    "tp8-ep2": [*MOE_MODEL, "--tp", "8", "--ep", "2"],
    "tp16": [*MODEL, "--tp", "16"],
    "tp8-ep2-enable-ep": [*MOE_MODEL, "--tp", "8", "--ep", "2", "--enable-ep"],
}

# (argv, whether sglang 0.5.23's parser accepts it): the offline table must agree on each.
AGREEMENT_CASES: list[tuple[str, ...]] = [
    ("--tp", "2"),
    ("--tp-size", "2"),
    ("--tensor-parallel-size", "2"),
    ("--tp=2",),
    ("--tp", "x"),
    ("--tp",),
    ("--pp", "2"),
    ("--pp=2",),
    ("--pp-size", "2"),
    ("--pipeline-parallel-size", "2"),
    ("--dp", "2"),
    ("--dp-size", "2"),
    ("--ep", "2"),
    ("--ep-size", "2"),
    ("--expert-parallel-size", "2"),
    ("--attn-dp-size", "2"),
    ("--enable-dp-attention",),
    ("--enable-ep-moe",),
    ("--enable-deepep-moe",),
    ("--moe-a2a-backend", "deepep"),
    ("--moe-a2a-backend", "deepepp"),
    ("--max-micro-batch-size", "4"),
    ("--pp-max-micro-batch-size", "4"),
    ("--tp-szie", "2"),
    ("--trust-remote-code",),
    ("--trust-remote",),
    ("--trust-remote-code=yes",),
    ("--mem-fraction-static", "0.8"),
    ("--mem-fraction-static", "lots"),
    ("--cuda-graph-bs-decode", "1", "2", "4"),
    ("--cuda-graph-bs-decode",),
    ("--json-model-override-args", '{"--pp": 2}'),
    ("--base-gpu-id", "-1"),
    ("--disable-cuda-graph",),
    ("--at", "1"),
    ("--dist-timeout", "600"),
    ("stray",),
]


# Flags whose value sglang converts with its own function, which the offline table does not
# run: for the sample value "1" only sglang's parser can tell (and says so, verbatim).
CONVERTED_BY_SGLANG_ONLY = {"--config", "--cuda-graph-config", "--log-level"}


# Every SWEEP_STEP-th flag of the table (the ones above always): one argv costs sglang about
# 50 ms of parser building. With SWEEP_STEP = 1 all 532 flags of 0.5.23, in both spellings,
# agree except the three above (run once while writing this test).
SWEEP_STEP = 8


def every_flag_cases() -> dict[str, list[str]]:
    """Flags of the table, in full and as their prefix less one letter, with a sample value."""
    table = load_known_flags()
    swept = set(table.declaration_order[::SWEEP_STEP]) | CONVERTED_BY_SGLANG_ONLY
    cases: dict[str, list[str]] = {}
    for option_string in sorted(swept):
        spec = table.by_option_string[option_string]
        if option_string in ("-h", "--help") or spec.deprecated:
            continue
        values = [str(spec.choices[0])] if spec.choices else ["1"] if spec.takes_value else []
        cases[f"every/{option_string}"] = [*MODEL, option_string, *values]
        cases[f"every/{option_string}[:-1]"] = [*MODEL, option_string[:-1], *values]
    return cases


def rank_argv(user_argv: Sequence[str], rank: int) -> list[str]:
    """What templates/partials/node_rank.sh.j2 appends for each rank."""
    return [
        *user_argv,
        "--nnodes", str(NODES),
        "--node-rank", str(rank),
        "--dist-init-addr", f"{HEAD_IP}:{DIST_PORT}",
        "--host", "0.0.0.0",
        "--port", PORT,
    ]  # fmt: skip


def find_sglang_python() -> str | None:
    configured = os.environ.get(PYTHON_ENV)
    if configured:
        return configured
    venv = default_parser_venv()
    default = venv / "bin" / "python"
    complete = venv / ".slurm-sglang-parser-complete"
    return str(default) if default.exists() and complete.exists() else None


@pytest.fixture(scope="module")
def sglang_python() -> str:
    python = find_sglang_python()
    if python is None or not Path(python).exists():
        pytest.skip(SKIP_REASON)
    return python


@pytest.fixture(scope="module")
def verdicts(sglang_python: str) -> dict[str, ParserVerdict]:
    requests: dict[str, list[str]] = {}
    for name, user_argv in SEED_EXAMPLES.items():
        rewritten = list(rewrite_argv(user_argv).argv)
        for rank in range(NODES):
            requests[f"{name}/rank{rank}"] = rank_argv(rewritten, rank)
        requests[f"{name}/as-typed"] = rank_argv(user_argv, 0)
    for case in AGREEMENT_CASES:
        requests[f"agree/{' '.join(case)}"] = [*MODEL, *case]
    requests.update(every_flag_cases())
    results = check_with_sglang(requests, python=sglang_python)
    assert {v.status for v in results} <= {"ok", "error"}, results[0].message
    assert {v.sglang_version for v in results} == {"0.5.23"}
    return {v.label: v for v in results}


@pytest.mark.parametrize("name", sorted(SEED_EXAMPLES))
@pytest.mark.parametrize("rank", range(NODES))
def test_every_rank_argv_of_the_seed_examples_passes_sglang(
    verdicts: dict[str, ParserVerdict], name: str, rank: int
) -> None:
    verdict = verdicts[f"{name}/rank{rank}"]
    assert verdict.status == "ok", verdict.message


def test_unrewritten_pp_fails_with_sglangs_ambiguity_message(
    verdicts: dict[str, ParserVerdict],
) -> None:
    verdict = verdicts["tp4-pp2/as-typed"]
    assert verdict.status == "error"
    assert verdict.message == (
        "sglang serve: error: ambiguous option: --pp could match --pp-size, "
        "--pp-max-micro-batch-size, --pp-async-batch-depth"
    )


def test_enable_dp_attention_passes_with_sglangs_deprecation_warning(
    verdicts: dict[str, ParserVerdict],
) -> None:
    verdict = verdicts["tp8-dp2-dp-attention/rank1"]
    assert verdict.status == "ok"
    assert any("'--enable-dp-attention' is deprecated" in w for w in verdict.warnings)


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=" ".join)
def test_offline_table_agrees_with_the_real_parser(
    verdicts: dict[str, ParserVerdict], case: tuple[str, ...]
) -> None:
    verdict = verdicts[f"agree/{' '.join(case)}"]
    offline_errors = [p for p in check_known_flags(MODEL + list(case)) if p.severity == "error"]
    assert (verdict.status == "ok") == (offline_errors == []), (verdict.message, offline_errors)


def test_offline_table_agrees_with_the_real_parser_across_the_table(
    verdicts: dict[str, ParserVerdict],
) -> None:
    disagreeing = set()
    for label in every_flag_cases():
        verdict = verdicts[label]
        offline_errors = [p for p in check_known_flags(verdict.argv) if p.severity == "error"]
        if (verdict.status == "ok") != (offline_errors == []):
            disagreeing.add(label.removeprefix("every/").removesuffix("[:-1]"))
    assert disagreeing == CONVERTED_BY_SGLANG_ONLY


def test_committed_table_equals_a_fresh_one_from_the_installed_sglang(sglang_python: str) -> None:
    fresh = read_table_from(sglang_python)
    committed = load_known_flags(fresh["sglang_version"])
    fresh_strings = {s for entry in fresh["flags"].values() for s in entry["option_strings"]}
    assert fresh_strings == set(committed.by_option_string), (
        "regenerate: python -m slurm_sglang.maintenance.known_flags --python " + sglang_python
    )
