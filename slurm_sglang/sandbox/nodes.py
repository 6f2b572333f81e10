"""Entering a sandbox node's namespaces, and finding or ending the processes that live there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from slurm_sglang.sandbox.host import SandboxError, run
from slurm_sglang.sandbox.layout import Layout
from slurm_sglang.sandbox.network import netns_path
from slurm_sglang.transport.base import CommandResult


def read_pid(pid_file: Path) -> int | None:
    """The live process named in pid_file, or None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def node_pid(node: str, layout: Layout | None = None) -> int:
    """The pid of node's slurmd, whose namespaces are the node's."""
    layout = layout or Layout.from_env()
    pid = read_pid(layout.slurmd_pid_file(node))
    if pid is None:
        raise SandboxError(f"node {node} is not running (no live slurmd)")
    return pid


def node_command(node: str, argv: Sequence[str], layout: Layout | None = None) -> list[str]:
    """argv wrapped to run inside node's network, UTS and mount namespaces."""
    pid = node_pid(node, layout)
    return ["nsenter", f"--target={pid}", "--net", "--uts", "--mount", "--", *argv]


def node_exec(
    node: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    layout: Layout | None = None,
) -> CommandResult:
    """Run argv inside node (its hostname, address and container storage) and capture output."""
    return run(node_command(node, argv, layout), check=check, timeout=timeout)


def containers_on(
    node: str, label: str | None = None, layout: Layout | None = None
) -> list[dict[str, Any]]:
    """The podman containers (running or not) in node's storage, optionally by label."""
    argv = ["podman", "ps", "--all", "--format", "json"]
    if label:
        argv += ["--filter", f"label={label}"]
    output = node_exec(node, argv, layout=layout).stdout.strip()
    containers: list[dict[str, Any]] = json.loads(output) if output else []
    return containers


def namespace_id(pid: int | str, kind: str) -> str | None:
    """The namespace link of pid for kind ('net', 'mnt', ...), e.g. 'net:[4026532]'."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def netns_id(node: str) -> str | None:
    """The namespace link text of node's network namespace, from its /run/netns pin."""
    try:
        return f"net:[{os.stat(netns_path(node)).st_ino}]"
    except FileNotFoundError:
        return None


def pids_in_namespaces(namespace_ids: Iterable[str]) -> list[int]:
    """Pids of processes whose network or mount namespace is one of namespace_ids."""
    wanted = set(namespace_ids)
    found: list[int] = []
    if not wanted:
        return found
    own = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        if namespace_id(entry, "net") in wanted or namespace_id(entry, "mnt") in wanted:
            found.append(int(entry))
    return found


def terminate(pids: Iterable[int], grace_seconds: float = 5.0) -> None:
    """SIGTERM pids, then SIGKILL whatever is left after grace_seconds."""
    pending = [pid for pid in pids if pid_alive(pid)]
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = [pid for pid in pending if pid_alive(pid)]
    for pid in pending:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_seconds
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [pid for pid in pending if pid_alive(pid)]


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
