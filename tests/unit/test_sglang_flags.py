"""The offline sglang flag layer: renames, the known-flags table, argparse-like checks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang.launch_plan import SpecError
from slurm_sglang.maintenance.known_flags import describe_parser, format_table
from slurm_sglang.sglang_flags import (
    LATEST_KNOWN,
    RENAMES,
    RESERVED_FLAGS,
    FlagProblem,
    check_known_flags,
    known_versions,
    load_known_flags,
    parse_options,
    renames_for,
    rewrite_argv,
    validate_argv,
    version_key,
)
from slurm_sglang.sglang_parser import check_with_sglang

MODEL = ["--model-path", "Qwen/Qwen2.5-14B-Instruct"]


def errors(problems: list[FlagProblem]) -> list[str]:
    return [p.message for p in problems if p.severity == "error"]


# The seed's examples, as users type them, and what the target sglang must receive.
SEED_EXAMPLES = [
    (["--tp", "8"], ["--tp", "8"]),
    (["--tp", "4", "--pp", "2"], ["--tp", "4", "--pp-size", "2"]),
    (["--tp", "8", "--dp", "2"], ["--tp", "8", "--dp", "2"]),
    (
        ["--tp", "8", "--dp", "2", "--enable-dp-attention"],
        ["--tp", "8", "--dp", "2", "--enable-dp-attention"],
    ),
    (["--tp", "8", "--ep", "2"], ["--tp", "8", "--ep", "2"]),
    (["--tp", "16"], ["--tp", "16"]),
]


@pytest.mark.parametrize(("given", "expected"), SEED_EXAMPLES)
def test_seed_examples_rewrite_to_argv_the_latest_table_accepts(
    given: list[str], expected: list[str]
) -> None:
    result = rewrite_argv(MODEL + given)
    assert list(result.argv) == MODEL + expected
    assert errors(check_known_flags(result.argv)) == []


def test_pp_is_ambiguous_before_rewriting_with_argparse_match_order() -> None:
    problems = check_known_flags(["--tp", "4", "--pp", "2"])
    assert [p.kind for p in problems] == ["ambiguous"]
    assert (
        "ambiguous option: --pp could match --pp-size, --pp-max-micro-batch-size, "
        "--pp-async-batch-depth" in problems[0].message
    )
    assert "rewrites it to --pp-size" in problems[0].message


def test_pp_rewrite_says_what_and_why() -> None:
    result = rewrite_argv(["--tp", "4", "--pp", "2"])
    assert len(result.notes) == 1
    assert result.notes[0].startswith("rewrote --pp -> --pp-size: ")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["--pp=2"], ["--pp-size=2"]),
        (["--max-micro-batch-size", "4"], ["--pp-max-micro-batch-size", "4"]),
        (["--max-micro-batch-size=4"], ["--pp-max-micro-batch-size=4"]),
        (["--tp", "8", "--enable-ep-moe"], ["--tp", "8", "--ep-size", "8"]),
        (["--enable-ep-moe", "--tp-size=4"], ["--ep-size", "4", "--tp-size=4"]),
        (["--tp", "8", "--ep", "2", "--enable-ep-moe"], ["--tp", "8", "--ep", "2"]),
        (["--enable-ep-moe"], []),
        (["--tp", "8", "--ep", "2", "--enable-ep"], ["--tp", "8", "--ep", "2"]),
        (["--tp", "8", "--enable-ep"], ["--tp", "8", "--ep-size", "8"]),
        (["--tp", "8", "--enable-deepep-moe"], ["--tp", "8", "--moe-a2a-backend", "deepep"]),
        (
            ["--enable-deepep-moe", "--moe-a2a-backend", "mooncake"],
            ["--moe-a2a-backend", "mooncake"],
        ),
    ],
)
def test_every_rewrite(given: list[str], expected: list[str]) -> None:
    result = rewrite_argv(given)
    assert list(result.argv) == expected
    assert len(result.notes) == 1
    assert errors(check_known_flags(result.argv)) == []


def test_enable_dp_attention_is_kept_with_a_warning_while_it_still_works() -> None:
    argv = ["--tp", "8", "--dp", "2", "--enable-dp-attention"]
    result = rewrite_argv(argv)
    assert list(result.argv) == argv
    assert result.notes[0].startswith("kept --enable-dp-attention: deprecated since sglang 0.5.22")
    problems = check_known_flags(argv)
    assert [(p.kind, p.severity) for p in problems] == [("deprecated", "warning")]
    assert "--attn-dp-size" in problems[0].message


def test_seed_enable_ep_would_silently_enable_eplb_in_0_5_23() -> None:
    (option,) = [p for p in parse_options(["--enable-ep"]) if p.spec is not None]
    assert option.spec is not None and option.spec.dest == "enable_eplb"


def test_values_are_never_touched() -> None:
    override = '{"--pp": 2, "note": "--enable-ep-moe"}'
    argv = ["--json-model-override-args", override, "--pp", "2", "--served-model-name", "a b"]
    result = rewrite_argv(argv)
    assert list(result.argv) == [
        "--json-model-override-args",
        override,
        "--pp-size",
        "2",
        "--served-model-name",
        "a b",
    ]
    assert errors(check_known_flags(result.argv)) == []


def test_value_that_looks_like_an_old_flag_after_equals_is_kept() -> None:
    argv = ["--served-model-name=--pp", "--pp", "1"]
    assert list(rewrite_argv(argv).argv) == ["--served-model-name=--pp", "--pp-size", "1"]


def test_no_rewrite_for_an_older_target_than_the_rename() -> None:
    result = rewrite_argv(["--tp", "4", "--pp", "2"], target_version="0.4.0")
    assert list(result.argv) == ["--tp", "4", "--pp", "2"]
    assert result.notes == ()


@pytest.mark.parametrize(
    ("target", "given", "expected", "note"),
    [
        ("0.5.3", ["--tp", "4", "--pp", "2"], ["--tp", "4", "--pp", "2"], None),
        ("0.5.4", ["--tp", "4", "--pp", "2"], ["--tp", "4", "--pp-size", "2"], "rewrote --pp"),
        ("0.5.2", ["--tp", "8", "--enable-ep-moe"], ["--tp", "8", "--enable-ep-moe"], "kept"),
        ("0.5.3", ["--tp", "8", "--enable-ep-moe"], ["--tp", "8", "--ep-size", "8"], "rewrote"),
        ("0.5.2", ["--enable-deepep-moe"], ["--enable-deepep-moe"], "kept"),
        (
            "0.5.21",
            ["--dp", "2", "--enable-dp-attention"],
            ["--dp", "2", "--enable-dp-attention"],
            None,
        ),
        (
            "0.5.22",
            ["--dp", "2", "--enable-dp-attention"],
            ["--dp", "2", "--enable-dp-attention"],
            "kept",
        ),
    ],
)
def test_rewrites_follow_the_release_that_changed_the_flag(
    target: str, given: list[str], expected: list[str], note: str | None
) -> None:
    result = rewrite_argv(given, target_version=target)
    assert list(result.argv) == expected
    if note is None:
        assert result.notes == ()
    else:
        (only,) = result.notes
        assert only.startswith(note)


def test_typo_names_the_closest_flag() -> None:
    problems = check_known_flags(["--tp-szie", "4"])
    assert [p.message for p in problems] == [
        "--tp-szie: unknown sglang flag; did you mean --tp-size?"
    ]
    assert problems[0].suggestion == "--tp-size"


def test_a_flag_with_no_near_spelling_names_the_tables_version() -> None:
    (problem,) = check_known_flags(["--zzzz-new-in-a-later-sglang", "1"])
    assert problem.message == (
        "--zzzz-new-in-a-later-sglang: unknown sglang flag (checked against sglang 0.5.23's "
        "flags; a newer sglang needs its own table: docs/sglang-flags.md, \"Regenerating the "
        "known-flags table\")")
    assert problem.suggestion is None


def test_removed_flag_points_to_its_rewrite() -> None:
    (problem,) = check_known_flags(["--enable-ep-moe"])
    assert problem.kind == "unknown"
    assert "rewrites it to --ep-size <tp-size>" in problem.message


@pytest.mark.parametrize(
    ("argv", "kind", "text"),
    [
        (["--tp"], "missing-value", "argument --tp-size/--tensor-parallel-size: expected one"),
        (["--tp", "--pp-size", "2"], "missing-value", "expected one argument"),
        (["--tp", "x"], "bad-value", "--tp: invalid int value: 'x'"),
        (["--tp=x"], "bad-value", "invalid int value: 'x'"),
        (["--moe-a2a-backend", "deepepp"], "bad-value", "invalid choice: 'deepepp'"),
        (["--moe-a2a-backend=deepepp"], "bad-value", "invalid choice: 'deepepp'"),
        (["--trust-remote-code=yes"], "unexpected-value", "takes no value"),
        (["--trust-remote-code", "yes"], "stray-argument", "'yes': sglang takes no positional"),
        (["--", "--tp", "2"], "stray-argument", "'--'"),
        (["--at", "1"], "ambiguous", "could match"),
    ],
)
def test_argparse_like_errors(argv: list[str], kind: str, text: str) -> None:
    problems = check_known_flags(argv)
    assert kind in [p.kind for p in problems]
    assert any(text in p.message for p in problems), problems


def test_unambiguous_prefixes_and_aliases_are_accepted() -> None:
    argv = [
        "--tensor-parallel-size",
        "8",
        "--ep",
        "2",
        "--trust-remote",
        "--mem-fraction-stat",
        "0.8",
    ]
    assert check_known_flags(argv) == []


def test_negative_numbers_and_values_with_spaces_are_values() -> None:
    assert check_known_flags(["--base-gpu-id", "-1"]) == []
    assert check_known_flags(["--served-model-name", "-a b"]) == []


def test_nargs_plus_takes_every_following_value() -> None:
    argv = ["--cuda-graph-bs-decode", "1", "2", "4", "--tp", "2"]
    (first, second) = parse_options(argv)
    assert first.values(argv) == ("1", "2", "4")
    assert second.values(argv) == ("2",)
    assert check_known_flags(["--cuda-graph-bs-decode"])[0].kind == "missing-value"


def test_repeated_flag_warns_that_the_last_wins() -> None:
    (problem,) = check_known_flags(["--tp", "8", "--tp-size", "4"])
    assert (problem.kind, problem.severity) == ("repeated", "warning")


@pytest.mark.parametrize(
    "argv",
    [
        ["--nnodes", "2"],
        ["--nnode", "2"],
        ["--node-rank=1"],
        ["--dist-init-addr", "10.0.0.1:5000"],
        ["--dist-init", "10.0.0.1:5000"],
        ["--host", "0.0.0.0"],
        ["--port", "30001"],
        ["--port=30001"],
        ["--por", "30001"],
    ],
)
def test_reserved_flags_are_found_in_every_spelling(argv: list[str]) -> None:
    with pytest.raises(SpecError, match="is set by the launcher"):
        validate_argv(MODEL + argv)


def test_sglang_port_is_refused_naming_the_launchers_port() -> None:
    # The rank's argv ends in the launcher's --port, which argparse keeps: a user's is ignored.
    with pytest.raises(SpecError, match=r"^--port is set by the launcher: .*`submit --port N`"):
        validate_argv([*MODEL, "--port", "30001"])


def test_dist_timeout_is_the_users() -> None:
    validate_argv([*MODEL, "--dist-timeout", "600"])
    assert "--dist-timeout" not in RESERVED_FLAGS


def test_every_reserved_flag_and_rename_target_exists_in_the_latest_table() -> None:
    table = load_known_flags(LATEST_KNOWN)
    assert set(RESERVED_FLAGS) <= set(table.by_option_string)
    assert {r.old for r in RENAMES} == set(renames_for(LATEST_KNOWN))
    for rename in renames_for(LATEST_KNOWN).values():
        assert rename.new.split()[0] in table.by_option_string, rename
        if rename.action == "warn":
            assert rename.old in table.by_option_string
        else:
            assert rename.old not in table.by_option_string


def test_table_file_is_sorted_and_one_flag_per_line() -> None:
    path = resources.files("slurm_sglang").joinpath("data").joinpath("sglang_flags_0.5.23.json")
    text = path.read_text(encoding="utf-8")
    table = json.loads(text)
    assert table["sglang_version"] == "0.5.23"
    assert list(table["flags"]) == sorted(table["flags"])
    assert len(text.splitlines()) == len(table["flags"]) + 9


def test_known_versions_and_unknown_version_message() -> None:
    assert LATEST_KNOWN in known_versions()
    with pytest.raises(ValueError, match=r"no known-flags table for sglang 9\.9\.9 \(known: "):
        load_known_flags("9.9.9")


def test_version_key_orders_numerically() -> None:
    assert version_key("0.5.10") > version_key("0.5.9")
    assert version_key("v0.5.0rc2") == (0, 5, 0)
    with pytest.raises(ValueError):
        version_key("latest")


def test_flag_layer_imports_no_sglang() -> None:
    probe = "import sys, slurm_sglang.sglang_flags; print('sglang' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert completed.stdout.strip() == "False", completed.stderr


def test_parser_check_is_skipped_where_sglang_does_not_import() -> None:
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang imports in this interpreter")
    (verdict,) = check_with_sglang({"head": ["--tp", "2"]}, python=sys.executable)
    assert verdict.status == "skipped"
    assert verdict.message == (
        "skipped: sglang not importable (install: tests/sglang_parser/install.sh)"
    )


@pytest.mark.parametrize(
    "given", [argv for argv, _ in SEED_EXAMPLES] + [["--pp=2", "--enable-ep-moe"]]
)
def test_rewriting_twice_changes_nothing_more(given: list[str]) -> None:
    once = rewrite_argv(given)
    twice = rewrite_argv(once.argv)
    assert twice.argv == once.argv
    assert all(note.startswith("kept ") for note in twice.notes)


def test_hostile_values_arrive_byte_for_byte() -> None:
    hostile = ['it\'s "quoted"', "$HOME; rm -rf /", "line\nbreak", "--pp", "ünïcode"]
    argv = [
        "--served-model-name",
        hostile[0],
        "--api-key",
        hostile[1],
        "--chat-template",
        hostile[2],
    ]
    argv += ["--tool-call-parser=" + hostile[3], "--tokenizer-path", hostile[4], "--pp", "2"]
    result = rewrite_argv(argv)
    assert list(result.argv) == [*argv[:-2], "--pp-size", "2"]


def test_a_broken_parser_install_is_reported_not_mistaken_for_a_missing_one(
    tmp_path: Path,
) -> None:
    broken_python = tmp_path / "python"
    broken_python.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    broken_python.chmod(0o755)
    (verdict,) = check_with_sglang({"head": ["--tp", "2"]}, python=str(broken_python))
    assert verdict.status == "skipped"
    assert verdict.message == (
        f"skipped: sglang's parser in {broken_python} failed (exit status 139):\nSegmentation fault"
    )


class DeprecatedStoreTrueAction(argparse.Action):
    """Shaped like sglang's: a class name starting with Deprecated and a new_flag."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        self.new_flag = kwargs.pop("new_flag")
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def test_table_generator_describes_what_argparse_declares() -> None:
    parser = argparse.ArgumentParser(prog="sglang serve")
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int)
    parser.add_argument("--backend", choices={"b", "a"})
    parser.add_argument("--buckets", nargs="+", type=float)
    parser.add_argument("--old", action=DeprecatedStoreTrueAction, new_flag="--new")
    text = format_table(describe_parser(parser))
    table = json.loads(text)
    assert table["allow_abbrev"] is True
    assert table["flags"]["--tp-size"] == {
        "dest": "tp_size",
        "option_strings": ["--tp-size", "--tensor-parallel-size"],
        "order": 1,
        "takes_value": True,
        "type": "int",
    }
    assert table["flags"]["--backend"]["choices"] == ["a", "b"]
    assert table["flags"]["--buckets"]["nargs"] == "+"
    assert table["flags"]["--old"]["deprecated"] == {
        "action": "DeprecatedStoreTrueAction",
        "use": "--new",
    }
    assert table["flags"]["--old"]["takes_value"] is False
    assert list(table["flags"]) == ["--backend", "--buckets", "--old", "--tp-size", "-h"]
