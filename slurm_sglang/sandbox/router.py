"""sglang-router for the sandbox, both ways a profile can run it, each built once and reused.

- ``router.source: venv``: a venv on the shared directory. The nodes share this machine's
  filesystem, so one venv made with this Python serves every node.
- ``router.source: image`` (the built-in profiles' default): the stand-in image with
  sglang-router's wheels for the image's own python3 added, published beside the stand-in.

CI builds both the same way: ``python -m slurm_sglang.sandbox.router``.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from slurm_sglang.sandbox.host import run
from slurm_sglang.sandbox.image import (
    IMAGE_PYTHON,
    IMAGE_SITE_PACKAGES,
    KEY_LENGTH,
    STANDIN_DIR,
    STANDIN_TARGET,
    build_image_record,
    cache_dir,
    image_key,
    publish,
)
from slurm_sglang.sandbox.layout import Layout

ROUTER_VERSION = "0.3.2"
VENV_NAME = f"sglang-router-{ROUTER_VERSION}"
ROUTER_IMAGE_NAME = "sglang-standin-router"
# Where the router image is published on the shared directory, beside the stand-in's.
ROUTER_IMAGE_IN_SHARED = "sglang-serve-router.tar.gz"
# Wheels for the image's glibc (bookworm: 2.36), newest tags first.
WHEEL_PLATFORMS = ("manylinux_2_34", "manylinux_2_28", "manylinux2014")


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


def router_wheels_dir() -> Path:
    """sglang-router and its dependencies installed for the image's python3 (pip --target,
    binary wheels only), cached; made once."""
    target = cache_dir() / f"router-{ROUTER_VERSION}-py{IMAGE_PYTHON}"
    if (target / "sglang_router").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    machine = platform.machine()
    platforms = [option for tag in WHEEL_PLATFORMS for option in ("--platform", f"{tag}_{machine}")]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="router-") as work:
        partial = Path(work) / "site"
        run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(partial),
             "--python-version", IMAGE_PYTHON, "--implementation", "cp", "--only-binary=:all:",
             *platforms, f"sglang-router=={ROUTER_VERSION}"], timeout=900)
        # Console scripts written for this machine's python; the image runs the module.
        shutil.rmtree(partial / "bin", ignore_errors=True)
        partial.replace(target)
    return target


def ensure_router_image(shared_dir: Path | None = None) -> Path:
    """The stand-in image with sglang-router added (router.source: image), published on the
    shared directory as ROUTER_IMAGE_IN_SHARED; built only when it is missing or changed."""
    wheels = router_wheels_dir()
    recipe = f"{image_key(STANDIN_DIR)}:{wheels.name}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:KEY_LENGTH]
    trees = [(STANDIN_DIR, STANDIN_TARGET), (wheels, IMAGE_SITE_PACKAGES)]
    record = build_image_record(ROUTER_IMAGE_NAME, key, trees)
    return publish(record, shared_dir or Layout.from_env().shared, ROUTER_IMAGE_IN_SHARED)


def main() -> int:
    """Build (or find) the venv and the router image, and print their paths."""
    print(ensure_router_venv())
    print(ensure_router_image())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
