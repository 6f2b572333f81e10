"""`slurm-sglang image save` with the real podman: an image built here (no registry is
reachable), saved by the verb, removed, loaded back from the tarball as run.sbatch's nodes
load it, and the same image ID comes back.

Needs podman on this machine only, not the sandbox.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("podman") is None,
                                reason="podman not installed: apt-get install podman")

# How each suffix is read back: run.sbatch's loader does the same (runtime_docker.sh.j2).
DECOMPRESS = {
    ".tar.gz": f"{'pigz' if shutil.which('pigz') else 'gzip'} -dc",
    ".tar.zst": "zstd -dc",
    ".tar": "cat",
}


def _podman(*argv: str, check: bool = True) -> str:
    done = subprocess.run(["podman", *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture
def local_image(tmp_path: Path) -> Iterator[str]:
    """A one-file image imported into this machine's podman, removed afterwards by its name."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello.txt").write_text(f"slurm-sglang image test {uuid.uuid4()}\n")
    archive = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
    reference = f"localhost/slurm-sglang-image-test:{uuid.uuid4().hex[:12]}"
    _podman("import", "--quiet", str(archive), reference)
    try:
        yield reference
    finally:
        _podman("rmi", "--force", reference, check=False)


@pytest.mark.parametrize("suffix", list(DECOMPRESS))
def test_saved_tarball_loads_back_as_the_same_image(local_image: str, tmp_path: Path,
                                                    suffix: str) -> None:
    if suffix == ".tar.zst" and shutil.which("zstd") is None:
        pytest.skip("zstd not installed: apt-get install zstd")
    original_id = _podman("image", "inspect", "--format", "{{.Id}}", local_image)
    output = tmp_path / f"sglang-serve-test{suffix}"
    done = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "image", "save", local_image, "-o", str(output),
         "--cluster", "sandbox", "--json"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    saved = json.loads(done.stdout)
    assert saved["image_id"] == original_id
    assert saved["container_cli"] == "podman"
    assert saved["pulled"] is False
    assert saved["size_bytes"] == output.stat().st_size > 0
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".part")] == []
    # What run.sbatch reads before any node loads it: the name to run and the ID to expect.
    manifest = json.loads(subprocess.run(
        f"{DECOMPRESS[suffix]} {output} | tar -xOf - manifest.json", shell=True, check=True,
        capture_output=True, text=True).stdout)
    assert manifest[0]["RepoTags"] == [local_image]
    assert original_id.removeprefix("sha256:") in manifest[0]["Config"]

    # Gone from podman, then back from the tarball alone: the file holds the whole image.
    _podman("rmi", local_image)
    assert subprocess.run(["podman", "image", "exists", local_image]).returncode == 1
    subprocess.run(f"{DECOMPRESS[suffix]} {output} | podman load", shell=True, check=True,
                   capture_output=True)
    assert _podman("image", "inspect", "--format", "{{.Id}}", local_image) == original_id


def test_saving_over_an_existing_file_is_refused(local_image: str, tmp_path: Path) -> None:
    output = tmp_path / "sglang-serve-latest.tar.gz"
    output.write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "image", "save", local_image, "-o", str(output),
         "--cluster", "sandbox"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr == (f"slurm-sglang: error: -o {output} exists: remove it, choose "
                           "another name or pass --force\n")
    assert output.read_text() == "keep me"
