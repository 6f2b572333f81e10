"""The image tarball run.sbatch loads on every node: `docker|podman save` of an image, pulled
only when missing, compressed as the file name says, and written all at once or not at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slurm_sglang.errors import JobError, UserInputError
from slurm_sglang.profile import ClusterProfile

DEFAULT_TARBALL = "sglang-serve-latest.tar.gz"
# The suffixes run.sbatch's loader reads (templates/partials/runtime_docker.sh.j2).
_SUFFIXES = {".tar.gz": "gzip", ".tgz": "gzip", ".tar.zst": "zstd", ".tar": "none"}
# What a profile whose runtime cannot `save` uses instead, for the refusal's one line.
_INSTEAD = {
    "enroot": "enroot import -o sglang.sqsh docker://REF, then give the .sqsh as --image",
    "apptainer": "apptainer build sglang.sif docker://REF, then give the .sif as --image",
    "none": "sglang runs from the nodes' own install (container.activate): no image is needed",
}


class ImageError(JobError):
    """The container CLI or the compressor failed; the message has its last words."""


@dataclass(frozen=True)
class SavedImage:
    """A tarball written by save_image: where, how big, which image, and how it was made."""

    path: Path
    size_bytes: int
    image_id: str
    reference: str
    container_cli: str
    compressor: str
    pulled: bool
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """The fields as JSON-ready values."""
        return {"path": str(self.path), "size_bytes": self.size_bytes,
                "image_id": self.image_id, "reference": self.reference,
                "container_cli": self.container_cli, "compressor": self.compressor,
                "pulled": self.pulled, "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        """What `image save` prints: the file, its size, the image ID, how it was made."""
        return "\n".join([
            f"wrote {self.path}",
            f"  size:     {human_size(self.size_bytes)} ({self.size_bytes} bytes)",
            f"  image ID: {self.image_id}",
            f"  from:     {self.reference} ({self.container_cli} save"
            f"{'' if self.compressor == 'none' else ' | ' + self.compressor}"
            f"{', pulled' if self.pulled else ''}, {self.seconds:.1f} s)",
            f"  use it:   bash sbatch/run.sbatch --image {self.path} ...",
        ])


def compression_for(output: Path) -> str:
    """gzip, zstd or none, from the file name; refuses a name run.sbatch could not load."""
    for suffix, kind in _SUFFIXES.items():
        if output.name.endswith(suffix):
            return kind
    raise UserInputError(
        f"-o {output}: name it .tar.gz (default), .tar.zst or .tar; run.sbatch loads only those")


def compressor_argv(kind: str) -> list[str]:
    """The command that compresses standard input to standard output (pigz before gzip)."""
    if kind == "gzip":
        return [shutil.which("pigz") or shutil.which("gzip") or "gzip", "-c"]
    if kind == "zstd":
        if not shutil.which("zstd"):
            raise UserInputError("zstd not found: install it (apt-get install zstd) or name "
                                 "the file .tar.gz")
        # -T0: every core; the image is gigabytes and one thread would take minutes longer.
        return ["zstd", "-q", "-c", "-T0"]
    return []


def container_cli_for(profile: ClusterProfile, override: str = "") -> str:
    """The docker-style CLI to save with: --container-cli, else the profile's runtime."""
    cli = override or profile.container_cli
    if not cli:
        runtime = profile.container.runtime
        raise UserInputError(
            f"profile {profile.name} runs containers with {runtime}, which has no docker-style "
            f"save: {_INSTEAD.get(runtime, 'use docker or podman')}; or pass "
            "--container-cli docker|podman for a tarball anyway")
    if not shutil.which(cli):
        other = "podman" if os.path.basename(cli) == "docker" else "docker"
        raise UserInputError(f"{cli} not found on PATH: install it, or pass --container-cli "
                             f"{other} where that is installed")
    return cli


