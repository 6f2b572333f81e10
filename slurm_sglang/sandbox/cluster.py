"""Bring the local multi-node SLURM sandbox up, report on it, and take it down again."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from slurm_sglang.sandbox import daemons, network, snapshot
from slurm_sglang.sandbox.host import (
    SandboxError,
    ensure_packages,
    log,
    remove_marked_hosts,
    replace_with_backup,
    require_root,
    restore_backup,
    write_marked_hosts,
)
from slurm_sglang.sandbox.image import build_standin_record, publish
from slurm_sglang.sandbox.layout import (
    BRIDGE,
    CONTROLLER_ADDRESS,
    IMAGE_NAME_IN_SHARED,
    MAX_NODES,
    PARTITION,
    Layout,
    SandboxInfo,
    node_address,
    node_name,
    read_state,
    write_state,
)
from slurm_sglang.sandbox.nodes import (
    namespace_id,
    netns_id,
    node_exec,
    pid_alive,
    pids_in_namespaces,
    read_pid,
    terminate,
)

CONTAINERS_CONF = Path("/etc/containers/containers.conf")
CONTAINERS_CONF_TEXT = """\
# Written by the slurm-sglang sandbox; `sandbox down` restores the previous file.
[containers]
# Without this, runc fails on setrlimit inside unprivileged-looking sandboxes.
default_ulimits = []

[engine]
# crun refuses hybrid cgroup hierarchies; runc copes.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sandbox_status() -> SandboxInfo | None:
    """The running sandbox, or None when it is not (fully) up."""
    layout = Layout.from_env()
    info = read_state(layout)
    if info is None or not _healthy(info, layout):
        return None
    return info


def _healthy(info: SandboxInfo, layout: Layout) -> bool:
    if read_pid(layout.slurmctld_pid_file) is None or not network.link_exists(BRIDGE):
        return False
    return all(
        read_pid(layout.slurmd_pid_file(node)) is not None and network.netns_path(node).exists()
        for node in info.nodes
    )


def sandbox_up(nodes: int = 4, gpus_per_node: int = 8, allow_install: bool = True) -> SandboxInfo:
    """Start (or keep, or reshape) the sandbox with that many nodes and fake GPUs per node."""
    if not 1 <= nodes <= MAX_NODES:
        raise SandboxError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if not 0 <= gpus_per_node <= 64:
        raise SandboxError(f"gpus per node must be between 0 and 64, not {gpus_per_node}")
    require_root()
    started = time.monotonic()
    layout = Layout.from_env()
    with _locked(layout):
        current = read_state(layout)
        same_shape = current is not None and (len(current.nodes), current.gpus_per_node) == (
            nodes,
            gpus_per_node,
        )
        if current is not None and same_shape and _healthy(current, layout):
            # Cheap and idempotent: repairs edits made to these files since the last up.
            replace_with_backup(CONTAINERS_CONF, layout.backup, content=CONTAINERS_CONF_TEXT)
            write_marked_hosts(current.addresses)
            info = _refresh_image(layout, current)
        else:
            if current is not None or network.sandbox_netns_names():
                log.warning("sandbox is partly up or has another shape: taking it down first")
                _take_down(layout, current)
            info = _bring_up(layout, nodes, gpus_per_node, allow_install)
        info = _with(info, up_seconds=round(time.monotonic() - started, 2))
        write_state(layout, info)
        return info


def _with(info: SandboxInfo, **changes: Any) -> SandboxInfo:
    return SandboxInfo.from_json(
        {
            **info.to_json(),
            **{
                key: str(value) if isinstance(value, Path) else value
                for key, value in changes.items()
            },
        }
    )


def _bring_up(layout: Layout, nodes: int, gpus_per_node: int, allow_install: bool) -> SandboxInfo:
    ensure_packages(allow_install)
    baseline = snapshot.take()
    (layout.root / "baseline.json").write_text(json.dumps(baseline, indent=1) + "\n")
    names = tuple(node_name(index) for index in range(1, nodes + 1))
    info = SandboxInfo(
        nodes=names,
        addresses={name: node_address(index) for index, name in enumerate(names, start=1)},
        controller_address=CONTROLLER_ADDRESS,
        gpus_per_node=gpus_per_node,
        state_dir=layout.root,
        shared_dir=layout.shared,
        profile_path=layout.profile,
        image_tarball=None,
        image_id=None,
        up_seconds=0.0,
        created={},
    )
    created = info.created
    # Recorded before each step, so that `down` can undo a half-finished `up`.
    write_state(layout, info)
    for directory in (
        layout.etc,
        layout.log,
        layout.run,
        layout.spool,
        layout.controller_state,
        layout.nodes,
        layout.shared,
        layout.backup,
    ):
        directory.mkdir(parents=True, exist_ok=True)
    daemons.start_munge(created)
    write_state(layout, info)
    replace_with_backup(CONTAINERS_CONF, layout.backup, content=CONTAINERS_CONF_TEXT)
    created["fake_gpus"] = daemons.make_fake_gpus(gpus_per_node)
    created["run_netns_existed"] = network.NETNS_DIR.exists()
    created["run_netns_was_mounted"] = network.netns_dir_is_mounted()
    write_state(layout, info)
    network.check_subnet_free()
    network.create_bridge()
    for index in range(1, nodes + 1):
        network.create_node_network(index)
    write_marked_hosts(info.addresses)
    daemons.write_slurm_configs(layout, info)
    daemons.start_slurmctld(layout)
    for node in names:
        daemons.start_slurmd(layout, node)
    daemons.wait_for_nodes(names)
    return _refresh_image(layout, info)


