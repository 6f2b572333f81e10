"""The README's first command on a machine that lacks what podman's --init needs.

tests/install.sh is the install step of tests/demo.sh and tests/run.sh: one package list for
both. Here catatonit is removed first (as on a fresh Debian 12 machine), the install step runs,
and the demo then serves across two sandbox nodes and answers one chat completion.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CATATONIT = Path("/usr/libexec/podman/catatonit")


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True)
    return "Status: install ok installed" in status.stdout


def test_install_step_brings_back_catatonit_and_the_demo_serves(sandbox: SandboxInfo) -> None:
    subprocess.run(["dpkg", "-r", "catatonit"], capture_output=True, text=True, check=True)
    assert not CATATONIT.exists()
    installed = subprocess.run(["bash", str(REPO / "tests" / "install.sh")], capture_output=True,
                               text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr
    assert "apt-get install" in installed.stderr and "catatonit" in installed.stderr
    assert _installed("catatonit") and CATATONIT.exists()
    python = installed.stdout.strip().splitlines()[-1]
    assert Path(python).is_file() and python.endswith("/bin/python")
    demo = subprocess.run([sys.executable, "-m", "slurm_sglang", "sandbox", "demo"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"^ready: http://\S+( \(no API key[^)]*\))?$", demo.stdout, re.M), demo.stdout
    reply = re.search(r"^# ready after [0-9.]+ s; one chat completion:\n# (.+)$", demo.stdout,
                      re.M)
    assert reply and reply.group(1).strip(), demo.stdout
