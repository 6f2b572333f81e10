"""The launch plan: sglang's argv read as argparse reads it, the launcher's rules, the placement.

The one source of truth for `check`, `submit` and the script: the package imports this file and
the rendered script starts it once where it starts (`serve`, which answers each of its plan calls),
from the support directory beside the script. Hence stdlib only and Python 3.6 (RHEL 8's python3):
no dataclasses, no `from __future__`, typing's old generics. docs/architecture.md says why.
"""

import collections
import functools
import json
import os
import re
import shlex
import stat
import sys
from math import ceil
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

LATEST_KNOWN = "0.5.23"
REGENERATE_HINT = (
    "python -m slurm_sglang.maintenance.known_flags --python <python with sglang> --output "
    "slurm_sglang/data/sglang_flags_<version>.json"
)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class SlurmSglangError(Exception):
    """The base of every error slurm-sglang reports as one line; the kinds live in errors.py.

    Defined here because this file also runs alone beside the script, outside the package:
    its rules raise the same classes everywhere. exit_code is the CLI's exit status."""

    exit_code = 1
    kind = "error"


class UserInputError(SlurmSglangError, ValueError):
    """Input a user can fix: the message names the field and the fix (exit code 2)."""

    exit_code = 2
    kind = "user input"


class SpecError(UserInputError):
    """An invalid serve request; the message names the flag and the fix."""


class PlanError(UserInputError):
    """A request that does not fit the allocation; the message carries the arithmetic."""


# ---- the known-flags table and argparse's reading of an argv ---------------------------------


def version_key(version: str) -> Tuple[int, ...]:
    """Order sglang versions by their leading numbers: "0.5.10" > "0.5.9"; suffixes ignored."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("v"))
    if match is None:
        raise ValueError("not an sglang version: {!r}".format(version))
    return tuple(int(part) for part in match.group(0).split("."))


class FlagSpec(NamedTuple):
    """One option of sglang's server parser, as the known-flags table records it."""

    option_strings: Tuple[str, ...]
    dest: str
    order: int
    takes_value: bool
    nargs: Union[int, str, None] = None
    choices: Optional[Tuple[Any, ...]] = None
    value_type: Optional[str] = None
    deprecated: Optional[Mapping[str, str]] = None


class KnownFlags(NamedTuple):
    """The known-flags table of one sglang version."""

    sglang_version: str
    allow_abbrev: bool
    by_option_string: Mapping[str, FlagSpec]
    # argparse tries option strings in declaration order; its "could match" lists follow it.
    declaration_order: Tuple[str, ...]


def known_versions() -> Tuple[str, ...]:
    """The sglang versions that have a known-flags table, oldest first."""
    found = []
    for name in os.listdir(DATA_DIR):
        match = re.match(r"^sglang_flags_(.+)\.json$", name)
        if match:
            found.append(match.group(1))
    return tuple(sorted(found, key=version_key))


@functools.lru_cache(maxsize=8)
def load_known_flags(version: str = LATEST_KNOWN) -> KnownFlags:
    """Load the known-flags table of one sglang version; unknown versions name the known ones."""
    path = os.path.join(DATA_DIR, "sglang_flags_{}.json".format(version))
    if not os.path.isfile(path):
        raise ValueError(
            "no known-flags table for sglang {} (known: {}); generate one with: {}".format(
                version, ", ".join(known_versions()), REGENERATE_HINT))
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    by_option_string: Dict[str, FlagSpec] = {}
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
    order = tuple(sorted(
        by_option_string,
        key=lambda s: (by_option_string[s].order, by_option_string[s].option_strings.index(s))))
    return KnownFlags(raw["sglang_version"], raw["allow_abbrev"], by_option_string, order)


def table_for(version: str) -> KnownFlags:
    """The table of this version, else the newest one not newer than it, else the oldest."""
    versions = known_versions()
    if version in versions:
        return load_known_flags(version)
    older = [v for v in versions if version_key(v) <= version_key(version)]
    return load_known_flags(older[-1] if older else versions[0])


class ParsedOption(NamedTuple):
    """One option token of an argv, resolved the way argparse resolves it."""

    position: int
    token: str
    spelling: str
    spec: Optional[FlagSpec]
    explicit_value: Optional[str]
    value_indexes: Tuple[int, ...]
    ambiguous_matches: Tuple[str, ...] = ()

    def values(self, argv: Sequence[str]) -> Tuple[str, ...]:
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


def _prefix_matches(token: str, table: KnownFlags) -> Tuple[str, ...]:
    head = token.split("=", 1)[0]
    return tuple(s for s in table.declaration_order if s.startswith(head))


def value_count(spec: FlagSpec) -> Tuple[int, Optional[int]]:
    """How many values an option takes: (at least, at most); None is unbounded."""
    nargs = spec.nargs
    if not spec.takes_value:
        return 0, 0
    if nargs is None:
        return 1, 1
    if isinstance(nargs, int):
        return nargs, nargs
    counts: Dict[str, Tuple[int, Optional[int]]] = {"?": (0, 1), "*": (0, None), "+": (1, None)}
    return counts.get(nargs, (0, None))


def _resolve(token: str, table: KnownFlags
             ) -> Tuple[str, Optional[FlagSpec], Optional[str], Tuple[str, ...]]:
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


def parse_options(argv: Sequence[str], version: str = LATEST_KNOWN) -> List[ParsedOption]:
    """Split an sglang argv into options with their values, as argparse would, never failing."""
    table = table_for(version)
    parsed: List[ParsedOption] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if _looks_like_value(token, table) or token == "--":
            parsed.append(ParsedOption(index, token, token, None, None, ()))
            index += 1
            continue
        spelling, spec, explicit, matches = _resolve(token, table)
        low, high = value_count(spec) if spec else (0, None)
        if explicit is not None:
            low, high = max(low - 1, 0), 0
        values: List[int] = []
        while high is None or len(values) < high:
            following = index + 1 + len(values)
            if following >= len(argv) or not _looks_like_value(argv[following], table):
                break
            values.append(following)
        parsed.append(ParsedOption(index, token, spelling, spec, explicit, tuple(values),
                                   matches))
        index += 1 + len(values)
    return parsed


def _last_values(parsed: Sequence[ParsedOption], argv: Sequence[str], dest: str
                 ) -> Optional[Tuple[ParsedOption, Tuple[str, ...]]]:
    """The option argparse keeps for a dest (the last one given) and its values as written."""
    found = [p for p in parsed if p.spec is not None and p.spec.dest == dest]
    return (found[-1], found[-1].values(argv)) if found else None


# ---- flag rewrites across sglang versions ----------------------------------------------------


class Rename(NamedTuple):
    """An old sglang spelling, what replaces it, and from which sglang version on.

    `since` is the first version the rewrite applies to. Where the release that changed the
    flag is not known exactly, it is the version where the change was verified with sglang's
    own parser, and `reason` says so.
    """

    old: str
    new: str
    since: str
    action: str  # rename, ep-size-from-tp, a2a-backend or warn
    reason: str


# Versions were read from sglang's released wheels (server_args.py of 0.4.10.post2, 0.5.1-0.5.4,
# 0.5.10, 0.5.16, 0.5.20-0.5.22) and checked with 0.5.23's parser.
RENAMES: Tuple[Rename, ...] = (
    Rename("--pp", "--pp-size", "0.5.4", "rename",
           "--pp only ever worked as an argparse prefix of --pp-size; since sglang 0.5.4 added"
           " --pp-max-micro-batch-size (and later --pp-async-batch-depth) it is ambiguous and"
           " sglang stops"),
    Rename("--max-micro-batch-size", "--pp-max-micro-batch-size", "0.5.4", "rename",
           "renamed in sglang 0.5.4 (PR #11279); the old name is rejected"),
    Rename("--enable-ep-moe", "--ep-size <tp-size>", "0.4.10", "warn",
           "deprecated since sglang 0.4.10.post2 but still works (sglang sets ep size = tp size);"
           " it stops sglang from 0.5.3 on"),
    Rename("--enable-ep-moe", "--ep-size <tp-size>", "0.5.3", "ep-size-from-tp",
           "it meant 'expert parallel size = tensor parallel size'; sglang 0.5.3 stops on it"
           " (deprecated by PR #8658), later releases no longer know it"),
    Rename("--enable-ep", "--ep-size <tp-size>", "0.4.10", "ep-size-from-tp",
           "the seed's shorthand for expert parallelism; sglang reads it as a prefix, ambiguous"
           " while --enable-ep-moe exists and, once that is gone, silently --enable-eplb (expert"
           " load balancing)"),
    Rename("--enable-deepep-moe", "--moe-a2a-backend deepep", "0.4.10", "warn",
           "deprecated since sglang 0.4.10.post2 but still works (sglang sets --moe-a2a-backend"
           " deepep); it stops sglang from 0.5.3 on"),
    Rename("--enable-deepep-moe", "--moe-a2a-backend deepep", "0.5.3", "a2a-backend",
           "replaced by --moe-a2a-backend deepep (PR #8658; sglang then sets ep size = tp size"
           " itself); sglang 0.5.3 stops on it, later releases no longer know it"),
    Rename("--enable-dp-attention", "--attn-dp-size <dp-size>", "0.5.22", "warn",
           "deprecated since sglang 0.5.22 but still works: sglang reads --dp N"
           " --enable-dp-attention as --attn-dp-size N with dp 1; removal planned after"
           " 2026-12-31, so it is kept as is"),
)


def renames_for(target_version: str) -> Dict[str, Rename]:
    """The rename that applies to each old spelling for a target version (the newest one)."""
    applicable = [r for r in RENAMES if version_key(target_version) >= version_key(r.since)]
    return {r.old: r for r in sorted(applicable, key=lambda r: version_key(r.since))}


