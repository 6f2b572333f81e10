"""sglang's own argument parser, run on the exact argv every rank will receive.

Where an interpreter can import sglang, one subprocess runs
sglang.srt.server_args.prepare_server_args on each argv and reports sglang's error verbatim.
That subprocess runs this very file by path, so it imports only the standard library at
the top: the sglang interpreter needs nothing of slurm-sglang.

prepare_server_args in sglang 0.5.23 is parse-only (argparse, then a plain record): it
probes no device, so it runs on a CPU-only machine without --device. sglang's later
resolution and validation (ServerArgs.resolve_once, check_server_args: parallelism across
nodes, the dp-attention translation) need the model's config and GPU-side packages, and
are not run here; slurm-sglang's own parallelism rules cover those.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PYTHON_ENV = "SLURM_SGLANG_SGLANG_PYTHON"
INSTALL_HINT = "install: tests/sglang_parser/install.sh"
SKIPPED_MESSAGE = f"skipped: sglang not importable ({INSTALL_HINT})"
SERVE_FLAG = "--serve-stdin"
SUBPROCESS_TIMEOUT_S = 300
# Nothing in prepare_server_args should reach the network; these make sure of it.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

Status = Literal["ok", "error", "skipped"]


def default_parser_venv() -> Path:
    """Where tests/sglang_parser/install.sh puts the parser when given no directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "slurm-sglang" / "sglang-0.5.23-parser"


@dataclass(frozen=True)
class ParserVerdict:
    """What sglang's own parser said about one rank's argv."""

    label: str
    argv: tuple[str, ...]
    status: Status
    message: str
    warnings: tuple[str, ...] = ()
    sglang_version: str | None = None
    python: str | None = None


def candidate_pythons(python: str | None = None) -> list[str]:
    """Interpreters to try, in order: the given one, $SLURM_SGLANG_SGLANG_PYTHON, the default
    install.sh venv, and this one."""
    if python:
        return [python]
    candidates = [os.environ.get(PYTHON_ENV, "")]
    candidates.append(str(default_parser_venv() / "bin" / "python"))
    candidates.append(sys.executable)
    return [c for c in dict.fromkeys(candidates) if c and Path(c).exists()]


def _run_in(python: str, argv_per_rank: Mapping[str, Sequence[str]]) -> dict[str, Any] | str | None:
    """Run the parser for every argv in one subprocess.

    Returns sglang's reply; None when sglang does not import there; a reason when the
    subprocess itself failed (so that a broken install is not reported as a missing one).
    """
    request = json.dumps({label: list(argv) for label, argv in argv_per_rank.items()})
    command = [python, str(Path(__file__).resolve()), SERVE_FLAG]
    try:
        completed = subprocess.run(
            command,
            input=request,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            env={**os.environ, **OFFLINE_ENVIRONMENT},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"skipped: sglang's parser in {python} did not answer in {SUBPROCESS_TIMEOUT_S} s"
    try:
        reply: dict[str, Any] = json.loads(completed.stdout)
    except json.JSONDecodeError:
        stderr_tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        return (
            f"skipped: sglang's parser in {python} failed (exit status {completed.returncode}):"
            f"\n{stderr_tail}"
        )
    return reply if reply.get("importable") else None


def _skipped(argv_per_rank: Mapping[str, Sequence[str]], message: str) -> list[ParserVerdict]:
    return [
        ParserVerdict(label, tuple(argv), "skipped", message)
        for label, argv in argv_per_rank.items()
    ]


def check_with_sglang(
    argv_per_rank: Mapping[str, Sequence[str]], python: str | None = None
) -> list[ParserVerdict]:
    """Run sglang's prepare_server_args on each rank's argv; skipped where sglang is missing."""
    for candidate in candidate_pythons(python):
        reply = _run_in(candidate, argv_per_rank)
        if reply is None:
            continue
        if isinstance(reply, str):
            return _skipped(argv_per_rank, reply)
        return [
            ParserVerdict(
                label=label,
                argv=tuple(argv),
                status=reply["results"][label]["status"],
                message=reply["results"][label]["message"],
                warnings=tuple(reply["results"][label]["warnings"]),
                sglang_version=reply["sglang_version"],
                python=candidate,
            )
            for label, argv in argv_per_rank.items()
        ]
    return _skipped(argv_per_rank, SKIPPED_MESSAGE)


# Everything below runs inside the interpreter that has sglang.

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _argparse_error(stderr_text: str) -> str:
    """Keep argparse's error line(s), dropping the usage text that precedes them."""
    lines = [line for line in stderr_text.splitlines() if ": error: " in line]
    return "\n".join(lines) if lines else stderr_text.strip()


class _WarningCollector(logging.Handler):
    """Collects sglang's log warnings (deprecations are logged while argparse runs)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_ANSI_ESCAPE.sub("", record.getMessage()))


def _parse_one(prepare_server_args: Any, argv: list[str]) -> dict[str, Any]:
    # On the "sglang" logger, not the root: prepare_server_args resets the root's handlers.
    collector = _WarningCollector()
    sglang_logger = logging.getLogger("sglang")
    sglang_logger.addHandler(collector)
    captured = io.StringIO()
    status, message = "ok", "accepted by sglang's parser"
    try:
        with contextlib.redirect_stderr(captured):
            prepare_server_args(argv)
    except SystemExit as stop:
        status = "error"
        message = _argparse_error(captured.getvalue()) or f"exit status {stop.code}"
    except Exception as error:  # sglang's own validation errors, reported verbatim
        status, message = "error", f"{type(error).__name__}: {error}"
    finally:
        sglang_logger.removeHandler(collector)
    return {"status": status, "message": message, "warnings": collector.messages}


def serve_stdin() -> int:
    """Read {label: argv} as JSON on stdin, parse each with sglang, write verdicts to stdout."""
    request: dict[str, list[str]] = json.load(sys.stdin)
    reply_stream = sys.stdout
    # Whatever sglang prints goes to stderr: stdout carries only the JSON reply.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            import sglang
            from sglang.srt.server_args import prepare_server_args
        except Exception as error:  # any import failure means: this interpreter cannot check
            reply = {"importable": False, "error": f"{type(error).__name__}: {error}"}
        else:
            results = {
                label: _parse_one(prepare_server_args, argv) for label, argv in request.items()
            }
            reply = {"importable": True, "sglang_version": sglang.__version__, "results": results}
    json.dump(reply, reply_stream)
    return 0


if __name__ == "__main__" and sys.argv[1:] == [SERVE_FLAG]:
    sys.exit(serve_stdin())
