"""sglang-router for the sandbox: a venv on the shared directory, built once and reused.

The sandbox's stand-in image carries no router, and the nodes share this machine's
filesystem, so one venv made with this Python serves every node (profile ``router.source:
venv``). CI builds it the same way: ``python -m slurm_sglang.sandbox.router``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slurm_sglang.sandbox.host import run
from slurm_sglang.sandbox.layout import Layout

ROUTER_VERSION = "0.3.2"
VENV_NAME = f"sglang-router-{ROUTER_VERSION}"


def router_venv_path(shared_dir: Path | None = None) -> Path:
    """Where the router venv lives on the shared directory."""
    return (shared_dir or Layout.from_env().shared) / "tools" / VENV_NAME


def router_installed(venv: Path) -> bool:
    """True when the venv's python imports sglang_router at the pinned version."""
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    code = "from importlib.metadata import version; print(version('sglang-router'))"
    probe = run([str(python), "-c", code], check=False)
    return probe.returncode == 0 and probe.stdout.strip() == ROUTER_VERSION


def ensure_router_venv(shared_dir: Path | None = None) -> Path:
    """Create the venv and install sglang-router into it unless it is already there."""
    venv = router_venv_path(shared_dir)
    if router_installed(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         f"sglang-router=={ROUTER_VERSION}"], timeout=900)
    if not router_installed(venv):
        raise RuntimeError(f"sglang-router {ROUTER_VERSION} did not install into {venv}")
    return venv


def main() -> int:
    """Build (or find) the venv and print its path."""
    print(ensure_router_venv())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