def rewrite(argv: Sequence[str], parsed: Sequence[ParsedOption], target_version: str
            ) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """An argv (read as parsed) with old spellings rewritten for the target version, and one
    note per change or warning; every other byte stays as it was."""
    renames = renames_for(target_version)
    replacements: Dict[int, List[str]] = {}
    notes: List[str] = []

    def value_of(dest: str) -> Optional[str]:
        kept = _last_values(parsed, argv, dest)
        return kept[1][0] if kept and kept[1] else None

    for option in parsed:
        rename = renames.get(option.spelling)
        if rename is None:
            continue
        written = " ".join([option.token] + [argv[i] for i in option.value_indexes])
        if rename.action == "rename":
            new_token = rename.new + option.token[len(rename.old):]
            replacements[option.position] = [new_token]
            notes.append("rewrote {} -> {}: {}".format(option.token, new_token, rename.reason))
        elif rename.action == "ep-size-from-tp":
            tp = value_of("tp_size")
            if value_of("ep_size") is not None or tp is None:
                replacements[option.position] = []
                why = "--ep-size is given" if tp is not None else "tp is 1, so ep is 1"
                notes.append("dropped {} ({}): {}".format(option.token, why, rename.reason))
            else:
                replacements[option.position] = ["--ep-size", tp]
                notes.append("rewrote {} -> --ep-size {}: {}".format(
                    option.token, tp, rename.reason))
        elif rename.action == "a2a-backend":
            if value_of("moe_a2a_backend") is not None:
                replacements[option.position] = []
                notes.append("dropped {} (--moe-a2a-backend is given): {}".format(
                    option.token, rename.reason))
            else:
                replacements[option.position] = ["--moe-a2a-backend", "deepep"]
                notes.append("rewrote {} -> --moe-a2a-backend deepep: {}".format(
                    option.token, rename.reason))
        else:
            notes.append("kept {}: {}".format(written, rename.reason))
    rewritten: List[str] = []
    for index, token in enumerate(argv):
        rewritten.extend(replacements.get(index, [token]))
    return tuple(rewritten), tuple(notes)


class SglangArgv(NamedTuple):
    """sglang's argv read once: old spellings rewritten for the target version, then every
    option resolved as argparse resolves it. Every rule below (and check, spec and the plan)
    reads this one form; read_argv makes it."""

    argv: Tuple[str, ...]
    version: str
    options: Tuple[ParsedOption, ...]
    notes: Tuple[str, ...] = ()

    def last(self, dest: str) -> Optional[Tuple[ParsedOption, Tuple[str, ...]]]:
        """The option argparse keeps for a dest (the last given) and its values as written."""
        return _last_values(self.options, self.argv, dest)

    @property
    def model_path(self) -> str:
        """The model path or hub id given with --model-path (any spelling), else ''."""
        kept = self.last(MODEL_DEST)
        return kept[1][0] if kept and kept[1] else ""


def read_argv(argv: Sequence[str], version: str = LATEST_KNOWN) -> SglangArgv:
    """Read an sglang argv once: rewrite old spellings, resolve every option. The argv is read
    a second time only when a rewrite moved its tokens."""
    parsed = parse_options(argv, version)
    rewritten, notes = rewrite(argv, parsed, version)
    if rewritten != tuple(argv):
        parsed = parse_options(rewritten, version)
    return SglangArgv(rewritten, version, tuple(parsed), notes)


# ---- the launcher's rules on sglang's argv ---------------------------------------------------

# The launcher sets these per rank; a user value would contradict the allocation.
RESERVED_FLAGS: Dict[str, str] = {
    "--nnodes": "the number of nodes comes from the allocation (salloc/sbatch -N)",
    "--node-rank": "each rank gets its own --node-rank from SLURM_NODEID",
    "--dist-init-addr": "the head's address is found inside the allocation (use --dist-port)",
    "--host": "ranks listen on 0.0.0.0 so the head is reachable from other nodes",
    # The rank's own --port comes last and argparse keeps the last: a user's would be ignored.
    "--port": "the HTTP port is the launcher's own --port (replicas and the router take the "
    "ports above it): give `submit --port N` (`check --port N`), or run.sbatch's --port N "
    "before any `--`",
}
# Secrets never travel on a command line, where ps and the logs would show them.
# Refused by any prefix argparse accepts (--api-k, --api-ke=...), in check and in the script.
SECRET_FLAGS: Dict[str, str] = {
    "--api-key": "--api-key on the command line shows in ps and in logs; put the key in a file "
    "and pass --api-key-file FILE, or set SLURM_SGLANG_API_KEY",
    "--admin-api-key": "--admin-api-key on the command line shows in ps and in logs, and the "
    "launcher has no private way to pass it yet; leave it out (the server's --api-key, from "
    "--api-key-file FILE or SLURM_SGLANG_API_KEY, guards it)",
    "--ssl-keyfile-password": "--ssl-keyfile-password on the command line shows in ps and in "
    "logs; use a key file without a password, readable by you only",
}
MODEL_DEST = "model_path"
# dest -> the spelling named in messages; the seed's short forms are prefixes argparse accepts.
PARALLEL_DESTS = (("tp", "tp_size", "--tp"), ("pp", "pp_size", "--pp-size"),
                  ("dp", "dp_size", "--dp"), ("ep", "ep_size", "--ep"))
DP_ATTENTION_DEST = "enable_dp_attention"


class Parallelism(NamedTuple):
    """The parallel sizes read from sglang's arguments."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    dp_attention: bool = False

    @property
    def gpus_per_server(self) -> int:
        """GPUs one sglang server (one replica) uses: attention DP and EP subdivide TP."""
        return self.tp * self.pp

    @property
    def replicas(self) -> int:
        """Independent servers: plain DP makes replicas; attention DP stays in one server."""
        return 1 if self.dp_attention else self.dp

    @property
    def total_gpus(self) -> int:
        """The seed's formula, total GPUs = TP x DP x PP (attention DP lives inside TP)."""
        return self.gpus_per_server * self.replicas


def _dest_flag(dest: str, version: str) -> str:
    for spelling, spec in table_for(version).by_option_string.items():
        if spec.dest == dest:
            return spec.option_strings[0] if spec.option_strings else spelling
    return "--" + dest.replace("_", "-")


def check_argv(read: SglangArgv) -> None:
    """Refuse what the launcher owns or must never see (any spelling argparse accepts)."""
    argv, version = read.argv, read.version
    for position, arg in enumerate(argv, 1):
        if "\n" in arg or "\r" in arg or "\0" in arg:
            raise SpecError(
                "sglang argument {} ({!r}...) contains a newline or NUL; pass multi-line values "
                "through a file".format(position, (arg.splitlines() or [""])[0][:30]))
    reserved = {_dest_flag(flag[2:].replace("-", "_"), version): flag for flag in RESERVED_FLAGS}
    secret = {_dest_flag(flag[2:].replace("-", "_"), version): flag for flag in SECRET_FLAGS}
    found_model = False
    for option in read.options:
        spec = option.spec
        if spec is None:
            continue
        flag = spec.option_strings[0]
        named = flag if option.spelling == flag else "{} ({})".format(option.spelling, flag)
        if flag in reserved:
            raise SpecError("{} is set by the launcher: {}; remove it".format(
                named, RESERVED_FLAGS[reserved[flag]]))
        if flag in secret:
            raise SpecError(SECRET_FLAGS[secret[flag]])
        if spec.dest == MODEL_DEST:
            values = option.values(argv)
            # argparse keeps the last one; an empty path only fails in the job, minutes later.
            if values and not values[0].strip():
                raise SpecError("{}: the model path is empty; give a path or a hub id (e.g. "
                                "--model-path Qwen/Qwen2.5-7B-Instruct)".format(named))
            found_model = found_model or bool(values)
    if not found_model:
        raise SpecError("--model-path is required (e.g. --model-path Qwen/Qwen2.5-7B-Instruct)")


# A hub id as sglang takes it (org/name): neither a path that starts like one nor one that exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class FlagProblem(NamedTuple):
    """One thing wrong (error) or worth saying (warning) about an sglang argv."""

    kind: str
    flag: str
    message: str
    severity: str = "error"
    position: Optional[int] = None
    suggestion: Optional[str] = None


def _closest(spelling: str, table: KnownFlags) -> Optional[str]:
    import difflib  # only for a flag nobody knows

    close = difflib.get_close_matches(spelling, table.declaration_order, n=1, cutoff=0.6)
    return close[0] if close else None


def _rename_hint(spelling: str, version: str) -> str:
    rename = renames_for(version).get(spelling)
    return "; slurm-sglang rewrites it to {}".format(rename.new) if rename else ""


