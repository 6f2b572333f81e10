"""Regenerate the known-flags table (slurm_sglang/data/sglang_flags_<version>.json).

Run: python -m slurm_sglang.maintenance.known_flags --python <sglang venv python> --output FILE

This file runs twice: in our interpreter it drives the regeneration; the interpreter that has
sglang runs it by path with --dump. It imports only the standard library at the top so that
the sglang interpreter needs nothing of slurm-sglang.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GENERATED_BY = "python -m slurm_sglang.maintenance.known_flags"
DUMP_FLAG = "--dump"


def build_sglang_parser() -> argparse.ArgumentParser:
    """Build the parser exactly as sglang.srt.server_args.prepare_server_args does."""
    from sglang.srt.server_args import ServerArgs  # only in the sglang interpreter

    parser = argparse.ArgumentParser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    return parser


def _json_value(value: Any) -> Any:
    """Turn a choice into JSON; sets are sorted so the table does not change between runs."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _choices(choices: Any) -> list[Any] | None:
    if choices is None:
        return None
    values = [_json_value(choice) for choice in choices]
    if isinstance(choices, (set, frozenset)):
        values.sort(key=str)
    return values


def _type_name(action: argparse.Action) -> str | None:
    """Name the converter; only "int" and "float" are checked offline, the rest is informative."""
    converter = action.type
    if converter is None:
        return None
    if converter is json.loads:
        return "json"
    return getattr(converter, "__name__", type(converter).__name__)


def _deprecation(action: argparse.Action) -> dict[str, Any] | None:
    """Read sglang's Deprecated*Action classes: the replacement, or the error they stop with."""
    if not type(action).__name__.startswith("Deprecated"):
        return None
    details: dict[str, Any] = {"action": type(action).__name__}
    for attribute, key in (("new_flag", "use"), ("error_message", "error")):
        value = getattr(action, attribute, None)
        if value is not None:
            details[key] = value
    return details


def describe_parser(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Describe every option of an argparse parser: spellings, dest, arity, choices, deprecation."""
    flags: dict[str, Any] = {}
    for order, action in enumerate(parser._actions):
        if not action.option_strings:
            continue
        nargs = action.nargs
        entry: dict[str, Any] = {
            "order": order,
            "dest": action.dest,
            "option_strings": list(action.option_strings),
            "takes_value": nargs != 0,
        }
        if nargs not in (None, 0):
            entry["nargs"] = nargs
        for key, value in (
            ("choices", _choices(action.choices)),
            ("type", _type_name(action) if nargs != 0 else None),
            ("deprecated", _deprecation(action)),
        ):
            if value is not None:
                entry[key] = value
        flags[action.option_strings[0]] = entry
    return {
        "allow_abbrev": parser.allow_abbrev,
        "prefix_chars": parser.prefix_chars,
        "flags": flags,
    }


def dump_installed_sglang() -> dict[str, Any]:
    """Describe the installed sglang's server parser (runs inside the sglang interpreter)."""
    import sglang  # only in the sglang interpreter

    table = describe_parser(build_sglang_parser())
    table["sglang_version"] = sglang.__version__
    table["python_version"] = platform.python_version()
    table["generated_by"] = GENERATED_BY
    return table


def format_table(table: dict[str, Any]) -> str:
    """Write the table with sorted keys, one flag per line, so diffs between versions read well."""
    header = {key: value for key, value in sorted(table.items()) if key != "flags"}
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value)},")
    lines.append('"flags": {')
    flag_lines = [
        f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True, separators=(',', ':'))}"
        for name, entry in sorted(table["flags"].items())
    ]
    lines.append(",\n".join(flag_lines))
    lines.append("}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_table_from(python: str) -> dict[str, Any]:
    """Run this file with --dump in the interpreter that has sglang and return its table."""
    command = [python, str(Path(__file__).resolve()), DUMP_FLAG]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {completed.returncode}:\n{completed.stderr}"
        )
    table: dict[str, Any] = json.loads(completed.stdout)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the known-flags JSON from the sglang that --python can import."""
    parser = argparse.ArgumentParser(
        prog=GENERATED_BY, description="Regenerate slurm-sglang's table of sglang server flags."
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter that has sglang")
    parser.add_argument(
        "--output",
        type=Path,
        help="file to write (default: slurm_sglang/data/sglang_flags_<version>.json)",
    )
    parser.add_argument(DUMP_FLAG, action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.dump:
        json.dump(dump_installed_sglang(), sys.stdout)
        return 0
    table = read_table_from(options.python)
    output = options.output or (
        Path(__file__).resolve().parent.parent
        / "data"
        / f"sglang_flags_{table['sglang_version']}.json"
    )
    output.write_text(format_table(table), encoding="utf-8")
    print(f"wrote {output}: {len(table['flags'])} flags of sglang {table['sglang_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
