"""The known-flags table of an sglang version, and argv read against it as argparse reads it.

The tables in slurm_sglang/data/ come from sglang's own parser (python -m
slurm_sglang.maintenance.known_flags). parse_options reads an argv the way argparse (Python
3.10/3.11, allow_abbrev on, as in sglang) does, so a typo, an ambiguous prefix or a missing
value is found at submit time. Pure and fast to import: no sglang needed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

LATEST_KNOWN = "0.5.23"
REGENERATE_HINT = (
    "python -m slurm_sglang.maintenance.known_flags --python <python with sglang> --output "
    "slurm_sglang/data/sglang_flags_<version>.json"
)

Severity = Literal["error", "warning"]
ProblemKind = Literal[
    "unknown",
    "ambiguous",
    "missing-value",
    "unexpected-value",
    "bad-value",
    "stray-argument",
    "deprecated",
    "repeated",
    "reserved",
]


def version_key(version: str) -> tuple[int, ...]:
    """Order sglang versions by their leading numbers: "0.5.10" > "0.5.9"; suffixes ignored."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("v"))
    if match is None:
        raise ValueError(f"not an sglang version: {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


@dataclass(frozen=True)
class FlagSpec:
    """One option of sglang's server parser, as the known-flags table records it."""

    option_strings: tuple[str, ...]
    dest: str
    order: int
    takes_value: bool
    nargs: int | str | None = None
    choices: tuple[Any, ...] | None = None
    value_type: str | None = None
    deprecated: Mapping[str, str] | None = None

    @property
    def display(self) -> str:
        """Name the option as argparse does in its errors: every spelling, slash-separated."""
        return "/".join(self.option_strings)


@dataclass(frozen=True)
class KnownFlags:
    """The known-flags table of one sglang version."""

    sglang_version: str
    allow_abbrev: bool
    by_option_string: Mapping[str, FlagSpec]
    # argparse tries option strings in declaration order; its "could match" lists follow it.
    declaration_order: tuple[str, ...]


def known_versions() -> tuple[str, ...]:
    """The sglang versions that have a known-flags table, oldest first."""
    names = [entry.name for entry in resources.files("slurm_sglang").joinpath("data").iterdir()]
    found = [m.group(1) for n in names if (m := re.fullmatch(r"sglang_flags_(.+)\.json", n))]
    return tuple(sorted(found, key=version_key))


@functools.lru_cache(maxsize=8)
def load_known_flags(version: str = LATEST_KNOWN) -> KnownFlags:
    """Load the known-flags table of one sglang version; unknown versions name the known ones."""
    path = resources.files("slurm_sglang").joinpath("data").joinpath(f"sglang_flags_{version}.json")
    if not path.is_file():
        raise ValueError(
            f"no known-flags table for sglang {version} (known: {', '.join(known_versions())}); "
            f"generate one with: {REGENERATE_HINT}"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    by_option_string: dict[str, FlagSpec] = {}
    for entry in raw["flags"].values():
        spec = FlagSpec(
            option_strings=tuple(entry["option_strings"]),
            dest=entry["dest"],
            order=entry["order"],
            takes_value=entry["takes_value"],
            nargs=entry.get("nargs"),
            choices=tuple(entry["choices"]) if "choices" in entry else None,
            value_type=entry.get("type"),
            deprecated=entry.get("deprecated"),
        )
        for option_string in spec.option_strings:
            by_option_string[option_string] = spec
    declaration_order = tuple(
        sorted(
            by_option_string,
            key=lambda s: (by_option_string[s].order, by_option_string[s].option_strings.index(s)),
        )
    )
    return KnownFlags(
        raw["sglang_version"], raw["allow_abbrev"], by_option_string, declaration_order
    )


def table_for(version: str) -> KnownFlags:
    """The table of this version, else the newest one not newer than it, else the oldest."""
    versions = known_versions()
    if version in versions:
        return load_known_flags(version)
    older = [v for v in versions if version_key(v) <= version_key(version)]
    return load_known_flags(older[-1] if older else versions[0])


@dataclass(frozen=True)
class FlagProblem:
    """One thing wrong (error) or worth saying (warning) about an sglang argv."""

    kind: ProblemKind
    flag: str
    message: str
    severity: Severity = "error"
    index: int | None = None
    suggestion: str | None = None


@dataclass(frozen=True)
class ParsedOption:
    """One option token of an argv, resolved the way argparse resolves it."""

    index: int
    token: str
    spelling: str
    spec: FlagSpec | None
    explicit_value: str | None
    value_indexes: tuple[int, ...]
    ambiguous_matches: tuple[str, ...] = ()
    problems: tuple[FlagProblem, ...] = field(default=())

    def values(self, argv: Sequence[str]) -> tuple[str, ...]:
        """The option's values as written (the text after '=' counts as one)."""
        inline = () if self.explicit_value is None else (self.explicit_value,)
        return inline + tuple(argv[i] for i in self.value_indexes)


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _looks_like_value(token: str, table: KnownFlags) -> bool:
    """argparse's test (_parse_optional): is this token a value rather than an option?"""
    if not token or token[0] != "-":
        return True
    if token in table.by_option_string:
        return False
    if len(token) == 1:
        return True
    if token.split("=", 1)[0] in table.by_option_string:
        return False
    if table.allow_abbrev and token.startswith("--") and _prefix_matches(token, table):
        return False
    # No sglang option looks like a negative number, so argparse reads "-1" as a value.
    return bool(_NEGATIVE_NUMBER.match(token)) or " " in token


def _prefix_matches(token: str, table: KnownFlags) -> tuple[str, ...]:
    head = token.split("=", 1)[0]
    return tuple(s for s in table.declaration_order if s.startswith(head))


def _value_count(spec: FlagSpec) -> tuple[int, int | None]:
    """How many values an option takes: (at least, at most); None is unbounded."""
    nargs = spec.nargs
    if not spec.takes_value:
        return 0, 0
    if nargs is None:
        return 1, 1
    if isinstance(nargs, int):
        return nargs, nargs
    return {"?": (0, 1), "*": (0, None), "+": (1, None)}.get(nargs, (0, None))


def _check_value(spec: FlagSpec, spelling: str, value: str, index: int) -> FlagProblem | None:
    converted: Any = value
    try:
        if spec.value_type == "int":
            converted = int(value)
        elif spec.value_type == "float":
            converted = float(value)
    except ValueError:
        return FlagProblem(
            "bad-value",
            spelling,
            f"{spelling}: invalid {spec.value_type} value: {value!r}",
            index=index,
        )
    if spec.choices is not None and converted not in spec.choices:
        choices = ", ".join(repr(choice) for choice in spec.choices)
        return FlagProblem(
            "bad-value",
            spelling,
            f"{spelling}: invalid choice: {value!r} (choose from {choices})",
            index=index,
        )
    return None


def _resolve(
    token: str, table: KnownFlags
) -> tuple[str, FlagSpec | None, str | None, tuple[str, ...]]:
    """Find the option a token names: spelling, spec, explicit value, ambiguous matches."""
    if token in table.by_option_string:
        return token, table.by_option_string[token], None, ()
    spelling, _, rest = token.partition("=")
    explicit = rest if "=" in token else None
    if spelling in table.by_option_string:
        return spelling, table.by_option_string[spelling], explicit, ()
    if table.allow_abbrev and token.startswith("--"):
        matches = _prefix_matches(token, table)
        if len(matches) == 1:
            return spelling, table.by_option_string[matches[0]], explicit, ()
        if len(matches) > 1:
            return spelling, None, explicit, matches
    return spelling, None, explicit, ()


def parse_options(argv: Sequence[str], version: str = LATEST_KNOWN) -> list[ParsedOption]:
    """Split an sglang argv into options with their values, as argparse would, never failing."""
    table = table_for(version)
    parsed: list[ParsedOption] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if _looks_like_value(token, table) or token == "--":
            parsed.append(ParsedOption(index, token, token, None, None, ()))
            index += 1
            continue
        spelling, spec, explicit, matches = _resolve(token, table)
        low, high = _value_count(spec) if spec else (0, None)
        if explicit is not None:
            low, high = max(low - 1, 0), 0
        values: list[int] = []
        while high is None or len(values) < high:
            following = index + 1 + len(values)
            if following >= len(argv) or not _looks_like_value(argv[following], table):
                break
            values.append(following)
        problems: list[FlagProblem] = []
        if spec is not None:
            if explicit is not None and not spec.takes_value:
                problems.append(
                    FlagProblem(
                        "unexpected-value",
                        spelling,
                        f"{spelling}: takes no value, but was given {explicit!r}",
                        index=index,
                    )
                )
            elif len(values) < low:
                wanted = "one argument" if spec.nargs is None else f"{spec.nargs!r} arguments"
                problems.append(
                    FlagProblem(
                        "missing-value",
                        spelling,
                        f"argument {spec.display}: expected {wanted}",
                        index=index,
                    )
                )
            value_texts = ([explicit] if explicit is not None else []) + [argv[i] for i in values]
            for value in value_texts:
                problem = _check_value(spec, spelling, value, index)
                if problem is not None:
                    problems.append(problem)
        parsed.append(
            ParsedOption(
                index, token, spelling, spec, explicit, tuple(values), matches, tuple(problems)
            )
        )
        index += 1 + len(values)
    return parsed
