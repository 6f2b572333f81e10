"""sglang's server flags, offline: typos, ambiguous prefixes, bad values, deprecations.

Pure and fast to import: no sglang needed. The known-flags table, the argparse-faithful reader,
the renames and the reserved flags live in launch_plan (the script runs them too); this module
holds the offline checks `check` adds on top.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from slurm_sglang.launch_plan import (
    LATEST_KNOWN,
    RENAMES,
    RESERVED_FLAGS,
    FlagProblem,
    KnownFlags,
    ParsedOption,
    Rename,
    RewriteResult,
    SglangArgv,
    known_versions,
    load_known_flags,
    parse_options,
    read_as_written,
    renames_for,
    rewrite_argv,
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
    "parse_options",
    "renames_for",
    "rewrite_argv",
    "version_key",
]


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
            problems.extend(option.problems)
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
