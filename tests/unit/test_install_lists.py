"""One package list for the demo and the tests: what `sandbox up` needs is in tests/install.sh."""

from __future__ import annotations

import re
from pathlib import Path

from slurm_sglang.sandbox.host import REQUIRED_COMMANDS

INSTALL_SH = Path(__file__).resolve().parents[2] / "tests" / "install.sh"


def _install_packages() -> set[str]:
    text = INSTALL_SH.read_text()
    match = re.search(r"readonly APT_PACKAGES=\((.*?)\)", text, re.S)
    assert match, "tests/install.sh lost its APT_PACKAGES list"
    return set(match.group(1).split())


def test_install_sh_holds_every_package_the_sandbox_needs() -> None:
    missing = set(REQUIRED_COMMANDS.values()) - _install_packages()
    assert not missing, f"tests/install.sh misses {sorted(missing)}"


def test_catatonit_and_the_venv_are_in_the_one_list() -> None:
    # podman run --init needs catatonit; Debian's python3 needs python3-venv for .venv.
    assert {"catatonit", "python3-venv", "shellcheck"} <= _install_packages()
    assert REQUIRED_COMMANDS["/usr/libexec/podman/catatonit"] == "catatonit"
