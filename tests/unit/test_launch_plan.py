"""launch_plan.py as the script runs it: Python 3.6, stdlib only, shell output bash can eval.

The rendered script starts `launch_plan.serve()` (`python3 -I -S`, from the support directory)
once where it starts, for its plan calls, with whatever python3 the cluster ships (RHEL 8's is
3.6), and evals what it prints.
These tests hold the file to that: its syntax and imports, its output read back by bash byte
for byte, its exit codes, and every rule's message written once in the repository.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang import launch_plan
from slurm_sglang.launch_plan import plan
from slurm_sglang.sglang_flags import parse_parallelism, server_argv

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "slurm_sglang" / "launch_plan.py"
SOURCE = MODULE.read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)
# The interpreter the script calls by default; a bare checkout without python3 on PATH still
# runs the module with -I -S, which keeps site packages out just the same.
PYTHON = shutil.which("python3") or sys.executable

# ---- (a) Python 3.6 ----------------------------------------------------------------------------

# Standard modules (and submodules) that appeared after 3.6; `from __future__` is listed because
# `annotations` is 3.7 and nothing else there is needed.
NEWER_MODULES = {
    "__future__", "dataclasses", "contextvars", "importlib.resources", "importlib.metadata",
    "graphlib", "zoneinfo", "tomllib",
}
NEWER_TYPING = {
    "Literal", "Protocol", "Final", "final", "TypedDict", "Annotated", "runtime_checkable",
    "get_origin", "get_args", "OrderedDict", "ForwardRef", "TypeAlias", "ParamSpec",
    "Concatenate", "TypeGuard", "Self", "Never", "LiteralString", "Required", "NotRequired",
    "Unpack", "TypeVarTuple", "override", "assert_never", "reveal_type", "dataclass_transform",
}
# Methods and functions added in 3.7 or later, by attribute name: cheap to spot, and none of
# these names means anything older in the stdlib.
NEWER_ATTRIBUTES = {
    "removeprefix", "removesuffix", "isascii", "prod", "isqrt", "dist", "comb", "perm",
    "cache", "cached_property", "pairwise", "time_ns", "monotonic_ns", "perf_counter_ns",
    "fromisoformat", "is_relative_to", "with_stem", "bit_count", "singledispatchmethod",
}
NEWER_BUILTINS = {"breakpoint", "aiter", "anext"}
# subprocess.run(capture_output=..., text=...) are 3.7.
NEWER_SUBPROCESS_KEYWORDS = {"capture_output", "text"}
# list[int] and friends in annotations are evaluated at import in 3.6 and fail there.
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def test_parses_as_python_3_6() -> None:
    ast.parse(SOURCE, filename=str(MODULE), feature_version=(3, 6))


def _imported_modules() -> Iterator[tuple[str, tuple[str, ...]]]:
    for node in ast.walk(TREE):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "one file: no relative imports"
            yield node.module, tuple(alias.name for alias in node.names)


def test_imports_only_stdlib_modules_that_python_3_6_has() -> None:
    for module, names in _imported_modules():
        top = module.split(".")[0]
        assert top in sys.stdlib_module_names, f"{module} is not in the standard library"
        assert module not in NEWER_MODULES and top not in NEWER_MODULES, f"{module} is 3.7+"
        submodules = {f"{module}.{name}" for name in names}
        assert not submodules & NEWER_MODULES, f"from {module} import {names}: 3.7+"
        if module == "typing":
            assert not set(names) & NEWER_TYPING, f"typing.{set(names) & NEWER_TYPING}: 3.7+"


def _is_subprocess_call(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id == "subprocess")


def _annotations() -> Iterator[ast.expr]:
    for node in ast.walk(TREE):
        if isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            yield node.returns


def test_uses_no_api_newer_than_python_3_6() -> None:
    found = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(f"line {node.lineno}: {node.id}()")
        elif isinstance(node, ast.Call) and _is_subprocess_call(node):
            found.extend(f"line {node.lineno}: subprocess {keyword.arg}="
                         for keyword in node.keywords if keyword.arg in NEWER_SUBPROCESS_KEYWORDS)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            # A bare @lru_cache (without parentheses) is 3.8.
            found.extend(f"line {d.lineno}: bare @lru_cache" for d in node.decorator_list
                         if isinstance(d, (ast.Name, ast.Attribute))
                         and (getattr(d, "id", None) or getattr(d, "attr", None)) == "lru_cache")
    for annotation in _annotations():
        for sub in ast.walk(annotation):
            if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name)
                    and sub.value.id in BUILTIN_GENERICS):
                found.append(f"line {sub.lineno}: {sub.value.id}[...] in an annotation")
            elif isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr):
                found.append(f"line {sub.lineno}: X | Y in an annotation")
    assert not found, "3.7+ features in launch_plan.py:\n" + "\n".join(found)


# ---- (b) the output bash evals -----------------------------------------------------------------

PLAN_VARIABLES = ("MODEL_PATH", "REPLICA_MODE", "REPLICAS", "REPLICA_SPAN", "REPLICA_NODES",
                  "REPLICA_GPU_INDEXES", "REPLICA_BASE_PORT", "GPUS_PER_RANK", "MIN_REPLICAS")
# Eval what the module prints, as plan.sh.j2 does; then every variable and SGLANG_ARGS with NUL
# separators, which hold any byte a bash string can.
EVAL_AND_DUMP = r"""
set -euo pipefail
python=$1 module=$2
shift 2
assignments=$("${python}" -I -S "${module}" script "$@")
eval "${assignments}"
for name in ${PLAN_VARIABLES}; do printf '%s=%s\0' "${name}" "${!name}"; done
printf -- '--\0'
printf '%s\0' "${SGLANG_ARGS[@]}"
"""


def _eval_in_bash(options: list[str], argv: list[str], locale: str = "C.UTF-8"
                  ) -> tuple[dict[str, bytes], list[bytes]]:
    result = subprocess.run(
        ["bash", "-c", EVAL_AND_DUMP, "eval", PYTHON, str(MODULE), *options, "--", *argv],
        capture_output=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin:" + str(Path(PYTHON).parent), "LC_ALL": locale,
             "PLAN_VARIABLES": " ".join(PLAN_VARIABLES)})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    fields = result.stdout.split(b"\0")
    assert fields[-1] == b""
    marker = fields.index(b"--")
    variables = dict(field.split(b"=", 1) for field in fields[:marker])
    return {name.decode(): value for name, value in variables.items()}, fields[marker + 1:-1]


def test_bash_evals_one_server_over_two_nodes() -> None:
    argv = ["--model-path", "m", "--tp", "16"]
    variables, args = _eval_in_bash(["--nodes", "2", "--gpus-per-node", "8"], argv)
    assert variables == {
        "MODEL_PATH": b"m", "REPLICA_MODE": b"0", "REPLICAS": b"1", "REPLICA_SPAN": b"2",
        "REPLICA_NODES": b"0,1", "REPLICA_GPU_INDEXES": b"0,1,2,3,4,5,6,7",
        "REPLICA_BASE_PORT": b"30001", "GPUS_PER_RANK": b"8", "MIN_REPLICAS": b"1",
    }
    assert args == [arg.encode() for arg in [*argv, "--enable-metrics"]]


def test_bash_evals_replicas_as_the_plan_places_them() -> None:
    argv = ["--model-path", "m", "--tp", "2", "--dp", "8"]
    variables, args = _eval_in_bash(["--nodes", "2", "--gpus-per-node", "8"],
                                    ["--port", "31000", *argv])
    placed = plan(parse_parallelism(argv), 2, 8, 31000)
    assert variables["REPLICA_MODE"] == b"1" and variables["REPLICAS"] == b"8"
    assert variables["REPLICA_NODES"].decode() == ";".join(
        ",".join(map(str, r.nodes)) for r in placed.replicas)
    assert variables["REPLICA_GPU_INDEXES"].decode() == ";".join(
        ",".join(map(str, r.gpus)) for r in placed.replicas)
    assert variables["REPLICA_BASE_PORT"] == str(placed.replicas[0].port).encode() == b"31001"
    # Each replica is a server of dp 1: --dp stays out of its argv.
    assert args == [b"--model-path", b"m", b"--tp", b"2", b"--enable-metrics"]


def test_the_script_shows_the_replica_plan_that_check_shows(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model-path", "m", "--tp", "2", "--dp", "8"]
    launch_plan.script_assignments(["--nodes", "2", "--gpus-per-node", "8"], argv,
                                   {"PWD": str(REPO)})
    shown = capsys.readouterr().err
    assert "slurm-sglang: plan: tp 2 pp 1 dp 8 ep 1, behind sglang-router (cache_aware):" in shown
    table = plan(parse_parallelism(argv), 2, 8).table().splitlines()
    # A header, 8 replicas, the router and its metrics port, 2 reasons.
    assert len(table) == 13 and all(f"\n  {line}\n" in shown for line in table)


@pytest.mark.parametrize("replicas", [False, True])
@pytest.mark.parametrize("given", [[], ["--enable-metrics"],
                                   ["--enable-metrics-for-all-schedulers"]])
def test_every_server_gets_enable_metrics_once(given: list[str], replicas: bool) -> None:
    argv = ["--model-path", "m", *given, "--tp", "2", "--dp", "2"]
    served = server_argv(argv, replicas)
    # Given by the user it is not given twice; a longer flag is another one.
    assert served.count("--enable-metrics") == 1
    assert set(given) <= set(served)


AWKWARD = {
    "json": ["--json-model-override-args",
             '{"rope_scaling": {"type": "yarn", "factor": 4.0}, "note": "a b"}'],
    "quotes": ["--served-model-name", "it's \"quoted\" and 'single'"],
    "spaces": ["--model-path", "/models/a model  with   spaces/"],
    "command-substitution": ["--chat-template", "$(touch /tmp/pwned) `id` ${HOME} $HOME"],
    "shell-metacharacters": ["--tokenizer-path", "a;b|c&d<e>f*g?[h]~!#%^ \\ end\\"],
    "unicode": ["--served-model-name", "模型-ümlaut-😀-\u200b"],
    "tab-and-empty": ["--revision", "tab\there", "--download-dir", ""],
    "dash-value": ["--json-model-override-args", "-not a flag"],
}


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
@pytest.mark.parametrize("case", list(AWKWARD))
def test_arguments_round_trip_byte_for_byte(case: str, locale: str) -> None:
    model = ["--model-path", "m"] if case != "spaces" else []
    argv = [*model, *AWKWARD[case], "--tp", "2"]
    variables, args = _eval_in_bash(["--nodes", "2", "--gpus-per-node", "8"], argv, locale)
    assert args == [arg.encode() for arg in [*argv, "--enable-metrics"]]
    expected_model = AWKWARD[case][1] if case == "spaces" else "m"
    assert variables["MODEL_PATH"] == expected_model.encode()


# ---- (c) exit codes ----------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-I", "-S", str(MODULE), *args], capture_output=True,
                          text=True, timeout=60, check=False)


BAD = {
    "tp-not-dividing-nodes": (["--nodes", "2", "--gpus-per-node", "8", "--", "--model-path", "m",
                               "--tp", "3"], "is not divisible by the 2 nodes"),
    "too-many-gpus": (["--nodes", "1", "--gpus-per-node", "8", "--", "--model-path", "m", "--tp",
                       "16"], "ask for 2 node(s)"),
    "reserved-flag": (["--", "--model-path", "m", "--nnod", "2"], "is set by the launcher"),
    "secret-flag": (["--", "--model-path", "m", "--api-key", "sk-secret"], "--api-key-file"),
    "no-model": (["--", "--tp", "2"], "--model-path is required"),
    "tp-not-a-number": (["--", "--model-path", "m", "--tp", "$(id)"], "is not a whole number"),
    "newline": (["--", "--model-path", "m\n--tp 2"], "contains a newline"),
    "replicas-without-gpus": (["--nodes", "2", "--", "--model-path", "m", "--dp", "2"],
                              "needs the GPUs per node"),
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["plan", "dry-run"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(dry_run: bool, case: str) -> None:
    args, expected = BAD[case]
    split = args.index("--") + 1
    result = _run("script", *args[:split], *(["--dry-run"] if dry_run else []), *args[split:])
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slurm-sglang: "), result.stderr
    assert expected in lines[0]
    assert "sk-secret" not in result.stderr


def test_usage_without_a_mode_exits_2_with_one_line() -> None:
    result = _run("--nodes", "2")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("argv", "nodes"), [
    ("--tp 16", 2), ("--tp 2 --dp 8", 2), ("--tp 16 --dp 2", 4), ("--tp 8 --dp 2", 3),
    ("--tp 8 --dp 4 --enable-dp-attention", 1),
])
def test_dry_run_prints_the_table_and_exits_0(argv: str, nodes: int) -> None:
    sglang_args = ["--model-path", "m", *argv.split()]
    # As the script evals it: the table printed, the script ended with 0.
    result = subprocess.run(
        ["bash", "-c", 'eval "$("$@")"; echo not reached', "eval", PYTHON, "-I", "-S",
         str(MODULE), "script", "--nodes", str(nodes), "--gpus-per-node", "8", "--",
         "--dry-run", *sglang_args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plan(parse_parallelism(sglang_args), nodes, 8).table() + "\n"
    assert all(line.startswith("slurm-sglang: note: ") for line in result.stderr.splitlines())


def test_one_server_answers_every_plan_call_of_a_job() -> None:
    # As the script's coproc sends them: a count, then each argument ended by NUL.
    def request(*argv: bytes) -> bytes:
        return b"".join(field + b"\0" for field in (str(len(argv)).encode(), *argv))

    calls = [(b"script", b"--", b"--model-path", b"m\xff", b"--tp", b"2"),
             (b"script", b"--", b"--model-path", b"m", b"--host", b"h"),
             (b"ports", b"--job-id", b"7", b"--port", b"30000", b"--listening", b"n1=30000")]
    server = subprocess.run(
        [PYTHON, "-I", "-S", "-c", "import sys; sys.path[:0] = sys.argv[1:2]; import launch_plan; "
         "sys.exit(launch_plan.serve())", str(MODULE.parent)],
        input=b"".join(request(*call) for call in calls), capture_output=True, timeout=60,
        check=False)
    assert server.returncode == 0, server.stderr
    *fields, rest = server.stdout.split(b"\0")
    answers = list(zip(fields[0::2], fields[1::2], strict=True))
    # Each answer is what one run of the file prints for that call, byte for byte.
    assert rest == b"" and len(answers) == len(calls)
    for call, (out, code) in zip(calls, answers, strict=True):
        alone = subprocess.run([PYTHON, "-I", "-S", str(MODULE), *call], capture_output=True,
                               timeout=60, check=False)
        assert (out, code) == (alone.stdout, str(alone.returncode).encode())
    assert [code for _, code in answers] == [b"0", b"2", b"0"]
    assert b"--model-path 'm\xff'" in answers[0][0] and answers[1][0] == b""
    assert b"PORT=30001" in answers[2][0]


def test_without_nodes_the_arguments_are_checked_alone() -> None:
    assert _run("script", "--", "--model-path", "m", "--tp", "3").returncode == 0
    refused = _run("script", "--", "--model-path", "m", "--host", "h")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1


# ---- (d) every rule's message written once -----------------------------------------------------

# Where a message could be copied: the package, the templates and the committed rendering
# (its support directory is a link to the package, so it is not read twice). Tests and docs
# quote messages on purpose.
SEARCHED = ("slurm_sglang", "templates")
SEARCHED_FILES = ("sbatch/run.sbatch",)
PLACEHOLDER = re.compile(r"\{[^{}]*\}")
MIN_FRAGMENT = 12


def _rule_messages() -> list[ast.Constant]:
    """Format strings of the rules' messages: what SpecError and PlanError are raised with,
    what check_parallelism reports, and the reasons RESERVED_FLAGS and SECRET_FLAGS give."""
    found: list[ast.Constant] = []
    for node in ast.walk(TREE):
        carrier: ast.AST | None = None
        if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name)
                and node.exc.func.id in ("SpecError", "PlanError")):
            carrier = node.exc
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "append" and isinstance(node.func.value, ast.Name)
              and node.func.value.id == "problems"
              and not (node.args and isinstance(node.args[0], ast.Call)
                       and isinstance(node.args[0].func, ast.Name)
                       and node.args[0].func.id == "FlagProblem")):
            # check_parallelism's lines; FlagProblems echo argparse's own wording.
            carrier = node
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and node.target.id in ("RESERVED_FLAGS", "SECRET_FLAGS")
              and isinstance(node.value, ast.Dict)):
            # The reasons, not the flags they are keyed by.
            carrier = ast.Tuple(elts=node.value.values)
        if carrier is not None:
            found.extend(sub for sub in ast.walk(carrier) if isinstance(sub, ast.Constant)
                         and isinstance(sub.value, str) and len(sub.value) >= MIN_FRAGMENT)
    return found


def _literal_pieces(message: ast.Constant) -> list[str]:
    """The fixed text of a message as written in the source: each string literal a message is
    concatenated from, split at its placeholders, longest first."""
    segment = ast.get_source_segment(SOURCE, message) or ""
    pieces: list[str] = []
    for literal in re.findall(r'"(?:[^"\\]|\\.)*"', segment):
        text = ast.literal_eval(literal)
        pieces.extend(piece.strip() for piece in PLACEHOLDER.split(text))
    return sorted((p for p in pieces if len(p) >= MIN_FRAGMENT), key=len, reverse=True)


def _searched_texts() -> dict[str, str]:
    paths = [path for folder in SEARCHED for path in (REPO / folder).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts
             and path.suffix in (".py", ".j2", ".sh", ".json", ".yaml")]
    paths += [REPO / name for name in SEARCHED_FILES]
    return {str(path.relative_to(REPO)): path.read_text(encoding="utf-8", errors="replace")
            for path in paths}


def test_rule_messages_are_found() -> None:
    # A guard on the collector: a rewrite that hides the messages would pass the next test.
    assert len(_rule_messages()) >= 15


def test_every_rule_message_is_written_once_in_the_repository() -> None:
    texts = _searched_texts()
    module_key = str(MODULE.relative_to(REPO))
    copies = []
    for message in _rule_messages():
        pieces = _literal_pieces(message)
        if not pieces:
            continue
        # The most telling piece is the longest one that no other message of the module shares.
        distinctive = [p for p in pieces if texts[module_key].count(p) == 1]
        assert distinctive, f"line {message.lineno}: no piece of {message.value!r} is its own"
        fragment = distinctive[0]
        where = {path: text.count(fragment) for path, text in texts.items() if fragment in text}
        if where != {module_key: 1}:
            copies.append(f"{fragment!r} (line {message.lineno}): {where}")
    assert not copies, "rule messages written more than once:\n" + "\n".join(copies)


def test_module_and_package_are_one_file() -> None:
    # The script's copy is the package's file (render writes it, sbatch/ links to it).
    assert Path(launch_plan.__file__).resolve() == MODULE.resolve()
    link = REPO / "sbatch" / "slurm-sglang"
    if link.is_symlink():
        assert (link / "launch_plan.py").resolve() == MODULE.resolve()


def test_writing_the_support_files_again_leaves_unchanged_ones_as_they_were(tmp_path: Path
                                                                           ) -> None:
    # The script imports launch_plan.py, so python keeps it compiled in __pycache__ beside
    # it; a file rewritten at every submit would make every job compile it again.
    from slurm_sglang.render import write_support_dir

    write_support_dir(tmp_path)
    module = tmp_path / "launch_plan.py"
    os.utime(module, (1, 1))
    (tmp_path / "stage_model.py").write_text("changed")
    write_support_dir(tmp_path)
    assert module.stat().st_mtime == 1
    assert (tmp_path / "stage_model.py").read_text() != "changed"


@pytest.mark.parametrize(("argv", "reads"), [
    (["--model-path", "m", "--tp", "2", "--dp", "2"], 1),
    # An old spelling moves tokens: the rewritten argv is read once more, and only then.
    (["--model-path", "m", "--tp", "2", "--pp", "2"], 2),
])
def test_check_reads_sglangs_argv_once(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                       reads: int) -> None:
    from slurm_sglang import api

    real = launch_plan.parse_options
    calls: list[tuple[str, ...]] = []

    def counted(given: Sequence[str], version: str = launch_plan.LATEST_KNOWN) -> Any:
        calls.append(tuple(given))
        return real(given, version)

    monkeypatch.setattr(launch_plan, "parse_options", counted)
    report = api.check(argv, "default", nodes=1)
    assert report.ok, report.problems
    assert len(calls) == reads, calls
