"""sglang's server flags, offline: typos, ambiguous prefixes, bad values, deprecations.

Pure and fast to import: no sglang needed. The known-flags table, the argparse-faithful reader,
the renames and the reserved flags live in launch_plan (the script runs them too); this module
holds the offline checks `check` adds on top, and the rules' entry points for a plain argv.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, NamedTuple

from slurm_sglang.launch_plan import (
    LATEST_KNOWN,
    RENAMES,
    RESERVED_FLAGS,
    FlagSpec,
    KnownFlags,
    Parallelism,
    ParsedOption,
    Rename,
    SglangArgv,
    check_argv,
    known_versions,
    load_known_flags,
    parallelism_of,
    parse_options,
    read_argv,
    renames_for,
    rewrite,
    server_argv_of,
    value_count,
    version_key,
)

__all__ = [
    "LATEST_KNOWN",
    "RENAMES",
    "RESERVED_FLAGS",
    "FlagProblem",
    "ParsedOption",
    "Rename",
    "RewriteResult",
    "check_known_flags",
    "flag_problems",
    "known_versions",
    "load_known_flags",
    "model_path",
    "parse_options",
    "parse_parallelism",
    "renames_for",
    "rewrite_argv",
    "server_argv",
    "validate_argv",
    "version_key",
]


class FlagProblem(NamedTuple):
    """One thing wrong (error) or worth saying (warning) about an sglang argv."""

    kind: str
    flag: str
    message: str
    severity: str = "error"
    position: int | None = None
    suggestion: str | None = None


class RewriteResult(NamedTuple):
    """An argv after rewriting old spellings, and one note per change or warning."""

    argv: tuple[str, ...]
    notes: tuple[str, ...]


def read_as_written(argv: Sequence[str], version: str = LATEST_KNOWN) -> SglangArgv:
    """An argv read as written, without rewriting old spellings."""
    return SglangArgv(tuple(argv), version, tuple(parse_options(argv, version)))


def rewrite_argv(argv: Sequence[str], target_version: str = LATEST_KNOWN) -> RewriteResult:
    """Rewrite old sglang spellings for the target version; every other byte stays as it was."""
    return RewriteResult(*rewrite(argv, parse_options(argv, target_version), target_version))


def validate_argv(argv: Sequence[str], version: str = LATEST_KNOWN) -> None:
    """Refuse what the launcher owns or must never see (launch_plan.check_argv)."""
    check_argv(read_as_written(argv, version))


def model_path(argv: Sequence[str], version: str = LATEST_KNOWN) -> str:
    """The model path or hub id given with --model-path (any spelling), else ''."""
    return read_as_written(argv, version).model_path


def parse_parallelism(argv: Sequence[str], version: str = LATEST_KNOWN) -> Parallelism:
    """tp/pp/dp/ep and attention DP of an argv; the seed's spellings (--pp) count as what they
    are rewritten to."""
    return parallelism_of(read_argv(argv, version))


def server_argv(argv: Sequence[str], replicas: bool, version: str = LATEST_KNOWN
                ) -> tuple[str, ...]:
    """A server's sglang arguments (launch_plan.server_argv_of) for an argv as written."""
    return server_argv_of(read_as_written(argv, version), replicas)


def _closest(spelling: str, table: KnownFlags) -> str | None:
    close = difflib.get_close_matches(spelling, table.declaration_order, n=1, cutoff=0.6)
    return close[0] if close else None


def _rename_hint(spelling: str, version: str) -> str:
    rename = renames_for(version).get(spelling)
    return f"; slurm-sglang rewrites it to {rename.new}" if rename else ""


def check_known_flags(argv: Sequence[str], version: str = LATEST_KNOWN) -> list[FlagProblem]:
    """Check an sglang argv against the known-flags table of one sglang version, offline."""
    return flag_problems(read_as_written(argv, version))


