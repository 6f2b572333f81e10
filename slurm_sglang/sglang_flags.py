"""sglang's server flags, offline: renames across versions, checks, reserved flags.

Pure and fast to import: no sglang needed. The table and the argparse-faithful reader live in
sglang_known_flags; this module holds what slurm-sglang decides about flags.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from slurm_sglang.sglang_known_flags import (
    LATEST_KNOWN,
    FlagProblem,
    KnownFlags,
    ParsedOption,
    known_versions,
    load_known_flags,
    parse_options,
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
    "find_reserved_flags",
    "known_versions",
    "load_known_flags",
    "parse_options",
    "renames_for",
    "rewrite_argv",
    "version_key",
]


RenameAction = Literal["rename", "ep-size-from-tp", "a2a-backend", "warn"]


@dataclass(frozen=True)
class Rename:
    """An old sglang spelling, what replaces it, and from which sglang version on.

    `since` is the first version the rewrite applies to. Where the release that changed the
    flag is not known exactly, it is the version where the change was verified with sglang's
    own parser, and `reason` says so.
    """

    old: str
    new: str
    since: str
    action: RenameAction
    reason: str


# Versions were read from sglang's released wheels (server_args.py of 0.4.10.post2, 0.5.1-0.5.4,
# 0.5.10, 0.5.16, 0.5.20-0.5.22) and checked with 0.5.23's parser.
RENAMES: tuple[Rename, ...] = (
    Rename(
        "--pp",
        "--pp-size",
        "0.5.4",
        "rename",
        "--pp only ever worked as an argparse prefix of --pp-size; since sglang 0.5.4 added"
        " --pp-max-micro-batch-size (and later --pp-async-batch-depth) it is ambiguous and"
        " sglang stops",
    ),
    Rename(
        "--max-micro-batch-size",
        "--pp-max-micro-batch-size",
        "0.5.4",
        "rename",
        "renamed in sglang 0.5.4 (PR #11279); the old name is rejected",
    ),
    Rename(
        "--enable-ep-moe",
        "--ep-size <tp-size>",
        "0.4.10",
        "warn",
        "deprecated since sglang 0.4.10.post2 but still works (sglang sets ep size = tp size);"
        " it stops sglang from 0.5.3 on",
    ),
    Rename(
        "--enable-ep-moe",
        "--ep-size <tp-size>",
        "0.5.3",
        "ep-size-from-tp",
        "it meant 'expert parallel size = tensor parallel size'; sglang 0.5.3 stops on it"
        " (deprecated by PR #8658), later releases no longer know it",
    ),
    Rename(
        "--enable-ep",
        "--ep-size <tp-size>",
        "0.4.10",
        "ep-size-from-tp",
        "the seed's shorthand for expert parallelism; sglang reads it as a prefix, ambiguous"
        " while --enable-ep-moe exists and, once that is gone, silently --enable-eplb (expert"
        " load balancing)",
    ),
    Rename(
        "--enable-deepep-moe",
        "--moe-a2a-backend deepep",
        "0.4.10",
        "warn",
        "deprecated since sglang 0.4.10.post2 but still works (sglang sets --moe-a2a-backend"
        " deepep); it stops sglang from 0.5.3 on",
    ),
    Rename(
        "--enable-deepep-moe",
        "--moe-a2a-backend deepep",
        "0.5.3",
        "a2a-backend",
        "replaced by --moe-a2a-backend deepep (PR #8658; sglang then sets ep size = tp size"
        " itself); sglang 0.5.3 stops on it, later releases no longer know it",
    ),
    Rename(
        "--enable-dp-attention",
        "--attn-dp-size <dp-size>",
        "0.5.22",
        "warn",
        "deprecated since sglang 0.5.22 but still works: sglang reads --dp N"
        " --enable-dp-attention as --attn-dp-size N with dp 1; removal planned after"
        " 2026-12-31, so it is kept as is",
    ),
)


def renames_for(target_version: str) -> dict[str, Rename]:
    """The rename that applies to each old spelling for a target version (the newest one)."""
    applicable = [r for r in RENAMES if version_key(target_version) >= version_key(r.since)]
    return {r.old: r for r in sorted(applicable, key=lambda r: version_key(r.since))}


@dataclass(frozen=True)
class RewriteResult:
    """An argv after rewriting old spellings, and one note per change or warning."""

    argv: tuple[str, ...]
    notes: tuple[str, ...]


def _last_value(parsed: Sequence[ParsedOption], argv: Sequence[str], dest: str) -> str | None:
    """The value argparse would keep for a dest (the last one given), as written."""
    found = [p.values(argv) for p in parsed if p.spec is not None and p.spec.dest == dest]
    return found[-1][0] if found and found[-1] else None


def rewrite_argv(argv: Sequence[str], target_version: str = LATEST_KNOWN) -> RewriteResult:
    """Rewrite old sglang spellings for the target version; every other byte stays as it was."""
    renames = renames_for(target_version)
    parsed = parse_options(argv, target_version)
    replacements: dict[int, list[str]] = {}
    notes: list[str] = []
    for option in parsed:
        rename = renames.get(option.spelling)
        if rename is None:
            continue
        written = " ".join([option.token, *(argv[i] for i in option.value_indexes)])
        if rename.action == "rename":
            new_token = rename.new + option.token[len(rename.old) :]
            replacements[option.index] = [new_token]
            notes.append(f"rewrote {option.token} -> {new_token}: {rename.reason}")
        elif rename.action == "ep-size-from-tp":
            tp = _last_value(parsed, argv, "tp_size")
            if _last_value(parsed, argv, "ep_size") is not None or tp is None:
                replacements[option.index] = []
                why = "--ep-size is given" if tp is not None else "tp is 1, so ep is 1"
                notes.append(f"dropped {option.token} ({why}): {rename.reason}")
            else:
                replacements[option.index] = ["--ep-size", tp]
                notes.append(f"rewrote {option.token} -> --ep-size {tp}: {rename.reason}")
        elif rename.action == "a2a-backend":
            if _last_value(parsed, argv, "moe_a2a_backend") is not None:
                replacements[option.index] = []
                why = "--moe-a2a-backend is given"
                notes.append(f"dropped {option.token} ({why}): {rename.reason}")
            else:
                replacements[option.index] = ["--moe-a2a-backend", "deepep"]
                notes.append(f"rewrote {option.token} -> --moe-a2a-backend deepep: {rename.reason}")
        else:
            notes.append(f"kept {written}: {rename.reason}")
    rewritten: list[str] = []
    for index, token in enumerate(argv):
        rewritten.extend(replacements.get(index, [token]))
    return RewriteResult(tuple(rewritten), tuple(notes))


def _closest(spelling: str, table: KnownFlags) -> str | None:
    close = difflib.get_close_matches(spelling, table.declaration_order, n=1, cutoff=0.6)
    return close[0] if close else None


def _rename_hint(spelling: str, version: str) -> str:
    rename = renames_for(version).get(spelling)
    return f"; slurm-sglang rewrites it to {rename.new}" if rename else ""


def check_known_flags(argv: Sequence[str], version: str = LATEST_KNOWN) -> list[FlagProblem]:
    """Check an sglang argv against the known-flags table of one sglang version, offline."""
    table = load_known_flags(version)
    problems: list[FlagProblem] = []
    seen: dict[str, str] = {}
    for option in parse_options(argv, version):
        spelling, index = option.spelling, option.index
        if option.token == "--" or (option.spec is None and not option.token.startswith("-")):
            problems.append(
                FlagProblem(
                    "stray-argument",
                    option.token,
                    f"{option.token!r}: sglang takes no positional arguments; is a flag before it"
                    " misspelt, or does it take no value?",
                    index=index,
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
                    index=index,
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
                    index=index,
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
                        index=index,
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
                        index=index,
                    )
                )
            seen[dest] = spelling
    return problems


RESERVED_FLAGS: Mapping[str, str] = {
    "--nnodes": "the launcher sets it from the allocation's node count",
    "--node-rank": "the launcher sets it per node from SLURM_NODEID",
    "--dist-init-addr": "the launcher sets it to the head node's address and a free port",
    "--host": (
        "the launcher binds the head's HTTP server on the fabric address it reports as the"
        " endpoint (sglang's default, 127.0.0.1, is unreachable from other nodes)"
    ),
}


def find_reserved_flags(argv: Sequence[str], version: str = LATEST_KNOWN) -> list[FlagProblem]:
    """Find the flags the launcher sets itself, in any spelling argparse accepts (prefixes too)."""
    table = load_known_flags(version)
    reserved_dests = {
        table.by_option_string[flag].dest: flag
        for flag in RESERVED_FLAGS
        if flag in table.by_option_string
    }
    problems = []
    for option in parse_options(argv, version):
        if option.spec is not None and option.spec.dest in reserved_dests:
            flag = reserved_dests[option.spec.dest]
            problems.append(
                FlagProblem(
                    "reserved",
                    option.spelling,
                    f"{option.spelling}: slurm-sglang sets {flag} itself ({RESERVED_FLAGS[flag]});"
                    " remove it",
                    index=option.index,
                )
            )
    return problems
