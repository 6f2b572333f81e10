"""The sandbox's test image, built without a registry: a Debian rootfs with python3 and the
sglang stand-in, saved as a gzip tarball, cached, and rebuilt only when its recipe changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_sglang.sandbox.host import SandboxError, log, run
from slurm_sglang.sandbox.layout import IMAGE_NAME_IN_SHARED, Layout
from slurm_sglang.transport.local import run_local_pipeline

DEBIAN_SUITE = "bookworm"
DEBOOTSTRAP_VARIANT = "minbase"
DEBOOTSTRAP_INCLUDE = ("python3",)
# The python3 that bookworm ships: what wheels added to the image must be built for.
IMAGE_PYTHON = "3.11"
DEBIAN_MIRROR_ENV = "SLURM_SGLANG_DEBIAN_MIRROR"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Emptied after debootstrap: nothing in the image reads them, and they are most of its size.
TRIMMED_DIRS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
    "var/log",
)
# Bump when the build steps change in a way the settings above do not show.
RECIPE_VERSION = 1
STANDIN_NAME = "sglang-standin"
IMAGE_REPOSITORY = f"localhost/{STANDIN_NAME}"
STANDIN_DIR = Path(__file__).resolve().parent / "standin" / "sglang"
# Where the image's python3 finds packages (Debian's own dist-packages).
IMAGE_SITE_PACKAGES = "usr/lib/python3/dist-packages"
STANDIN_TARGET = f"{IMAGE_SITE_PACKAGES}/sglang"
SKIPPED_NAMES = ("__pycache__",)
KEPT_IMAGES = 3
# Characters of an image's recipe key, in its tag and file names.
KEY_LENGTH = 12


@dataclass(frozen=True)
class ImageRecord:
    """A built stand-in image: its tag, ID, cached tarball and recipe key."""

    tag: str
    image_id: str
    tarball: Path
    key: str
    size_bytes: int
    build_seconds: float


def cache_dir() -> Path:
    """Where built images and rootfs tarballs are cached (XDG cache, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slurm-sglang" / "images"


def _architecture() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def rootfs_key() -> str:
    """Hash of the debootstrap settings that decide the rootfs's content."""
    recipe = {
        "suite": DEBIAN_SUITE,
        "variant": DEBOOTSTRAP_VARIANT,
        "include": list(DEBOOTSTRAP_INCLUDE),
        "trimmed": list(TRIMMED_DIRS),
        "architecture": _architecture(),
        "version": RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def tree_files(root: Path) -> list[Path]:
    """A directory's files (the stand-in package, wheels), sorted, without caches."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part in SKIPPED_NAMES for part in path.parts)
        and path.suffix != ".pyc"
    )


def standin_digest(standin_dir: Path) -> str:
    """Hash of the stand-in's relative paths and contents."""
    digest = hashlib.sha256()
    for path in tree_files(standin_dir):
        digest.update(str(path.relative_to(standin_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_key(standin_dir: Path) -> str:
    """The image's recipe key: rootfs settings plus the stand-in's files."""
    combined = f"{rootfs_key()}:{standin_digest(standin_dir)}"
    return hashlib.sha256(combined.encode()).hexdigest()[:KEY_LENGTH]


def build_rootfs_tarball() -> Path:
    """The cached debootstrap rootfs tarball, building it first when missing (minutes)."""
    cache = cache_dir()
    tarball = cache / f"rootfs-{rootfs_key()}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    mirror = os.environ.get(DEBIAN_MIRROR_ENV) or DEFAULT_DEBIAN_MIRROR
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as work:
        target = Path(work) / "rootfs"
        log.warning(
            "debootstrap %s (%s) into a fresh rootfs: this takes a few minutes",
            DEBIAN_SUITE,
            DEBOOTSTRAP_VARIANT,
        )
        # Its own mount namespace: the /proc and /sys debootstrap mounts die with it.
        run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "debootstrap",
                f"--variant={DEBOOTSTRAP_VARIANT}",
                f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
                DEBIAN_SUITE,
                str(target),
                mirror,
            ],
            timeout=1800,
        )
        for relative in TRIMMED_DIRS:
            _empty_dir(target / relative)
        partial = Path(work) / "rootfs.tar"
        run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "-C",
                str(target),
                "-cf",
                str(partial),
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                ".",
            ]
        )
        partial.replace(tarball)
    return tarball


def _empty_dir(path: Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _add_tree(rootfs_tar: Path, source: Path, target: str) -> None:
    with tarfile.open(rootfs_tar, "a", format=tarfile.GNU_FORMAT) as archive:
        # An image layer may not name a path twice: directories already there are not added.
        present = {name.removeprefix("./").rstrip("/") for name in archive.getnames()}
        for path in tree_files(source):
            relative = path.relative_to(source)
            for parent in reversed(relative.parents[:-1]):
                directory = f"{target}/{parent.as_posix()}"
                if directory not in present:
                    present.add(directory)
                    _add_dir(archive, f"./{directory}")
            info = archive.gettarinfo(str(path), f"./{target}/{relative.as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with path.open("rb") as handle:
                archive.addfile(info, handle)
        if target not in present:
            _add_dir(archive, f"./{target}")


def _add_dir(archive: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(time.time())
    archive.addfile(info)


def _isolated_podman(storage: Path) -> list[str]:
    # A throwaway vfs store: the host's own podman storage never sees the image, and vfs
    # leaves no overlay mounts behind on the host.
    return [
        "podman",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--tmpdir",
        str(storage / "tmp"),
        "--storage-driver",
        "vfs",
        "--events-backend",
        "none",
        "--cgroup-manager",
        "cgroupfs",
    ]


def _record_path(name: str, key: str) -> Path:
    return cache_dir() / f"{name}-{key}.json"


def _read_record(name: str, key: str) -> ImageRecord | None:
    try:
        data: dict[str, Any] = json.loads(_record_path(name, key).read_text())
    except FileNotFoundError:
        return None
    record = ImageRecord(
        tag=data["tag"],
        image_id=data["image_id"],
        tarball=Path(data["tarball"]),
        key=data["key"],
        size_bytes=int(data["size_bytes"]),
        build_seconds=float(data["build_seconds"]),
    )
    return record if record.tarball.exists() else None


def build_standin_record(standin_dir: Path = STANDIN_DIR) -> ImageRecord:
    """Build (or find in the cache) the stand-in image and return what was built."""
    if not (standin_dir / "launch_server.py").exists():
        raise SandboxError(f"the sglang stand-in is missing: no {standin_dir}/launch_server.py")
    return build_image_record(STANDIN_NAME, image_key(standin_dir),
                              [(standin_dir, STANDIN_TARGET)])


def build_image_record(name: str, key: str, trees: list[tuple[Path, str]]) -> ImageRecord:
    """Build (or find in the cache) the Debian rootfs with each (directory, path in the image)
    of trees added, saved as a gzip docker-archive tarball named NAME-KEY."""
    cached = _read_record(name, key)
    if cached is not None:
        return cached
    started = time.monotonic()
    rootfs = build_rootfs_tarball()
    cache = cache_dir()
    tag = f"localhost/{name}:{key}"
    with tempfile.TemporaryDirectory(dir=cache, prefix="image-") as work:
        work_dir = Path(work)
        image_tar = work_dir / "rootfs-with-trees.tar"
        shutil.copyfile(rootfs, image_tar)
        for source, target in trees:
            _add_tree(image_tar, source, target)
        # podman refuses a runroot path longer than 50 characters: keep the store short-named.
        storage = Path(tempfile.mkdtemp(prefix="sbx-image-"))
        podman = _isolated_podman(storage)
        image_id = (
            run([*podman, "import", "--change", 'CMD ["python3"]', str(image_tar), tag])
            .stdout.strip()
            .splitlines()[-1]
        )
        saved = work_dir / "image.tar"
        run([*podman, "save", "--format", "docker-archive", "-o", str(saved), tag])
        run([*podman, "rmi", "--force", tag])
        run(["pigz", "--force", str(saved)])
        tarball = cache / f"{name}-{key}.tar.gz"
        Path(f"{saved}.gz").replace(tarball)
        _remove_tree(storage)
    record = ImageRecord(
        tag=tag,
        image_id=image_id.removeprefix("sha256:"),
        tarball=tarball,
        key=key,
        size_bytes=tarball.stat().st_size,
        build_seconds=round(time.monotonic() - started, 2),
    )
    data = {**record.__dict__, "tarball": str(tarball)}
    _record_path(name, key).write_text(json.dumps(data, indent=2) + "\n")
    _prune_old_images(name, keep=KEPT_IMAGES)
    return record


def _prune_old_images(name: str, keep: int) -> None:
    # Each stand-in edit makes a new image; keep only the newest few in the cache. By the key's
    # length: sglang-standin-KEY must not also match sglang-standin-router-KEY.
    tarballs = sorted(
        cache_dir().glob(f"{name}-{'?' * KEY_LENGTH}.tar.gz"),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for old in tarballs[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.removesuffix(".tar.gz") + ".json").unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    # vfs layers hold read-only directories; chmod on the way down lets rmtree delete them.
    def make_writable(function: Any, failed_path: str, _info: Any) -> None:
        Path(failed_path).parent.chmod(0o755)
        function(failed_path)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)


def publish(record: ImageRecord, shared_dir: Path, name: str = IMAGE_NAME_IN_SHARED) -> Path:
    """Hard-link (or copy) the image tarball into the shared dir as NAME (by default, as the
    data plane's default image)."""
    shared_dir.mkdir(parents=True, exist_ok=True)
    target = shared_dir / name
    if target.exists() and os.path.samefile(target, record.tarball):
        return target
    partial = shared_dir / f".{name}.partial"
    partial.unlink(missing_ok=True)
    try:
        os.link(record.tarball, partial)
    except OSError:
        shutil.copyfile(record.tarball, partial)
    partial.replace(target)
    return target


def build_standin_image(shared_dir: Path | None = None) -> Path:
    """Build or reuse the stand-in image and publish it as <shared>/sglang-serve-latest.tar.gz."""
    record = build_standin_record()
    return publish(record, shared_dir or Layout.from_env().shared)


def load_command(tarball: Path) -> list[list[str]]:
    """The pipeline that loads tarball into podman (podman load does not read gzip here)."""
    return [["pigz", "-dc", str(tarball)], ["podman", "load"]]


def run_pipeline(stages: list[list[str]], prefix: list[str] | None = None) -> str:
    """Run stages connected by pipes (the last one optionally wrapped by prefix); its stdout."""
    done = run_local_pipeline(stages[0], [*(prefix or []), *stages[1]])
    if done.returncode != 0:
        raise SandboxError(f"pipeline failed: {stages}: {done.stderr.strip()}")
    return done.stdout