def image_id(cli: str, reference: str) -> str | None:
    """The local image's ID, or None when the CLI has no such image."""
    done = subprocess.run([cli, "image", "inspect", "--format", "{{.Id}}", reference],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.split()
    if done.returncode == 0 and lines:
        return lines[0]
    # A CLI that cannot reach its daemon would otherwise read as a missing image, and the
    # pull that follows would fail with a registry hint that misleads.
    words = done.stderr.lower()
    if "cannot connect" in words or "permission denied" in words:
        raise ImageError(f"{cli} cannot reach its daemon: {_last_words(done.stderr)} (start "
                         "it, or pass --container-cli podman where podman is installed)")
    return None


def _last_words(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _pull(cli: str, reference: str) -> None:
    # A pull of gigabytes takes minutes: its progress goes to this terminal's standard error
    # (standard output stays clean for --json), and the tail is kept for the one-line error.
    process = subprocess.Popen([cli, "pull", reference], stdout=2, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.fileno()
    tail = b""
    for chunk in iter(lambda: os.read(errors, 65536), b""):
        os.write(2, chunk)
        tail = (tail + chunk)[-4096:]
    if process.wait() != 0:
        raise ImageError(f"{cli} pull {reference} failed: {_last_words(tail)} "
                         "(log in to the registry, or check the name and tag)")


def _umask() -> int:
    # os.umask both reads and sets: set it back at once.
    current = os.umask(0o022)
    os.umask(current)
    return current


def _save_to(cli: str, reference: str, compressor: list[str], sink: int) -> None:
    """`cli save reference`, through the compressor when there is one, into the open file."""
    save = subprocess.Popen([cli, "save", reference],
                            stdout=subprocess.PIPE if compressor else sink,
                            stderr=subprocess.PIPE)
    squeeze = None
    try:
        if compressor:
            assert save.stdout is not None
            squeeze = subprocess.Popen(compressor, stdin=save.stdout, stdout=sink,
                                       stderr=subprocess.PIPE)
            # Only the compressor reads the pipe now: a compressor that dies then makes
            # save fail on a closed pipe instead of blocking forever.
            save.stdout.close()
        assert save.stderr is not None
        save_err = save.stderr.read()
        save_code = save.wait()
        squeeze_err = squeeze.communicate()[1] if squeeze else b""
    finally:
        for process in (save, squeeze):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    if save_code != 0:
        raise ImageError(f"{cli} save {reference} failed: {_last_words(save_err)}")
    if squeeze is not None and squeeze.returncode != 0:
        raise ImageError(f"{compressor[0]} failed: {_last_words(squeeze_err)}")


def save_image(
    reference: str,
    output: Path,
    profile: ClusterProfile,
    *,
    container_cli: str = "",
    pull: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SavedImage:
    """Write `cli save reference` to output, compressed as its name says, atomically.

    Pulls the image when it is missing locally (always with pull); refuses an existing
    output unless force."""
    say = progress or (lambda _line: None)
    kind = compression_for(output)
    compressor = compressor_argv(kind)
    cli = container_cli_for(profile, container_cli)
    if not output.parent.is_dir():
        raise UserInputError(f"-o {output}: {output.parent} is not a directory")
    if output.exists() and not force:
        raise UserInputError(f"-o {output} exists: remove it, choose another name or pass --force")
    started = time.monotonic()
    pulled = False
    found = None if pull else image_id(cli, reference)
    if found is None:
        say(f"pulling {reference} with {cli}")
        _pull(cli, reference)
        pulled = True
        found = image_id(cli, reference)
        if found is None:
            raise ImageError(f"{cli} pulled {reference} but cannot inspect it")
    through = f" | {os.path.basename(compressor[0])}" if compressor else ""
    say(f"{cli} save {reference}{through} > {output}")
    # The temporary file sits next to output so the final rename cannot cross filesystems;
    # a failure or Ctrl-C removes it, and nothing at output ever holds half an image.
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.",
                                         suffix=".part")
    try:
        try:
            _save_to(cli, reference, compressor, handle)
            os.fsync(handle)
        finally:
            os.close(handle)
        # mkstemp makes the file private; the nodes' jobs read it as any file the user writes.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return SavedImage(path=output, size_bytes=output.stat().st_size, image_id=found,
                      reference=reference, container_cli=cli,
                      compressor=os.path.basename(compressor[0]) if compressor else "none",
                      pulled=pulled, seconds=time.monotonic() - started)


def human_size(size: int) -> str:
    """Bytes as the largest binary unit under 1024 with one decimal (e.g. 9.1 GiB)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} GiB"
