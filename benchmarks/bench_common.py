"""What the benchmark scripts share: the machine they ran on, the sandbox, tables, statistics."""

from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from slurm_sglang.sandbox.cluster import sandbox_status  # noqa: E402 - after the path fix
from slurm_sglang.sandbox.layout import SandboxInfo  # noqa: E402

UP_HINT = "python -m slurm_sglang.sandbox up --nodes {nodes}"


def require_sandbox() -> SandboxInfo:
    """The running sandbox, or exit with the command that starts one."""
    info = sandbox_status()
    if info is None:
        sys.exit("benchmark: the sandbox is down; start it with " + UP_HINT.format(nodes=4))
    return info


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git_revision() -> str:
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "templates", "slurm_sglang"], capture_output=True, text=True)
    return head + (" (templates or package modified)" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """The machine and software a result came from, for the docs beside each table."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "slurm": _first_line(["sinfo", "--version"]),
        "podman": _first_line(["podman", "--version"]),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "revision": _git_revision(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def describe(info: dict[str, Any]) -> str:
    """One line about the machine."""
    return (f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
            f"kernel {info['kernel']}; {info['slurm']}; {info['podman']}; "
            f"load {info['load_average']}; revision {info['revision']}; {info['date_utc']}")


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A right-aligned plain-text table; floats with three decimals."""
    cells = [[f"{value:.3f}" if isinstance(value, float) else str(value) for value in row]
             for row in rows]
    widths = [max([len(title)] + [len(row[i]) for row in cells]) for i, title in
              enumerate(header)]
    lines = ["  ".join(title.rjust(width) for title, width in zip(header, widths, strict=True))]
    lines.extend("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
                 for row in cells)
    return "\n".join(lines)


def node_counts(text: str) -> list[int]:
    """Parse `2,4,8` into [2, 4, 8]."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--nodes: {text!r} is not a comma-separated list of numbers") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"--nodes: {text!r}: give node counts of at least 1")
    return counts


def wait_job_gone(job_id: str, timeout: float = 60) -> None:
    """Wait until squeue no longer lists the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if not listed.stdout.strip():
            return
        time.sleep(0.2)


def drop_from_page_cache(path: Path) -> None:
    """Evict one file's pages so the next reader fetches them from storage."""
    with path.open("rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_counters(path: Path) -> dict[str, float]:
    """A job's result file of "NAME: NUMBER" lines as a dict."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        values[key.rstrip(":")] = float(value)
    return values


def fresh_ports() -> tuple[int, int]:
    """A random HTTP and dist-init port for one run, below Linux's ephemeral range (32768 on).

    A port in that range can be taken by any outgoing connection before the server binds it,
    the head's own /health poll included (a TCP self-connect): runs failed on it.
    """
    return random.randrange(27000, 32000), random.randrange(20000, 26000)
