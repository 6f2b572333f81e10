"""A snapshot of what the sandbox may touch on the machine, to prove `down` left nothing."""

from __future__ import annotations

import os
from typing import Any

from slurm_sglang.sandbox.host import run

# Programs the sandbox starts, directly or through SLURM jobs and podman.
SANDBOX_PROGRAMS = frozenset(
    {"slurmctld", "slurmd", "slurmstepd", "munged", "conmon", "podman", "runc", "crun"}
)


def netns_names() -> list[str]:
    """Names from `ip netns list`, sorted."""
    output = run(["ip", "netns", "list"]).stdout
    return sorted(line.split()[0] for line in output.splitlines() if line.strip())


def link_names() -> list[str]:
    """Interface names of the host's network namespace, sorted."""
    return sorted(os.listdir("/sys/class/net"))


def mounts() -> list[str]:
    """The host's mounts as 'source target type' lines, sorted."""
    with open("/proc/self/mounts") as handle:
        return sorted(" ".join(line.split()[:3]) for line in handle)


def sandbox_processes() -> list[str]:
    """'pid name' of live processes running a sandbox program, or in a foreign net namespace."""
    host_net = os.readlink("/proc/self/ns/net")
    found: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
            name = text[text.index("(") + 1 : text.rindex(")")]
            state = text.rsplit(")", 1)[1].split()[0]
            net = os.readlink(f"/proc/{entry}/ns/net")
        except (OSError, ValueError):
            continue
        if state == "Z":
            continue
        if name in SANDBOX_PROGRAMS or net != host_net:
            found.append(f"{entry} {name}")
    return sorted(found)


def take() -> dict[str, list[str]]:
    """Everything compared before `up` and after `down`."""
    return {
        "netns": netns_names(),
        "links": link_names(),
        "mounts": mounts(),
        "processes": sandbox_processes(),
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per key, what after added to or lost from before; empty when they match."""
    result: dict[str, dict[str, list[str]]] = {}
    for key in sorted(set(before) | set(after)):
        old, new = set(before.get(key, [])), set(after.get(key, []))
        if old != new:
            result[key] = {"added": sorted(new - old), "removed": sorted(old - new)}
    return result