def _refresh_image(layout: Layout, info: SandboxInfo) -> SandboxInfo:
    """Publish the current stand-in image and rewrite the profile (cheap when cached)."""
    tarball: Path | None = None
    image_id: str | None = None
    try:
        record = build_standin_record()
        tarball, image_id = publish(record, layout.shared), record.image_id
    except SandboxError as error:
        log.warning("no test image: %s", error)
    _write_profile(layout, info.gpus_per_node)
    return _with(info, image_tarball=tarball, image_id=image_id)


def profile_data(shared: Path, gpus_per_node: int = 8,
                 sysfs_root: Path | None = None) -> dict[str, Any]:
    """The sandbox's cluster profile (the ClusterProfile schema's keys, nothing else).

    sysfs_root is where the nodes' pretend devices are (Layout.pretend_sysfs): the fabric is
    tcp, but a profile extending this one with fabric kind auto detects from those trees.
    """
    fabric: dict[str, Any] = {"kind": "tcp"}
    if sysfs_root is not None:
        fabric["sysfs_root"] = str(sysfs_root)
    return {
        "name": "sandbox",
        "description": "Local multi-node sandbox (podman, fake GPUs)",
        "slurm": {"partition": PARTITION, "gpus_per_node": gpus_per_node, "exclusive": False},
        "container": {
            "runtime": "podman",
            "image": str(shared / IMAGE_NAME_IN_SHARED),
            "mounts": [f"{shared}:{shared}"],
            "gpus": "env",
        },
        "fabric": fabric,
        "paths": {"workspace": str(shared)},
        "preflight": {"check_gpus": False},
    }


def _write_profile(layout: Layout, gpus_per_node: int) -> None:
    text = yaml.safe_dump(profile_data(layout.shared, gpus_per_node, layout.pretend_sysfs),
                          sort_keys=False)
    partial = layout.profile.with_suffix(".yaml.partial")
    partial.write_text(text)
    partial.replace(layout.profile)


def sandbox_down(purge: bool = False) -> None:
    """Stop everything the sandbox started and undo its changes; purge also deletes its data."""
    require_root()
    layout = Layout.from_env()
    with _locked(layout):
        _take_down(layout, read_state(layout))
    if purge:
        shutil.rmtree(layout.root, ignore_errors=True)


def _take_down(layout: Layout, info: SandboxInfo | None) -> None:
    daemons.save_next_job_id(layout)
    names = list(info.nodes) if info else []
    names += [name for name in network.sandbox_netns_names() if name not in names]
    created: dict[str, Any] = info.created if info else {}
    _remove_containers(
        layout, [node for node in names if read_pid(layout.slurmd_pid_file(node)) is not None]
    )
    namespaces = [netns_id(node) for node in names]
    for node in names:
        pid = read_pid(layout.slurmd_pid_file(node))
        if pid is not None:
            namespaces.append(namespace_id(pid, "mnt"))
    terminate(pids_in_namespaces(ns for ns in namespaces if ns))
    controller = read_pid(layout.slurmctld_pid_file)
    if controller is not None:
        terminate([controller])
    munged = created.get("munged_pid")
    if isinstance(munged, int) and pid_alive(munged):
        terminate([munged])
    for node in names:
        network.delete_node_network(int(node.removeprefix("sbn")))
    network.delete_bridge()
    if not created.get("run_netns_was_mounted", True):
        network.unmount_netns_dir_if_unused()
    if (
        created.get("run_netns_existed") is False
        and network.NETNS_DIR.is_dir()
        and not any(network.NETNS_DIR.iterdir())
        and not network.netns_dir_is_mounted()
    ):
        network.NETNS_DIR.rmdir()
    remove_marked_hosts()
    for target in (daemons.SLURM_CONF, daemons.GRES_CONF, CONTAINERS_CONF):
        restore_backup(target, layout.backup)
    for device in created.get("fake_gpus", []):
        Path(device).unlink(missing_ok=True)
    if created.get("munge_key"):
        daemons.MUNGE_KEY.unlink(missing_ok=True)
    for directory in (layout.nodes, layout.spool, layout.run, layout.controller_state, layout.etc):
        shutil.rmtree(directory, ignore_errors=True)
    layout.state_file.unlink(missing_ok=True)
    layout.profile.unlink(missing_ok=True)
    _report_leftovers(layout)


def _remove_containers(layout: Layout, nodes: list[str]) -> None:
    # One podman start-up costs about a second: all nodes at once.
    def remove(node: str) -> None:
        node_exec(
            node,
            ["podman", "rm", "--all", "--force", "--time", "0"],
            check=False,
            timeout=120,
            layout=layout,
        )

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        list(pool.map(remove, nodes))


def _report_leftovers(layout: Layout) -> None:
    try:
        baseline = json.loads((layout.root / "baseline.json").read_text())
    except FileNotFoundError:
        return
    leftovers = snapshot.differences(baseline, snapshot.take())
    for key, change in leftovers.items():
        log.warning("after down, %s differ from before up: %s", key, change)
