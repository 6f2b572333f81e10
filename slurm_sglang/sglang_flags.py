"""sglang's server flags, offline: typos, ambiguous prefixes, bad values, deprecations.

Pure and fast to import: no sglang needed. The known-flags table, the argparse-faithful reader,
the renames, the reserved flags and the offline flag checks (flag_problems) live in launch_plan
(the script runs them too); this module holds the rules' entry points for a plain argv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from slurm_sglang.launch_plan import (
    LATEST_KNOWN,
    RENAMES,
    RESERVED_FLAGS,
    FlagProblem,
    Parallelism,
    ParsedOption,
    Rename,
    SglangArgv,
    check_argv,
    flag_problems,
    known_versions,
    load_known_flags,
    parallelism_of,
    parse_options,
    read_argv,
    renames_for,
    rewrite,
    server_argv_of,
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


def check_known_flags(argv: Sequence[str], version: str = LATEST_KNOWN) -> list[FlagProblem]:
    """Check an sglang argv against the known-flags table of one sglang version, offline."""
    return flag_problems(read_as_written(argv, version))