def flag_problems(read: SglangArgv) -> list[FlagProblem]:
    """check_known_flags on an argv read once (launch_plan.read_argv)."""
    version = read.version
    table = load_known_flags(version)
    problems: list[FlagProblem] = []
    seen: dict[str, str] = {}
    for option in read.options:
        spelling, index = option.spelling, option.position
        if option.token == "--" or (option.spec is None and not option.token.startswith("-")):
            problems.append(
                FlagProblem(
                    "stray-argument",
                    option.token,
                    f"{option.token!r}: sglang takes no positional arguments; is a flag before it"
                    " misspelt, or does it take no value?",
                    position=index,
                )
            )
        elif option.ambiguous_matches:
            problems.append(
                FlagProblem(
                    "ambiguous",
                    spelling,
                    f"{spelling}: ambiguous in sglang {version}: argparse stops with 'ambiguous"
                    f" option: {option.token} could match {', '.join(option.ambiguous_matches)}'"
                    f"{_rename_hint(spelling, version)}",
                    position=index,
                )
            )
        elif option.spec is None:
            closest = _closest(spelling, table)
            hint = _rename_hint(spelling, version) or (
                f"; did you mean {closest}?" if closest else ""
            )
            problems.append(
                FlagProblem(
                    "unknown",
                    spelling,
                    f"{spelling}: unknown sglang flag{hint}",
                    position=index,
                    suggestion=closest,
                )
            )
        else:
            problems.extend(_value_problems(option, option.spec, read.argv))
            deprecated = option.spec.deprecated
            if deprecated is not None:
                use = deprecated.get("use")
                problems.append(
                    FlagProblem(
                        "deprecated",
                        spelling,
                        deprecated.get("error")
                        or f"{spelling}: deprecated in sglang {version}"
                        + (f"; use {use}" if use else ""),
                        severity="warning" if "error" not in deprecated else "error",
                        position=index,
                        suggestion=use,
                    )
                )
            dest = option.spec.dest
            if dest in seen:
                problems.append(
                    FlagProblem(
                        "repeated",
                        spelling,
                        f"{spelling}: given again (first as {seen[dest]}); sglang keeps the last",
                        severity="warning",
                        position=index,
                    )
                )
            seen[dest] = spelling
    return problems


def _value_problems(option: ParsedOption, spec: FlagSpec, argv: Sequence[str]
                    ) -> list[FlagProblem]:
    """A known option's values as argparse checks them: their count, type and choices."""
    spelling, index, values = option.spelling, option.position, option.values(argv)
    problems: list[FlagProblem] = []
    if option.explicit_value is not None and not spec.takes_value:
        problems.append(FlagProblem(
            "unexpected-value", spelling,
            f"{spelling}: takes no value, but was given {option.explicit_value!r}",
            position=index))
    elif len(values) < value_count(spec)[0]:
        wanted = "one argument" if spec.nargs is None else f"{spec.nargs!r} arguments"
        problems.append(FlagProblem("missing-value", spelling,
                                    f"argument {'/'.join(spec.option_strings)}: expected {wanted}",
                                    position=index))
    for value in values:
        problem = _check_value(spec, spelling, value, index)
        if problem is not None:
            problems.append(problem)
    return problems


def _check_value(spec: FlagSpec, spelling: str, value: str, position: int
                 ) -> FlagProblem | None:
    converted: Any = value
    try:
        if spec.value_type == "int":
            converted = int(value)
        elif spec.value_type == "float":
            converted = float(value)
    except ValueError:
        return FlagProblem("bad-value", spelling,
                           f"{spelling}: invalid {spec.value_type} value: {value!r}",
                           position=position)
    if spec.choices is not None and converted not in spec.choices:
        choices = ", ".join(repr(choice) for choice in spec.choices)
        return FlagProblem("bad-value", spelling,
                           f"{spelling}: invalid choice: {value!r} (choose from {choices})",
                           position=position)
    return None
