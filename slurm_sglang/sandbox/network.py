"""The sandbox's network: a bridge on the host and one network namespace per node."""

from __future__ import annotations

import os
from pathlib import Path

from slurm_sglang.sandbox.host import SandboxError, run
from slurm_sglang.sandbox.layout import (
    BRIDGE,
    CONTROLLER_ADDRESS,
    PREFIX_LENGTH,
    SUBNET_PREFIX,
    host_veth,
    node_address,
    node_name,
)

NETNS_DIR = Path("/run/netns")


def netns_path(node: str) -> Path:
    """The file that pins node's network namespace."""
    return NETNS_DIR / node


def netns_dir_is_mounted() -> bool:
    """Whether /run/netns is a mount point (`ip netns add` makes it one)."""
    return any(fields[1] == str(NETNS_DIR) for fields in _mount_fields())


def link_exists(name: str) -> bool:
    """Whether a network interface of that name exists in the host namespace."""
    return Path("/sys/class/net", name).exists()


def check_subnet_free() -> None:
    """Refuse to start when another interface already routes the sandbox subnet."""
    routes = run(["ip", "-4", "route", "show", f"{SUBNET_PREFIX}.0/{PREFIX_LENGTH}"]).stdout
    foreign = [line for line in routes.splitlines() if line and f"dev {BRIDGE}" not in line]
    if foreign:
        raise SandboxError(
            f"subnet {SUBNET_PREFIX}.0/{PREFIX_LENGTH} is already routed here: {foreign[0]}"
        )


def create_bridge() -> None:
    """Create the bridge with the controller's address (no route beyond the bridge)."""
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    address = f"{CONTROLLER_ADDRESS}/{PREFIX_LENGTH}"
    current = run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    if address not in current:
        run(["ip", "addr", "add", address, "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def create_node_network(index: int) -> None:
    """Create node index's namespace, its veth into the bridge (eth0 inside) and address."""
    node = node_name(index)
    if not netns_path(node).exists():
        run(["ip", "netns", "add", node])
    veth = host_veth(index)
    if not link_exists(veth):
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node])
    run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
    inside = ["ip", "-n", node]
    current = run([*inside, "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    address = f"{node_address(index)}/{PREFIX_LENGTH}"
    if address not in current:
        run([*inside, "addr", "add", address, "dev", "eth0"])
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "link", "set", "eth0", "up"])


def delete_node_network(index: int) -> None:
    """Delete node index's namespace and veth; no-op for what is already gone."""
    node = node_name(index)
    if netns_path(node).exists():
        run(["ip", "netns", "delete", node])
    veth = host_veth(index)
    if link_exists(veth):
        # Deleting the namespace already removes the pair, asynchronously: a race to lose.
        result = run(["ip", "link", "delete", veth], check=False)
        if result.returncode != 0 and link_exists(veth):
            raise SandboxError(f"could not delete {veth}: {result.stderr.strip()}")


def delete_bridge() -> None:
    """Delete the bridge if it is there."""
    if link_exists(BRIDGE):
        run(["ip", "link", "delete", BRIDGE])


def sandbox_netns_names() -> list[str]:
    """Names of namespaces in /run/netns that look like sandbox nodes (sbn<N>)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        entry.name
        for entry in NETNS_DIR.iterdir()
        if entry.name.startswith("sbn") and entry.name[3:].isdigit()
    )


def sandbox_veth_names() -> list[str]:
    """Host-side sandbox veths still present (sbxv<N>)."""
    return sorted(
        name
        for name in os.listdir("/sys/class/net")
        if name.startswith("sbxv") and name[4:].isdigit()
    )


def unmount_netns_dir_if_unused() -> None:
    """Undo the mount `ip netns add` put on /run/netns, when no namespace is left in it."""
    if netns_dir_is_mounted() and not any(NETNS_DIR.iterdir()):
        run(["umount", str(NETNS_DIR)])
        # `ip netns add` mounts it twice over (bind, then make-shared) on some versions.
        if netns_dir_is_mounted():
            run(["umount", str(NETNS_DIR)])


def _mount_fields() -> list[list[str]]:
    with open("/proc/self/mounts") as mounts:
        return [line.split() for line in mounts]
