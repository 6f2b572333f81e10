"""Host-side chores of the sandbox: running commands, prerequisites, and reversible file edits."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from slurm_sglang.errors import JobError
from slurm_sglang.transport.base import CommandResult
from slurm_sglang.transport.local import run_local

log = logging.getLogger("slurm_sglang.sandbox")

# Command -> Debian package that provides it. Order is the order of the install line.
REQUIRED_COMMANDS: dict[str, str] = {
    "munged": "munge",
    "munge": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "salloc": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "sinfo": "slurm-client",
    "podman": "podman",
    # `podman run --init` needs it; not on PATH, so named by its path.
    "/usr/libexec/podman/catatonit": "catatonit",
    "runc": "runc",
    "pigz": "pigz",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "runuser": "util-linux",
    "mount": "mount",
    "curl": "curl",
}

HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# slurm-sglang-sandbox"


class SandboxError(JobError):
    """A sandbox step failed; the message says what to do."""


class CommandError(SandboxError):
    """A command exited non-zero; carries its argv, exit code and output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        shown = subprocess.list2cmdline(self.argv)
        detail = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(f"command failed (exit {returncode}): {shown}\n{detail}")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 300,
) -> CommandResult:
    """Run argv through the package's one runner (transport.local.run_local), capture its
    output, and raise CommandError when it fails and check is set. env is added to this
    process's environment (only what differs is passed on)."""
    added = {name: value for name, value in (env or {}).items() if os.environ.get(name) != value}
    result = run_local(argv, input=input_text, env=added or None, timeout=timeout)
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)
    return result


def require_root() -> None:
    """Refuse to go on unless running as root: namespaces, mounts and daemons need it."""
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root: run it with sudo")


def missing_packages() -> list[str]:
    """Debian packages whose commands are not on PATH, without duplicates."""
    packages: list[str] = []
    for command, package in REQUIRED_COMMANDS.items():
        if shutil.which(command) is None and package not in packages:
            packages.append(package)
    return packages


def install_line(packages: Sequence[str]) -> list[str]:
    """The apt-get command that installs the given packages."""
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_packages(allow_install: bool = True) -> None:
    """Install missing packages with apt-get, or raise with the exact line to run."""
    packages = missing_packages()
    if not packages:
        return
    line = subprocess.list2cmdline(install_line(packages))
    if not allow_install or shutil.which("apt-get") is None:
        raise SandboxError(f"missing packages; install them with:\n  {line}")
    log.warning("installing missing packages: %s", " ".join(packages))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(install_line(packages), env=env, timeout=900)
    except CommandError:
        # A fresh machine often has no package lists yet.
        run(["apt-get", "update"], env=env, timeout=900)
        run(install_line(packages), env=env, timeout=900)
    still_missing = missing_packages()
    if still_missing:
        raise SandboxError(f"still missing after apt-get: {' '.join(still_missing)}")


def write_marked_hosts(entries: Mapping[str, str]) -> None:
    """Replace the sandbox's lines in /etc/hosts with name -> address entries."""
    remove_marked_hosts()
    lines = [f"{address}\t{name}\t{HOSTS_MARKER}\n" for name, address in entries.items()]
    text = HOSTS_FILE.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    _write_in_place(HOSTS_FILE, text + "".join(lines))


def remove_marked_hosts() -> None:
    """Remove every line the sandbox added to /etc/hosts, leaving the others untouched."""
    if not HOSTS_FILE.exists():
        return
    lines = HOSTS_FILE.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.rstrip("\n").endswith(HOSTS_MARKER)]
    if kept != lines:
        _write_in_place(HOSTS_FILE, "".join(kept))


def _write_in_place(path: Path, text: str) -> None:
    # /etc/hosts is often a bind mount (containers): rewrite it, never rename over it.
    with path.open("r+") as handle:
        handle.seek(0)
        handle.write(text)
        handle.truncate()


def replace_with_backup(
    target: Path, backup_dir: Path, content: str | None = None, symlink_to: Path | None = None
) -> None:
    """Put our file (content or a symlink) at target, saving any foreign original once."""
    backup = backup_dir / _backup_name(target)
    absent_marker = backup.with_suffix(backup.suffix + ".absent")
    if not backup.exists() and not absent_marker.exists() and not _is_ours(target, symlink_to):
        backup_dir.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            shutil.copy2(target, backup, follow_symlinks=False)
        else:
            absent_marker.touch()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if symlink_to is not None:
        target.symlink_to(symlink_to)
    else:
        target.write_text(content or "")


def restore_backup(target: Path, backup_dir: Path) -> None:
    """Undo replace_with_backup: the original back, or no file where there was none."""
    backup = backup_dir / _backup_name(target)
    absent_marker = backup.with_suffix(backup.suffix + ".absent")
    if backup.exists() or backup.is_symlink():
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copy2(backup, target, follow_symlinks=False)
        backup.unlink()
    elif absent_marker.exists():
        if target.is_symlink() or target.exists():
            target.unlink()
        absent_marker.unlink()


def _backup_name(target: Path) -> str:
    return str(target).strip("/").replace("/", "__")


def _is_ours(target: Path, symlink_to: Path | None) -> bool:
    return symlink_to is not None and target.is_symlink() and target.readlink() == symlink_to