def flag_problems(read: SglangArgv) -> List[FlagProblem]:
    """What sglang's parser would say of an argv read once (read_argv), offline: unknown,
    ambiguous and stray words, bad values (errors); deprecations and repeats (warnings)."""
    version = read.version
    table = load_known_flags(version)
    problems = []  # type: List[FlagProblem]
    seen = {}  # type: Dict[str, str]
    for option in read.options:
        spelling, index = option.spelling, option.position
        if option.token == "--" or (option.spec is None and not option.token.startswith("-")):
            problems.append(FlagProblem(
                "stray-argument", option.token,
                "{!r}: sglang takes no positional arguments; is a flag before it misspelt, or "
                "does it take no value?".format(option.token), position=index))
        elif option.ambiguous_matches:
            problems.append(FlagProblem(
                "ambiguous", spelling,
                "{}: ambiguous in sglang {}: argparse stops with 'ambiguous option: {} could "
                "match {}'{}".format(spelling, version, option.token,
                                     ", ".join(option.ambiguous_matches),
                                     _rename_hint(spelling, version)),
                position=index))
        elif option.spec is None:
            closest = _closest(spelling, table)
            # Without a near spelling, the flag may be a newer sglang's than the table's.
            hint = _rename_hint(spelling, version) or (
                "; did you mean {}?".format(closest) if closest else
                " (checked against sglang {}'s flags; a newer sglang needs its own table: "
                "docs/sglang-flags.md, \"Regenerating the known-flags table\")".format(version))
            problems.append(FlagProblem(
                "unknown", spelling, "{}: unknown sglang flag{}".format(spelling, hint),
                position=index, suggestion=closest))
        else:
            problems.extend(_value_problems(option, option.spec, read.argv))
            deprecated = option.spec.deprecated
            if deprecated is not None:
                use = deprecated.get("use")
                problems.append(FlagProblem(
                    "deprecated", spelling,
                    deprecated.get("error") or "{}: deprecated in sglang {}{}".format(
                        spelling, version, "; use {}".format(use) if use else ""),
                    severity="warning" if "error" not in deprecated else "error",
                    position=index, suggestion=use))
            dest = option.spec.dest
            if dest in seen:
                problems.append(FlagProblem(
                    "repeated", spelling,
                    "{}: given again (first as {}); sglang keeps the last".format(
                        spelling, seen[dest]),
                    severity="warning", position=index))
            seen[dest] = spelling
    return problems


def _value_problems(option: ParsedOption, spec: FlagSpec, argv: Sequence[str]
                    ) -> List[FlagProblem]:
    """A known option's values as argparse checks them: their count, type and choices."""
    spelling, index, values = option.spelling, option.position, option.values(argv)
    problems = []  # type: List[FlagProblem]
    if option.explicit_value is not None and not spec.takes_value:
        problems.append(FlagProblem(
            "unexpected-value", spelling,
            "{}: takes no value, but was given {!r}".format(spelling, option.explicit_value),
            position=index))
    elif len(values) < value_count(spec)[0]:
        wanted = "one argument" if spec.nargs is None else "{!r} arguments".format(spec.nargs)
        problems.append(FlagProblem(
            "missing-value", spelling,
            "argument {}: expected {}".format("/".join(spec.option_strings), wanted),
            position=index))
    for value in values:
        problem = _check_value(spec, spelling, value, index)
        if problem is not None:
            problems.append(problem)
    return problems


def _check_value(spec: FlagSpec, spelling: str, value: str, position: int
                 ) -> Optional[FlagProblem]:
    converted = value  # type: Any
    try:
        if spec.value_type == "int":
            converted = int(value)
        elif spec.value_type == "float":
            converted = float(value)
    except ValueError:
        return FlagProblem("bad-value", spelling, "{}: invalid {} value: {!r}".format(
            spelling, spec.value_type, value), position=position)
    if spec.choices is not None and converted not in spec.choices:
        choices = ", ".join(repr(choice) for choice in spec.choices)
        return FlagProblem("bad-value", spelling, "{}: invalid choice: {!r} (choose from "
                           "{})".format(spelling, value, choices), position=position)
    return None


def check_flags(read: SglangArgv, own_flags: Sequence[str] = ()) -> None:
    """Refuse an argv sglang's parser would refuse (flag_problems' first error), so that the
    script stops where `check` and `submit` stop, before any rank starts. An unknown flag close
    to one of own_flags (the script's, whose misspellings reach sglang) is named as that."""
    for problem in flag_problems(read):
        if problem.severity != "error":
            continue
        if problem.kind == "unknown" and own_flags:
            import difflib

            own = difflib.get_close_matches(problem.flag, own_flags, n=1, cutoff=0.8)
            if own:
                raise SpecError("{}: unknown flag, neither run.sbatch's nor sglang's; did you "
                                "mean run.sbatch's {}?".format(problem.flag, own[0]))
        raise SpecError(problem.message)


def is_hub_id(model: str) -> bool:
    """True for a Hugging Face hub id (org/name) that is no path where the script starts."""
    return bool(_HUB_ID.match(model)) and not os.path.exists(model)


def staged_path(stage_root: str, model: str) -> str:
    """Where a node keeps its copy of `model` under the user's stage root: the model's last
    name and a digest of its absolute source (or hub id), so two sources never share a copy."""
    import hashlib  # only with staging: its import costs every plan call about 3 ms
    source = model if is_hub_id(model) else os.path.abspath(model)
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", source.rstrip("/").rsplit("/", 1)[-1]) or "model"
    return "{}/{}-{}".format(stage_root.rstrip("/"), name, digest)


# Bounds on what a request may ask for (issue 23, item 7): far above any real cluster, low enough
# that the placement's loops and arithmetic stay instant and exact.
SIZE_MAX = 65536
NODES_MAX = 10000
GPUS_PER_NODE_MAX = 64
PORT_MIN, PORT_MAX = 1024, 65535
# ASCII digits with no leading zero: Python's int() also takes '08', '1_6', '+8' and fullwidth
# digits (and sglang's argparse with it), but bash arithmetic reads '08' as octal and the rest
# not at all.
# \Z, not $: $ also matches before a final newline ("8\n").
_WHOLE = re.compile(r"^[1-9][0-9]{0,5}\Z")


def bounded_int(field: str, raw: str, low: int, high: int, example: str = "8") -> int:
    """A whole number written plainly (digits only, no sign, no leading zero) within bounds,
    or one UserInputError naming the field."""
    if not _WHOLE.match(raw) or not low <= int(raw) <= high:
        raise UserInputError("{}: {!r} is not a whole number from {} to {} (digits only, no "
                             "sign or leading zero; e.g. {} {})".format(
                                 field, raw[:40], low, high, field, example))
    return int(raw)


def _size(option: ParsedOption, values: Tuple[str, ...]) -> int:
    if not values:
        raise SpecError("{}: missing value (e.g. {} 8)".format(option.spelling, option.spelling))
    try:
        return bounded_int(option.spelling, values[0], 1, SIZE_MAX)
    except UserInputError as exc:
        raise SpecError(str(exc)) from None


def parallelism_of(read: SglangArgv) -> Parallelism:
    """Read tp/pp/dp/ep and attention DP from sglang arguments, in any spelling."""
    sizes: Dict[str, int] = {}
    for key, dest, _ in PARALLEL_DESTS:
        kept = read.last(dest)
        sizes[key] = _size(*kept) if kept else 1
    attention = read.last(DP_ATTENTION_DEST) is not None
    attn_dp = read.last("attn_dp_size")
    # A dedicated attention-DP size above 1 is attention DP, with or without the switch.
    attention = attention or bool(attn_dp and _size(*attn_dp) > 1)
    return Parallelism(sizes["tp"], sizes["pp"], sizes["dp"], sizes["ep"], attention)


METRICS_DEST = "enable_metrics"


def server_argv_of(read: SglangArgv, replicas: bool, model_path: str = "") -> Tuple[str, ...]:
    """A server's sglang arguments: with replicas each is a server of dp 1, so --dp goes;
    every server gets --enable-metrics unless the user gave it (in any spelling); given a
    model_path, every --model-path value (any spelling, `=` or not) becomes it."""
    argv, version = list(read.argv), read.version
    dropped: Set[int] = set()
    metrics = False
    for option in read.options:
        if option.spec is None:
            continue
        metrics = metrics or option.spec.dest == METRICS_DEST
        if replicas and option.spec.dest == "dp_size":
            dropped.add(option.position)
            dropped.update(option.value_indexes)
        if model_path and option.spec.dest == MODEL_DEST:
            if option.explicit_value is not None:
                argv[option.position] = option.token.partition("=")[0] + "=" + model_path
            for index in option.value_indexes:
                argv[index] = model_path
    kept = tuple(token for index, token in enumerate(argv) if index not in dropped)
    # /metrics is what `slurm-sglang metrics`, the target file and a site's Prometheus read;
    # sglang serves it only when asked. Flags this version does not know are left alone.
    specs = table_for(version).by_option_string.values()
    if not metrics and any(spec.dest == METRICS_DEST for spec in specs):
        kept += (_dest_flag(METRICS_DEST, version),)
    return kept


# ---- placement: which servers run where, on which GPUs and ports, and why ---------------------


class Replica(NamedTuple):
    """One sglang server: the nodes it spans, the GPUs it takes on each, its HTTP port."""

    number: int
    nodes: Tuple[int, ...]
    gpus: Tuple[int, ...]
    port: int

    @property
    def head(self) -> int:
        """The node whose rank 0 serves HTTP and holds the dist-init address."""
        return self.nodes[0]


class Plan(NamedTuple):
    """The whole placement: servers, whether a router fronts them, and the reasons."""

    replicas: Tuple[Replica, ...]
    router: bool
    router_port: int
    nodes: int
    gpus_per_node: int
    reasons: Tuple[str, ...]
    # Where sglang-router serves Prometheus metrics; None without a router.
    router_metrics_port: Optional[int] = None

    @property
    def idle_nodes(self) -> Tuple[int, ...]:
        """Nodes of the allocation no server uses."""
        used = {node for replica in self.replicas for node in replica.nodes}
        return tuple(node for node in range(self.nodes) if node not in used)

    @property
    def gpus_per_rank(self) -> int:
        """GPUs one node's ranks take together (the pre-flight's GPU count)."""
        per_node: Dict[int, int] = {}
        for replica in self.replicas:
            for node in replica.nodes:
                per_node[node] = per_node.get(node, 0) + len(replica.gpus)
        return max(per_node.values()) if per_node else 0

    def table(self) -> str:
        """The plan as a text table: server, nodes, GPUs per node, port."""
        rows = [("replica", "nodes", "GPUs (each node)", "port")]
        for replica in self.replicas:
            rows.append((str(replica.number), ",".join(str(node) for node in replica.nodes),
                         ",".join(str(gpu) for gpu in replica.gpus) or "-", str(replica.port)))
        if self.router:
            rows.append(("router", str(self.replicas[0].head), "-", str(self.router_port)))
            rows.append(("router metrics", str(self.replicas[0].head), "-",
                         str(self.router_metrics_port)))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in rows]
        return "\n".join(lines + ["- " + reason for reason in self.reasons])


def uses_replicas(par: Parallelism, nodes: int) -> bool:
    """Plain --dp N over several nodes runs as N servers; attention DP stays one server."""
    return par.dp > 1 and not par.dp_attention and nodes > 1


def nodes_needed(par: Parallelism, gpus_per_node: int) -> int:
    """Nodes the request needs: total GPUs over GPUs per node, rounded up."""
    if gpus_per_node <= 0:
        return 1
    # Integer ceiling: a float division overflows (a traceback) on a huge size.
    return max(1, -(-par.total_gpus // gpus_per_node))


def check_parallelism(par: Parallelism, nodes: int, gpus_per_node: int) -> List[str]:
    """The seed's rules against an allocation; each problem is one line with the arithmetic."""
    problems: List[str] = []
    if par.tp % par.ep:
        problems.append("--ep {} must divide --tp {}: EP subdivides the TP GPUs into EP "
                        "groups".format(par.ep, par.tp))
    if par.dp_attention and par.dp > 1 and par.tp % par.dp:
        problems.append("--dp {} with --enable-dp-attention must divide --tp {}".format(
            par.dp, par.tp))
    try:
        plan(par, nodes, gpus_per_node)
    except PlanError as exc:
        problems.append(str(exc))
    return problems


def plan(par: Parallelism, nodes: int, gpus_per_node: int, port: int = 30000) -> Plan:
    """Place the servers on the allocation, or raise PlanError with the arithmetic."""
    if not 1 <= nodes <= NODES_MAX:
        raise PlanError("nodes: {} (the allocation's, or what tp*pp*dp needs) is not from 1 "
                        "to {}".format(nodes, NODES_MAX))
    if not 0 <= gpus_per_node <= GPUS_PER_NODE_MAX:
        raise PlanError("GPUs per node: {} is not from 1 to {}".format(
            gpus_per_node, GPUS_PER_NODE_MAX))
    try:
        tcp_port(str(port))
    except FlagError as exc:
        raise PlanError("--port: {}".format(exc)) from None
    if uses_replicas(par, nodes):
        # The replicas' HTTP block and the router's metrics port sit right above --port.
        top = router_metrics_port(port, par.dp)
        if top > PORT_MAX:
            raise PlanError(
                "--dp {} replicas take HTTP ports {}..{} and the router's metrics port {}, past "
                "{}: lower --port to at most {} or lower --dp".format(
                    par.dp, port + 1, port + par.dp, top, PORT_MAX, PORT_MAX - 1 - par.dp))
        if gpus_per_node < 1:
            raise PlanError(
                "--dp {} across {} nodes needs the GPUs per node (salloc --gpus-per-node=N, or "
                "the profile's slurm.gpus_per_node) to place replicas".format(par.dp, nodes))
        place = _pack if par.gpus_per_server <= gpus_per_node else _span
        replicas, how = place(par, nodes, gpus_per_node, port)
        reasons = ("sglang refuses --dp > 1 with --nnodes > 1: {} servers of dp 1 behind "
                   "sglang-router on port {}".format(par.dp, port), how)
        placed = Plan(replicas, True, port, nodes, gpus_per_node, reasons,
                      router_metrics_port(port, par.dp))
        idle = ",".join(map(str, placed.idle_nodes))
        if idle:
            placed = placed._replace(reasons=reasons + (
                "node(s) {} of the allocation run no replica".format(idle),))
        return placed
    return _single(par, nodes, gpus_per_node, port)


def _single(par: Parallelism, nodes: int, gpus_per_node: int, port: int) -> Plan:
    """One server over every node of the allocation."""
    per_server = par.total_gpus
    capacity = nodes * gpus_per_node
    if gpus_per_node and per_server > capacity:
        raise PlanError(
            "tp*pp*dp = {}*{}*{} = {} GPUs, but {} node(s) x {} GPUs = {}: ask for {} node(s) "
            "or lower the sizes".format(par.tp, par.pp, par.replicas, per_server, nodes,
                                        gpus_per_node, capacity,
                                        nodes_needed(par, gpus_per_node)))
    if per_server % nodes:
        raise PlanError(
            "tp*pp = {} is not divisible by the {} nodes of this allocation (sglang needs "
            "(tp*pp) % nnodes == 0)".format(par.gpus_per_server, nodes))
    per_rank = per_server // nodes
    if gpus_per_node and per_rank > gpus_per_node:
        raise PlanError("tp*pp = {} needs {} GPUs on each of {} nodes, more than the {} a node "
                        "has".format(per_server, per_rank, nodes, gpus_per_node))
    reason = (
        "attention DP: one server spans every node (--dp stays inside the server)"
        if par.dp_attention else
        "--dp {} on one node: sglang runs data parallelism inside one server".format(par.dp)
        if par.dp > 1 else "one server spans every node of the allocation")
    gpus = tuple(range(per_rank))
    return Plan((Replica(0, tuple(range(nodes)), gpus, port),), False, port, nodes,
                gpus_per_node, (reason,))


def router_metrics_port(port: int, replicas: int) -> int:
    """The router's Prometheus port: the one right after the replicas' HTTP block.

    sglang-router binds 29000 unless told otherwise, a port outside every plan, so two jobs
    with replicas on one node collided there. Placed against the block, it is checked free on
    every node with the block and moves with it when the script finds a port of it busy.
    """
    return port + 1 + replicas


def _pack(par: Parallelism, nodes: int, gpus_per_node: int, port: int
          ) -> Tuple[Tuple[Replica, ...], str]:
    """Replicas that fit one node: spread evenly, each on its own GPUs and HTTP port; the
    replicas and why they sit so."""
    per_server = par.gpus_per_server
    fit = gpus_per_node // per_server
    per_node = ceil(par.dp / nodes)
    if per_node > fit:
        raise PlanError(
            "--dp {dp} replicas of tp*pp = {s} GPUs need {dp}*{s} = {need} GPUs, but {n} node(s) "
            "x {g} GPUs hold {fit} replica(s) each = {hold}: ask for {ask} node(s) or lower "
            "--dp".format(dp=par.dp, s=per_server, need=par.dp * per_server, n=nodes,
                          g=gpus_per_node, fit=fit, hold=fit * nodes, ask=ceil(par.dp / fit)))
    replicas = []
    for number in range(par.dp):
        node, slot = divmod(number, per_node)
        first = slot * per_server
        replicas.append(Replica(number, (node,), tuple(range(first, first + per_server)),
                                port + 1 + number))
    return tuple(replicas), (
        "tp*pp = {} GPUs fit one node of {}: up to {} replica(s) a node on disjoint GPUs, HTTP "
        "ports {}..{}".format(per_server, gpus_per_node, per_node, port + 1, port + par.dp))


def _span(par: Parallelism, nodes: int, gpus_per_node: int, port: int
          ) -> Tuple[Tuple[Replica, ...], str]:
    """Replicas larger than a node: each spans whole nodes with its own head and ports; the
    replicas and why they sit so."""
    per_server = par.gpus_per_server
    span = ceil(per_server / gpus_per_node)
    if per_server % span:
        raise PlanError(
            "tp*pp = {s} needs {span} nodes of {g} GPUs, but {s} is not divisible by {span} "
            "(sglang needs (tp*pp) % nnodes == 0)".format(s=per_server, span=span,
                                                          g=gpus_per_node))
    if span * par.dp > nodes:
        raise PlanError(
            "--dp {dp} replicas of tp*pp = {s} GPUs span {span} node(s) each: {dp}*{span} = "
            "{need} nodes needed, the allocation has {n}".format(
                dp=par.dp, s=per_server, span=span, need=par.dp * span, n=nodes))
    per_rank = per_server // span
    replicas = tuple(
        Replica(number, tuple(range(number * span, (number + 1) * span)),
                tuple(range(per_rank)), port + 1 + number)
        for number in range(par.dp))
    return replicas, (
        "tp*pp = {} GPUs exceed a node of {}: each replica spans {} nodes ({} GPUs on each) "
        "with its own head and dist-init port".format(per_server, gpus_per_node, span, per_rank))


# ---- ports: where the plan's ports land, given what already listens on the nodes ------------

class PortChoice(NamedTuple):
    """The ports a job uses, moved where they are free on every node, and the problems."""

    port: int
    dist_port: int
    replica_base_port: int
    replica_dist_ports: Tuple[int, ...]
    router_metrics_port: int
    nccl_port: int
    problems: Tuple[Tuple[str, str], ...]


# Derived dist-init ports lie below the nodes' ephemeral range (Linux: 32768 up), where no
# connection's local port lands: the nodes report only listeners, and a port slurmstepd holds
# for its connection to srun would pass as free, then fail sglang's bind.
DIST_BASE = 20000


def dist_slots(ephemeral_from: int) -> int:
    """How many 16-port dist-init slots fit from DIST_BASE below the ephemeral range, and below
    32768 in any case (2000 as before where the range leaves no room: binds may then fail)."""
    slots = (min(ephemeral_from, 32768) - DIST_BASE) // 16
    return slots if slots >= 64 else 2000


def derived_dist_port(job_id: int, ephemeral_from: int = 32768) -> int:
    """The dist-init port a job derives from its id before any port in use moves it."""
    return DIST_BASE + (job_id % dist_slots(ephemeral_from)) * 16


def choose_ports(listening: Mapping[str, Sequence[int]], job_id: int, port: int,
                 port_explicit: bool, dist_port: int, replicas: int, others_here: bool,
                 check: bool = True, ephemeral_from: int = 32768) -> PortChoice:
    """Ports free on every node (jobs may share nodes): a default one moves, an explicit one in
    use is a problem (nodes, message) for the pre-flight table unless check is off."""
    top = DIST_BASE + dist_slots(ephemeral_from) * 16
    busy = {}  # type: Dict[int, List[str]]
    for node, ports in sorted(listening.items()):
        for number in ports:
            busy.setdefault(number, []).append(node)
    problems = []  # type: List[Tuple[str, str]]
    planned = set()  # type: Set[int]

    def free(first: int, count: int) -> bool:
        return all(n not in busy and n not in planned for n in range(first, first + count))

    # Jobs that start together on shared nodes would both see the default port free.
    if not port_explicit and others_here:
        port += 1 + job_id % 500
    if port in busy:
        if port_explicit:
            if check:
                problems.append((",".join(busy[port]), "port {} (--port) is in use".format(port)))
        else:
            port = next((p for p in range(port + 1, port + 200) if p not in busy), port + 200)
    explicit_dist = dist_port != 0
    if explicit_dist:
        if dist_port in busy and check:
            problems.append((",".join(busy[dist_port]),
                             "dist port {} (--dist-port) is in use".format(dist_port)))
    else:
        # Attention DP binds P .. P+13 on the head, P .. P+6 on every node.
        dist_port = derived_dist_port(job_id, ephemeral_from)
        for _ in range(64):
            if (dist_port + 16 <= port or dist_port > port) and free(dist_port, 14):
                break
            # A far hop (1009 is prime, and no slot count is a multiple of it): the next slots
            # belong to jobs submitted just before or after this one.
            dist_port = DIST_BASE + (dist_port - DIST_BASE + 16 * 1009) % (top - DIST_BASE)
        else:
            problems.append(("-", "no free block of 14 dist-init ports found in 64 tries: "
                                  "name one with --dist-port"))
    planned.update({port}, range(dist_port, dist_port + 14))
    base = port + 1
    dist_ports = []  # type: List[int]
    if replicas:
        # The replicas' HTTP block and the router's metrics port, moved as one.
        width = router_metrics_port(port, replicas) + 1 - base
        base = next((p for p in range(port + 1, port + 1000) if free(p, width)), port + 1000)
        if base + width > 65536:
            problems.append(("-", "no block of {} free ports above {} for the replicas and the "
                                  "router's metrics".format(width, port)))
        planned.update(range(base, base + width))
        candidate = derived_dist_port(job_id, ephemeral_from)
        for _ in range(replicas):
            for _ in range(4096):
                candidate = DIST_BASE if candidate + 4 > top else candidate + 2
                if free(candidate, 2):
                    break
            planned.update((candidate, candidate + 1))
            dist_ports.append(candidate)
    # The NCCL check's rendezvous: apart from the dist-init range, so sglang never meets its
    # TIME_WAIT; after an explicit one (docs/preflight.md), else below the ephemeral range.
    first = dist_port + 14 if dist_port + 214 <= (65535 if explicit_dist else top) else DIST_BASE
    nccl_port = next((p for p in range(first, first + 200) if free(p, 1)), 0)
    return PortChoice(port, dist_port, base, tuple(dist_ports),
                      router_metrics_port(base - 1, replicas) if replicas else 0, nccl_port,
                      tuple(problems))


def _ports_answer(options: List[str]) -> str:
    """The ports call: the choice as bash assignments, problems as PORT_PROBLEMS
    (NODES<TAB>ports<TAB>message)."""
    listening = {}  # type: Dict[str, List[int]]
    while "--listening" in options:
        node, _, ports = _str_option(options, "--listening", "").partition("=")
        listening[node] = [int(p) for p in ports.split(",") if p.isdigit()]
    # The lowest start of the nodes' ephemeral ranges.
    ephemeral_from = 65536
    while "--ephemeral-from" in options:
        ephemeral_from = min(ephemeral_from, _int_option(options, "--ephemeral-from", 65536))
    choice = choose_ports(
        listening, _int_option(options, "--job-id", 0), _int_option(options, "--port", 30000),
        _str_option(options, "--port-explicit", "0") == "1",
        _int_option(options, "--dist-port", 0), _int_option(options, "--replicas", 0),
        _str_option(options, "--others-here", "0") == "1",
        _str_option(options, "--check", "1") == "1", ephemeral_from)
    return shell_assignments([
        ("PORT", str(choice.port)), ("DIST_PORT", str(choice.dist_port)),
        ("REPLICA_BASE_PORT", str(choice.replica_base_port)),
        ("REPLICA_DIST_PORTS", ",".join(str(p) for p in choice.replica_dist_ports)),
        ("ROUTER_METRICS_PORT", str(choice.router_metrics_port or "")),
        ("PREFLIGHT_NCCL_PORT", str(choice.nccl_port or "")),
    ], [("PORT_PROBLEMS", ["{}\tports\t{}".format(nodes, message)
                           for nodes, message in choice.problems])])


# ---- what a ready job publishes: endpoint.json and its Prometheus targets -------------------
# Every server runs with --enable-metrics (server_argv_of), so its /metrics is on its HTTP port;
# the router serves its own on the plan's metrics port. sglang answers /metrics without the API
# key (it lets health and metrics through for scrapers), so the target files hold no secret.


def site_targets_file(directory: str, job_id: str) -> str:
    """This job's file in the profile's paths.prometheus_targets_dir ('' without one): the
    user's name says whose job a file is, and keeps apart two clusters' jobs of one id."""
    if not directory or not job_id:
        return ""
    return "{}/slurm-sglang-{}-{}.json".format(directory.rstrip("/"), _user_name(), job_id)


def replace_file(path: str, text: str, mode: int) -> None:
    """text into path by a temporary file made exclusively beside it (no name in a shared
    directory is trusted) and a rename, so that no reader sees half a file."""
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=".slurm-sglang-", suffix=".tmp",
                                             dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


_SITE_WARNED = []  # type: List[str]


def _publish_answer(options: List[str]) -> str:
    """endpoint.json and prometheus-targets.json in the log directory (the user's only), and
    the targets in the site's file (mode 0644: the site's Prometheus runs as another user).
    Options come as --name value pairs; lists are ',' within a server and ';' between them."""
    # JSON text from the bytes bash sent, whatever the locale python decoded them with.
    opt = {name: os.fsencode(value).decode("utf-8", "replace")
           for name, value in zip(options[::2], options[1::2])}
    nodes, ips = opt["--nodes"].split(","), opt["--ips"].split(",")
    model, job_id, port = opt.get("--model", ""), opt.get("--job-id", ""), int(opt["--port"])
    endpoint = {"url": opt["--url"], "head": nodes[0], "head_ip": ips[0], "port": port,
                "dist_init_addr": "{}:{}".format(ips[0], opt["--dist-port"]),
                "nodes": nodes}  # type: Dict[str, Any]
    # (name, role, replica, address) of each /metrics
    targets = [("server", "server", None, "{}:{}".format(ips[0], port))]  # type: List[Any]
    replicas = int(opt.get("--replicas", "0"))
    if replicas:
        spans = [[int(n) for n in span.split(",")] for span in opt["--replica-nodes"].split(";")]
        planned = opt["--replica-gpu-indexes"].split(";")
        states = opt.get("--replica-states", "").split(";") + [""] * replicas
        gpu_sets = opt.get("--replica-gpus", "").split(";") + [""] * replicas
        endpoint["replicas"], targets = [], []
        for number, span in enumerate(spans[:replicas]):
            address = "{}:{}".format(ips[span[0]], int(opt["--replica-base-port"]) + number)
            gpus = gpu_sets[number] or planned[number]
            endpoint["replicas"].append({
                "replica": number, "url": "http://" + address, "nodes": [nodes[n] for n in span],
                "gpus": [int(g) if g.isdigit() else g for g in gpus.split(",") if g != "all"],
                "state": states[number] or "starting"})
            targets.append(("replica-{}".format(number), "server", number, address))
        endpoint["router_metrics_port"] = int(opt["--router-metrics-port"])
        targets.append(("router", "router", None, "{}:{}".format(ips[0], opt[
            "--router-metrics-port"])))
    endpoint["metrics"] = [{"name": name, "role": role, "replica": replica,
                            "url": "http://{}/metrics".format(address)}
                           for name, role, replica, address in targets]
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    endpoint.update(job_id=job_id, model=model, profile=opt.get("--profile", ""),
                    ready_at=now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
    groups = [{"targets": [address], "labels": dict(
        {"slurm_job_id": job_id, "server": name, "role": role, "model": model},
        **({} if replica is None else {"replica": str(replica)}))}
        for name, role, replica, address in targets]
    replace_file(os.path.join(opt["--log-dir"], "endpoint.json"),
                  json.dumps(endpoint, indent=2) + "\n", 0o600)
    listed = json.dumps(groups, indent=2) + "\n"
    replace_file(os.path.join(opt["--log-dir"], "prometheus-targets.json"), listed, 0o600)
    site_file = opt.get("--site-file", "")
    try:
        if site_file:
            replace_file(site_file, listed, 0o644)
    except OSError:
        # The job loses its site-wide discovery, not its serving: a warning, once.
        if not _SITE_WARNED:
            _SITE_WARNED.append(site_file)
            sys.stderr.write("slurm-sglang: cannot write {} (paths.prometheus_targets_dir: does "
                             "it exist, writable by you?); the site's Prometheus will not find "
                             "this job\n".format(site_file))
    return ""


# ---- the script's own flags: one table, its reader, its checks and its usage -----------------


class FlagError(UserInputError):
    """A bad flag of run.sbatch's own; the message names the flag and the fix."""


# Digits only, no leading zero, few enough for bash arithmetic (which reads '08' as octal).
_COUNT = re.compile(r"^(0|[1-9][0-9]{0,8})\Z")
CONTAINER_CLIS = ("docker", "podman", "enroot", "apptainer", "singularity", "none")
GPUS_MODES = ("docker", "cdi", "env", "none")
ROUTER_POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")
IMAGE_FILE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".sqsh", ".sif")
DOCKER_ARCHIVE_SUFFIXES = IMAGE_FILE_SUFFIXES[:4]


def image_conversion_hint(cli: str, image: str) -> str:
    """Why an image file cannot serve under this container CLI (a docker save tarball under
    enroot or apptainer, a squashfs or SIF file under docker or podman), and what to use
    instead; '' where it can serve as it is."""
    suffix = next((s for s in DOCKER_ARCHIVE_SUFFIXES if image.endswith(s)), "")
    if cli in ("docker", "podman") and image.endswith(IMAGE_FILE_SUFFIXES) and not suffix:
        return ("{} is a squashfs or SIF file, which {} cannot load; use a docker save tarball "
                "(slurm-sglang image save REF -o FILE) or a registry reference".format(image, cli))
    if cli not in ("enroot", "apptainer", "singularity") or not suffix:
        return ""
    stem = image[:-len(suffix)]
    if cli == "enroot":
        return ("{} is a docker save tarball, which pyxis cannot use (it takes an enroot URI "
                "REGISTRY#IMAGE or a squashfs file); convert it once: docker load -i {} && "
                "enroot import -o {}.sqsh dockerd://IMAGE:TAG".format(image, image, stem))
    return ("{} is a docker save tarball, which {} cannot exec; convert it once: {} build "
            "{}.sif docker-archive://{}".format(image, cli, cli, stem, image))


def whole_count(raw: str) -> str:
    """A whole number written plainly (0 included), else FlagError."""
    if not _COUNT.match(raw):
        raise FlagError("{!r} is not a whole number".format(raw[:40]))
    return raw


def tcp_port(raw: str) -> str:
    """A TCP port a user may listen on (ports below 1024 are root's), else FlagError."""
    if not PORT_MIN <= int(whole_count(raw)) <= PORT_MAX:
        raise FlagError("{} is not a TCP port ({}-{})".format(raw, PORT_MIN, PORT_MAX))
    return raw


def _dist_port(raw: str) -> str:
    return raw if raw == "0" else tcp_port(raw)  # 0: derived from the job id


def _seconds(raw: str) -> str:
    if whole_count(raw) == "0":
        raise FlagError("must be at least 1 second")
    return raw


def _min_replicas(raw: str) -> str:
    if not _COUNT.match(raw) or raw == "0":
        raise FlagError("{!r} is not a whole number >= 1".format(raw[:40]))
    return raw


def _container_cli(raw: str) -> str:
    if raw not in CONTAINER_CLIS:
        raise FlagError("{!r} is not one of docker, podman (or the profile's runtime)".format(raw))
    return raw


def _gpus_mode(raw: str) -> str:
    if raw not in GPUS_MODES:
        raise FlagError("{!r} is not one of docker, cdi, env, none".format(raw))
    return raw


def _router_policy(raw: str) -> str:
    if raw not in ROUTER_POLICIES:
        raise FlagError("{!r} is not one of cache_aware, round_robin, random, power_of_two".format(
            raw))
    return raw


def _stage_model(raw: str) -> str:
    if raw == "none":
        return ""
    if raw and not raw.startswith("/"):
        raise FlagError("{!r} is not an absolute path (a node-local directory, e.g. "
                        "/local/nvme/models; none: no staging)".format(raw))
    return raw


class ScriptFlag(NamedTuple):
    """One of run.sbatch's own flags: its spellings (the long one last), the shell variable it
    sets, its value's name ('' for a switch, which sets 1), its default and its help line.

    default lists candidates, the first non-empty one wins: '$NAME' reads the environment (the
    script's `declare -rx` constants, or the user's variables), anything else is literal. help
    may name {default} and the environment's {NAME}; a newline continues it below."""

    names: Tuple[str, ...]
    var: str
    metavar: str
    default: Tuple[str, ...]
    help: str
    check: Optional[Callable[[str], str]] = None


SCRIPT_FLAGS = (
    ScriptFlag(("--image",), "IMAGE", "PATH|REF", ("$DEFAULT_IMAGE", "sglang-serve-latest.tar.gz"),
               "image tarball (.tar, .tar.gz, .tar.zst) or registry reference\n"
               "(default: $WORKSPACE/{default})"),
    ScriptFlag(("--container-mount",), "CONTAINER_MOUNT", "PATH", ("$DEFAULT_CONTAINER_MOUNT",),
               "shared directory mounted into the containers (default: {default})"),
    ScriptFlag(("-w", "--workspace"), "WORKSPACE", "PATH", ("$DEFAULT_WORKSPACE", "$PWD"),
               "where logs/<jobid>/ is written (default: $PWD)"),
    ScriptFlag(("-f", "--force"), "FORCE", "", ("0",),
               "remove this toolkit's containers and reload the image on every node"),
    ScriptFlag(("--profile",), "TORCH_PROFILE_DIR", "[DIR]", ("",),
               "write PyTorch profiler traces to DIR (SGLANG_TORCH_PROFILER_DIR);\n"
               "bare, or followed by a word that starts with '-', to\n"
               "$PWD/sglang_profile; --profile=DIR always takes DIR"),
    ScriptFlag(("--quiet",), "QUIET", "", ("0",),
               "do not follow the head's log in the terminal (it stays in logs/)"),
    ScriptFlag(("--port",), "PORT", "PORT", ("30000",),
               "the head's HTTP port (default: {default})", tcp_port),
    ScriptFlag(("--dist-port",), "DIST_PORT", "PORT", ("0",),
               "the head's dist-init port (default: derived from the job id)", _dist_port),
    ScriptFlag(("--health-timeout",), "HEALTH_TIMEOUT", "SEC", ("1800",),
               "seconds to wait for /health after the ranks start (default: {default})",
               _seconds),
    ScriptFlag(("--container-cli",), "CONTAINER_CLI", "CLI",
               ("$SLURM_SGLANG_CONTAINER_CLI", "$CONTAINER_RUNTIME", "docker"),
               "docker or podman (default: $SLURM_SGLANG_CONTAINER_CLI or the profile's)",
               _container_cli),
    ScriptFlag(("--gpus-mode",), "GPUS_MODE", "MODE",
               ("$SLURM_SGLANG_GPUS_MODE", "$PROFILE_GPUS_MODE"),
               "how a container gets its GPUs: docker (--gpus), cdi, env\n"
               "(CUDA_VISIBLE_DEVICES only) or none (default: $SLURM_SGLANG_GPUS_MODE\n"
               "or {PROFILE_GPUS_MODE})", _gpus_mode),
    ScriptFlag(("--skip-preflight",), "SKIP_PREFLIGHT", "", ("0",),
               "do not check the nodes before starting the ranks"),
    ScriptFlag(("--dry-run",), "DRY_RUN", "", ("0",),
               "print the plan (servers, nodes, GPU sets, ports, router) and exit,\n"
               "starting nothing; exit 2 with the reason if it does not fit"),
    ScriptFlag(("--preflight-nccl",), "PREFLIGHT_NCCL_FLAG", "", ("0",),
               "time an all-reduce over every node before the ranks start (on\n"
               "by the profile's preflight.nccl; docs/preflight.md)"),
    ScriptFlag(("--preflight-nccl-only",), "PREFLIGHT_NCCL_ONLY", "", ("0",),
               "run that check alone and stop (no sglang arguments)"),
    ScriptFlag(("--stage-model",), "STAGE_MODEL", "DIR", ("$DEFAULT_STAGE_MODEL",),
               "copy the model to DIR/$USER/ on each node's local disk first, reading\n"
               "the shared copy once (default: {default}; docs/staging.md)", _stage_model),
    ScriptFlag(("--api-key-file",), "API_KEY_FILE", "FILE", ("",),
               "sglang's --api-key, read from FILE (or from $SLURM_SGLANG_API_KEY); it\n"
               "reaches the head by environment, never a command line or a log"),
    ScriptFlag(("--min-replicas",), "MIN_REPLICAS", "K", ("0",),
               "with --dp N across nodes (N replicas behind sglang-router): serve\n"
               "once K replicas are healthy (default: all N)", _min_replicas),
    ScriptFlag(("--replica-restarts",), "REPLICA_RESTARTS", "N", ("2",),
               "restart a failed replica in place up to N times (default: {default})",
               whole_count),
    ScriptFlag(("--exit-on-replica-failure",), "EXIT_ON_REPLICA_FAILURE", "", ("0",),
               "end the job when any replica fails, instead of serving on"),
    ScriptFlag(("--router-policy",), "ROUTER_POLICY", "POLICY",
               ("$PROFILE_ROUTER_POLICY", "cache_aware"),
               "cache_aware, round_robin, random or power_of_two\n(default: {default})",
               _router_policy),
    ScriptFlag(("-h", "--help"), "", "", (), "this help"),
    ScriptFlag(("--",), "", "", (), "everything after goes to sglang, even names listed above"),
)
_FLAG_BY_NAME = {name: flag for flag in SCRIPT_FLAGS[:-1] for name in flag.names}


def script_flag(name: str) -> ScriptFlag:
    """The row of the script's flag table that a spelling names (KeyError if none)."""
    return _FLAG_BY_NAME[name]


class ScriptArgs(NamedTuple):
    """run.sbatch's argv read and checked: each flag's value by variable (defaults filled,
    paths absolute), sglang's arguments as typed, the API key read from --api-key-file, and
    help when -h/--help was given."""

    values: Dict[str, str]
    sglang_args: Tuple[str, ...]
    api_key: str = ""
    help: bool = False


def _here(environ: Mapping[str, str]) -> str:
    """Where the script starts: bash's PWD (it keeps the path as the user typed it)."""
    return environ.get("PWD") or os.getcwd()


def _default(flag: ScriptFlag, environ: Mapping[str, str]) -> Tuple[str, bool]:
    """A flag's default and whether it came from the environment (and so needs checking)."""
    for candidate in flag.default:
        if candidate.startswith("$"):
            name = candidate[1:]
            value = _here(environ) if name == "PWD" else environ.get(name, "")
            if value:
                return value, True
        elif candidate:
            return candidate, False
    return "", False


def parse_script_argv(argv: Sequence[str], environ: Mapping[str, str], local: bool = True
                      ) -> ScriptArgs:
    """Read run.sbatch's argv as the script does and check every flag; FlagError names the
    flag. environ holds what defaults read (the script's constants, PWD); local also checks
    the files the flags name (the workspace, --api-key-file) and reads the key."""
    values, given, sglang = {}, set(), []  # type: Dict[str, str], Set[str], List[str]
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if token == "--":
            sglang.extend(argv[index:])
            break
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        flag = _FLAG_BY_NAME.get(name)
        if flag is None:
            sglang.append(token)  # sglang's, byte for byte
            continue
        if not flag.metavar and eq:
            raise FlagError("{} takes no value (see --help)".format(name))
        if not flag.var:
            return ScriptArgs({}, (), help=True)
        if not flag.metavar:
            values[flag.var] = "1"
        elif eq:
            values[flag.var] = inline
            if name == "--profile" and not inline:
                raise FlagError("--profile=: no directory after '=' (bare --profile writes to "
                                "$PWD/sglang_profile)")
        elif name == "--profile":
            # The seed's bare --profile: sglang's arguments all start with '-', so a next word
            # that does not is the directory.
            following = argv[index] if index < len(argv) else ""
            taken = following[:1] not in ("", "-")
            values[flag.var] = following if taken else "sglang_profile"
            index += 1 if taken else 0
        elif index < len(argv):
            values[flag.var] = argv[index]
            index += 1
        else:
            raise FlagError("{} needs a value (see --help)".format(token))
        given.add(flag.var)
    for flag in SCRIPT_FLAGS:
        if not flag.var:
            continue
        value, checked = (values[flag.var], True) if flag.var in values else _default(
            flag, environ)
        if checked and flag.check is not None:
            try:
                value = flag.check(value)
            except FlagError as exc:
                raise FlagError("{}: {}".format(flag.names[-1], exc)) from None
        values[flag.var] = value
    return _settle(values, given, tuple(sglang), environ, local)


def _settle(values: Dict[str, str], given: Set[str], sglang: Tuple[str, ...],
            environ: Mapping[str, str], local: bool) -> ScriptArgs:
    """What follows from the flags together: absolute paths, the image's default, the key."""
    here = _here(environ)

    def absolute(path: str, base: str) -> str:
        return path if not path or path.startswith("/") else "{}/{}".format(base, path)

    values["PORT_EXPLICIT"] = "1" if "PORT" in given else "0"
    if values["PREFLIGHT_NCCL_ONLY"] == "1":
        values["PREFLIGHT_NCCL_FLAG"] = "1"
    values["WORKSPACE"] = workspace = absolute(values["WORKSPACE"], here)
    if local and not os.path.isdir(workspace):
        raise FlagError("--workspace: {} does not exist or is not a directory".format(workspace))
    image, base = values["IMAGE"], here
    if "IMAGE" not in given or not image:
        # The default tarball lives in the workspace; a given relative one, where you are.
        image, base = _default(script_flag("--image"), environ)[0], workspace
    values["IMAGE"] = absolute(image, base) if image.endswith(IMAGE_FILE_SUFFIXES) else image
    hint = image_conversion_hint(values["CONTAINER_CLI"], values["IMAGE"])
    if hint:
        raise FlagError("{}: {}".format("--image", hint))
    # The one rule on what names a file rather than a registry reference, for the nodes too.
    values["IMAGE_FILE"] = "1" if image.endswith(IMAGE_FILE_SUFFIXES) else "0"
    values["TORCH_PROFILE_DIR"] = absolute(values["TORCH_PROFILE_DIR"], here)
    key = api_key(values["API_KEY_FILE"], environ) if local else ""
    return ScriptArgs(values, sglang, key if values["API_KEY_FILE"] else "")


def api_key(path: str, environ: Mapping[str, str]) -> str:
    """The server's API key: the first line of path, a file of the user's alone (as ssh
    refuses a private key others can read), else environ's SLURM_SGLANG_API_KEY; '' if none."""
    key = environ.get("SLURM_SGLANG_API_KEY", "")
    if path:
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(path)
            if info.st_mode & 0o077:
                raise FlagError("--api-key-file: {} is readable by group or others (mode {:o}): "
                                "chmod 600 {}".format(path, info.st_mode & 0o7777, path))
            with open(path, "rb") as handle:
                key = os.fsdecode(handle.readline().rstrip(b"\n"))
        except OSError:
            raise FlagError("--api-key-file: {} is not a readable file".format(path)) from None
        if not key:
            raise FlagError("--api-key-file: {} is empty (its first line is the key)".format(path))
    if re.search(r"\s", key):
        raise FlagError("the API key holds white space; use one word (e.g. openssl rand -hex 24)")
    return key


def script_usage(environ: Mapping[str, str]) -> str:
    """run.sbatch --help: the flag table, with the profile's defaults from the environment."""
    lines = [
        "Usage: bash run.sbatch [OPTIONS] --model-path MODEL [SGLANG ARGS...]",
        "Serve SGLang across every node of the current SLURM allocation (profile '{}').".format(
            environ.get("PROFILE_NAME", "")),
        "",
        "Options (everything else goes to python3 -m sglang.launch_server unchanged):",
    ]
    for flag in SCRIPT_FLAGS:
        # The environment's {NAME}s, '' where unset.
        fields = collections.defaultdict(str, environ)  # type: Dict[str, str]
        fields["default"] = _default(flag, environ)[0] or "none"
        text = flag.help.format_map(fields).split("\n")
        left = " ".join([", ".join(flag.names), flag.metavar]).rstrip()
        lines.append("  {}  {}".format(left.ljust(22), text[0]))
        lines.extend(" " * 26 + more for more in text[1:])
    return "\n".join(lines)


# ---- the script's view: one call, shell assignments --------------------------------------------

class LaunchRequest(NamedTuple):
    """What the script knows when it asks for the plan."""

    argv: Tuple[str, ...]
    nodes: int
    gpus_per_node: int
    port: int = 30000
    version: str = LATEST_KNOWN
    router_source: str = "image"
    router_venv: str = ""
    container_cli: str = "docker"
    min_replicas: int = 0
    stage_root: str = ""


class Launch(NamedTuple):
    """The validated, rewritten request and its placement."""

    argv: Tuple[str, ...]
    server_argv: Tuple[str, ...]
    model_path: str
    parallelism: Parallelism
    plan: Plan
    min_replicas: int
    notes: Tuple[str, ...]
    staged_model: str = ""


def launch(request: LaunchRequest, read: Optional[SglangArgv] = None) -> Launch:
    """Validate, rewrite and place a request: every rule the script applies, in one call.
    read is request.argv already read (read_argv); without it, it is read here, once."""
    if read is None:
        read = read_argv(request.argv, request.version)
    check_argv(read)
    par = parallelism_of(read)
    # Before the arithmetic: a misspelt --tp-size leaves tp 1, and the typo is the fix.
    check_flags(read, tuple(_FLAG_BY_NAME))
    problems = check_parallelism(par, request.nodes, request.gpus_per_node)
    if problems:
        raise PlanError(problems[0])
    placed = plan(par, request.nodes, request.gpus_per_node, request.port)
    min_replicas = request.min_replicas
    if placed.router:
        if min_replicas > par.dp:
            raise PlanError("--min-replicas {} is more than the {} replicas of --dp {}".format(
                min_replicas, par.dp, par.dp))
        _check_router_source(request, par)
    model = read.model_path
    staged = staged_path(request.stage_root, model) if request.stage_root else ""
    # Staged, the ranks read the node's copy; MODEL_PATH stays the source the script stages from.
    served = server_argv_of(read, placed.router, staged)
    return Launch(read.argv, served, model, par, placed, min_replicas or len(placed.replicas),
                  read.notes, staged)


def _check_router_source(request: LaunchRequest, par: Parallelism) -> None:
    if request.router_source == "none":
        raise PlanError(
            "--dp {} on {} nodes runs {} replicas behind sglang-router, but the profile has "
            "router.source: none; add --enable-dp-attention for one server".format(
                par.dp, request.nodes, par.dp))
    if request.router_source == "venv" and not request.router_venv:
        raise PlanError("profile router.source is venv but router.venv is empty")
    if request.router_source == "image" and request.container_cli not in ("docker", "podman"):
        raise PlanError("profile router.source: image needs a docker or podman runtime; set "
                        "router.source: venv")


def shell_assignments(values: Sequence[Tuple[str, str]],
                      arrays: Sequence[Tuple[str, Sequence[str]]] = ()) -> str:
    """Bash assignments that eval back to exactly these values: NAME=VALUE, then NAME=(...)."""
    lines = ["{}={}".format(name, shlex.quote(value)) for name, value in values]
    lines += ["{}=({})".format(name, " ".join(shlex.quote(item) for item in items))
              for name, items in arrays]
    return "\n".join(lines) + "\n"


def plan_assignments(result: Launch) -> str:
    """The plan as bash assignments; lists are ';' between servers and ',' within one."""
    placed = result.plan

    def joined(values: Sequence[int]) -> str:
        return ",".join(str(value) for value in values)

    return shell_assignments([
        ("MODEL_PATH", result.model_path),
        ("MODEL_HUB_ID", "1" if is_hub_id(result.model_path) else ""),
        ("STAGE_TARGET", result.staged_model),
        ("REPLICA_MODE", str(int(placed.router))),
        ("REPLICAS", str(len(placed.replicas))),
        ("REPLICA_SPAN", str(len(placed.replicas[0].nodes))),
        ("REPLICA_NODES", ";".join(joined(r.nodes) for r in placed.replicas)),
        ("REPLICA_GPU_INDEXES", ";".join(joined(r.gpus) for r in placed.replicas)),
        ("REPLICA_BASE_PORT", str(placed.replicas[0].port if placed.router else
                                  placed.router_port + 1)),
        ("ROUTER_METRICS_PORT", str(placed.router_metrics_port or "")),
        ("GPUS_PER_RANK", str(placed.gpus_per_rank)),
        ("MIN_REPLICAS", str(result.min_replicas)),
    ], [("SGLANG_ARGS", result.server_argv)])


def _int_option(args: List[str], name: str, default: int) -> int:
    value = _str_option(args, name, "")
    if not value:
        return default
    # "0" means "not known" for --nodes and --gpus-per-node; bounds are plan()'s.
    try:
        return int(whole_count(value))
    except FlagError as exc:
        raise UserInputError("{}: {}".format(name, exc)) from None


def _str_option(args: List[str], name: str, default: str) -> str:
    if name not in args:
        return default
    at = args.index(name)
    if at + 1 >= len(args):
        raise UserInputError("{} needs a value".format(name))
    value = args[at + 1]
    del args[at:at + 2]
    return value


def _print_and_exit(text: str) -> str:
    """Shell that prints text and ends the script with 0 (--help, --dry-run)."""
    return "printf '%s\\n' {}\nexit 0\n".format(shlex.quote(text))


_GPU_ID = re.compile(r"^([0-9]+|GPU-[0-9a-fA-F-]+)\Z")


def requested_gpus(value: str) -> str:
    """The seed's GPUS ('all', a device list, or docker's "device=LIST") as a list, '' for
    all; else UserInputError saying how to fix it. Each node checks it against its grant."""
    listed = (value or "all").replace('"', "")
    listed = listed[len("device="):] if listed.startswith("device=") else listed
    if listed == "all":
        return ""
    items = listed.split(",")
    if not all(_GPU_ID.match(item) for item in items) or len(set(items)) != len(items):
        raise UserInputError("GPUS={!r} is neither 'all' nor a list of distinct GPUs: set "
                             "GPUS=0,1,2,3 (the same GPUs on every node) or unset it".format(value))
    return listed


def gpus_per_node_of(requested: str, granted: int) -> int:
    """GPUS=LIST is what the ranks get on every node: the plan places servers on that many."""
    return len(requested.split(",")) if requested else granted


def script_assignments(options: List[str], argv: Sequence[str],
                       environ: Mapping[str, str]) -> str:
    """The script's one call: its flags read and checked, then the plan on --nodes N
    --gpus-per-node G; without nodes (outside an allocation) sglang's arguments checked alone.
    Shell for the script to eval; the API key from --api-key-file is exported there."""
    nodes = _int_option(options, "--nodes", 0)
    gpus_per_node = _int_option(options, "--gpus-per-node", 0)
    args = parse_script_argv(argv, environ)
    if args.help:
        return _print_and_exit(script_usage(environ))
    values = args.values
    gpus = requested_gpus(environ.get("GPUS", ""))
    gpus_per_node = gpus_per_node_of(gpus, gpus_per_node)
    out = shell_assignments(sorted(values.items()) + [("SITE_TARGETS_FILE", site_targets_file(
        environ.get("PROMETHEUS_TARGETS_DIR", ""), environ.get("SLURM_JOB_ID", ""))),
        ("REQUESTED_GPUS", gpus)])
    if args.api_key:
        out += "export SLURM_SGLANG_API_KEY={}\n".format(shlex.quote(args.api_key))
    version = environ.get("SGLANG_VERSION") or LATEST_KNOWN
    if values["PREFLIGHT_NCCL_ONLY"] == "1":
        # The check alone serves nothing: no sglang arguments, every GPU a node shows.
        if args.sglang_args:
            raise FlagError("--preflight-nccl-only runs the check alone; remove the sglang "
                            "arguments: {}".format(" ".join(args.sglang_args)))
        return out + shell_assignments([("MODEL_PATH", ""), ("REPLICA_MODE", "0"),
                                        ("GPUS_PER_RANK", "0")], [("SGLANG_ARGS", ())])
    if not nodes:
        read = read_argv(args.sglang_args, version)
        check_argv(read)
        parallelism_of(read)
        check_flags(read, tuple(_FLAG_BY_NAME))
        return out + shell_assignments([], [("SGLANG_ARGS", args.sglang_args)])
    stage = values["STAGE_MODEL"]
    result = launch(LaunchRequest(
        args.sglang_args, nodes, gpus_per_node, int(values["PORT"]), version,
        environ.get("ROUTER_SOURCE") or "image", environ.get("ROUTER_VENV", ""),
        values["CONTAINER_CLI"], int(values["MIN_REPLICAS"]),
        "{}/{}".format(stage.rstrip("/"), _user_name()) if stage else ""))
    for note in result.notes:
        sys.stderr.write("slurm-sglang: note: {}\n".format(note))
    if values["DRY_RUN"] == "1":
        return _print_and_exit(result.plan.table())
    if result.plan.router:
        # The placement before anything starts: the table `check` and --dry-run print.
        par = result.parallelism
        sys.stderr.write("slurm-sglang: plan: tp {} pp {} dp {} ep {}, behind sglang-router ({}):"
                         "\n  {}\n".format(par.tp, par.pp, par.dp, par.ep, values["ROUTER_POLICY"],
                                          result.plan.table().replace("\n", "\n  ")))
    return out + plan_assignments(result)


def _user_name() -> str:
    """This uid's name, as `id -un` says it (never $USER, which anyone can set)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def answer(argv: Sequence[str]) -> Tuple[int, bytes]:
    """One plan call: its exit code and its output (shell for the script to eval).
    `script [--nodes N --gpus-per-node G] -- SCRIPT ARGS`: the script's flags, sglang's
    arguments and the plan; `ports`: the plan's ports moved to where they are free, once the
    nodes said what listens; `publish`: the files a ready job publishes."""
    if not argv or argv[0] not in ("script", "ports", "publish"):
        sys.stderr.write("usage: launch_plan.py script [--nodes N --gpus-per-node G] -- "
                         "SCRIPT ARGS | ports --job-id J --port P [--listening NODE=P,P "
                         "--ephemeral-from N ...] | publish --log-dir DIR --url URL ...\n")
        return 2, b""
    try:
        if argv[0] == "ports":
            out = _ports_answer(list(argv[1:]))
        elif argv[0] == "publish":
            out = _publish_answer(list(argv[1:]))
        else:
            split = list(argv).index("--") if "--" in argv else len(argv)
            out = script_assignments(list(argv[1:split]), argv[split + 1:], os.environ)
    except UserInputError as exc:
        sys.stderr.write("slurm-sglang: {}\n".format(exc))
        return 2, b""
    except Exception as exc:
        # publish's files, or a malformed call: the job serves on, and so does the server.
        if argv[0] != "publish":
            raise
        sys.stderr.write("slurm-sglang: publish: {}: {}\n".format(type(exc).__name__, exc))
        return 1, b""
    # As bytes: an argument that is not valid in the locale's encoding comes back unchanged.
    return 0, os.fsencode(out)


def _request_field(stream: Any) -> Optional[bytes]:
    field = bytearray()
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if byte == b"\0":
            return bytes(field)
        field += byte


def serve() -> int:
    """Answer the script's plan calls, one python start for all of a job's: each request on
    stdin is a count and that many arguments, each ended by NUL; each answer on stdout is the
    output, NUL, the exit code, NUL. Ends with stdin, when the script ends: a Ctrl-C or
    SLURM's SIGTERM is the script's to handle, and it may still publish while it stops."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        count = _request_field(stdin)
        fields = [] if count is None else [_request_field(stdin) for _ in range(int(count))]
        if count is None or None in fields:
            return 0
        code, out = answer([os.fsdecode(field or b"") for field in fields])
        stdout.write(out + b"\0" + str(code).encode() + b"\0")
        stdout.flush()


def main(argv: Sequence[str]) -> int:
    """`launch_plan.py script|ports|publish ...`: one plan call (answer), its output on
    stdout."""
    code, out = answer(argv)
    sys.stdout.buffer.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
