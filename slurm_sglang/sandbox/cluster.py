"""Bring the local multi-node SLURM sandbox up, report on it, and take it down again."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

import slurm_sglang
from slurm_sglang.sandbox import network, snapshot
from slurm_sglang.sandbox.host import (
    SandboxError,
    ensure_packages,
    log,
    remove_marked_hosts,
    replace_with_backup,
    require_root,
    restore_backup,
    run,
    write_marked_hosts,
)
from slurm_sglang.sandbox.image import build_standin_record, publish
from slurm_sglang.sandbox.layout import (
    BRIDGE,
    CONTROLLER_ADDRESS,
    IMAGE_NAME_IN_SHARED,
    MAX_NODES,
    NODE_PRIVATE_DIRS,
    NODE_TMPFS_DIRS,
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
from slurm_sglang.sandbox.slurm_config import (
    hardware_fields,
    render_gres_conf,
    render_slurm_conf,
)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGED_PID_FILE = MUNGE_RUN_DIR / "munged.pid"
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
READY_TIMEOUT_SECONDS = 60.0


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
    _start_munge(created)
    write_state(layout, info)
    replace_with_backup(CONTAINERS_CONF, layout.backup, content=CONTAINERS_CONF_TEXT)
    created["fake_gpus"] = _make_fake_gpus(gpus_per_node)
    created["run_netns_existed"] = network.NETNS_DIR.exists()
    created["run_netns_was_mounted"] = network.netns_dir_is_mounted()
    write_state(layout, info)
    network.check_subnet_free()
    network.create_bridge()
    for index in range(1, nodes + 1):
        network.create_node_network(index)
    write_marked_hosts(info.addresses)
    _write_slurm_configs(layout, info)
    _start_slurmctld(layout)
    for node in names:
        _start_slurmd(layout, node)
    _wait_for_nodes(names)
    return _refresh_image(layout, info)


def _start_munge(created: dict[str, Any]) -> None:
    if run(["munge", "-n"], check=False).returncode == 0:
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        created["munge_key"] = True
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    for directory in (MUNGE_RUN_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    run(["runuser", "-u", "munge", "--", "munged"])
    created["munged_pid"] = _wait_for(lambda: read_pid(MUNGED_PID_FILE), "munged to start")
    _wait_for(lambda: run(["munge", "-n"], check=False).returncode == 0 or None, "munge to answer")


def _make_fake_gpus(count: int) -> list[str]:
    made: list[str] = []
    for index in range(count):
        path = Path(f"/dev/fakegpu{index}")
        if not path.exists():
            # The same major:minor as /dev/null: harmless to open, visible as a device file.
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            made.append(str(path))
    return made


def _write_slurm_configs(layout: Layout, info: SandboxInfo) -> None:
    hardware = hardware_fields(run(["slurmd", "-C"]).stdout)
    controller_host = socket.gethostname().split(".")[0]
    layout.slurm_conf.write_text(
        render_slurm_conf(
            layout,
            controller_host,
            info.controller_address,
            info.addresses,
            info.gpus_per_node,
            hardware,
            first_job_id=_saved_next_job_id(layout),
        )
    )
    layout.gres_conf.write_text(render_gres_conf(list(info.nodes), info.gpus_per_node))
    replace_with_backup(SLURM_CONF, layout.backup, symlink_to=layout.slurm_conf)
    replace_with_backup(GRES_CONF, layout.backup, symlink_to=layout.gres_conf)


def _start_slurmctld(layout: Layout) -> None:
    run(["slurmctld", "-i"])
    _wait_for(lambda: read_pid(layout.slurmctld_pid_file), "slurmctld to start")
    _wait_for(
        lambda: "UP" in run(["scontrol", "ping"], check=False).stdout or None, "slurmctld to answer"
    )


def _start_slurmd(layout: Layout, node: str) -> None:
    boot = [sys.executable, "-m", "slurm_sglang.sandbox.node_boot", "--hostname", node]
    for inside in NODE_PRIVATE_DIRS:
        source = layout.node_dir(node, inside)
        source.mkdir(parents=True, exist_ok=True)
        if inside == "/tmp":
            source.chmod(0o1777)
        Path(inside).mkdir(parents=True, exist_ok=True)
        boot += ["--bind", f"{source}:{inside}"]
    for inside in NODE_TMPFS_DIRS:
        Path(inside).mkdir(parents=True, exist_ok=True)
        boot += ["--tmpfs", inside]
    argv = [
        "nsenter",
        f"--net={network.netns_path(node)}",
        "unshare",
        "--uts",
        "--mount",
        "--propagation",
        "private",
        *boot,
        "--",
        "slurmd",
        "-N",
        node,
    ]
    package_parent = str(Path(slurm_sglang.__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    run(argv, env={**os.environ, "PYTHONPATH": python_path}, timeout=60)
    _wait_for(lambda: read_pid(layout.slurmd_pid_file(node)), f"slurmd on {node} to start")


def _wait_for_nodes(names: tuple[str, ...]) -> None:
    def all_ready() -> bool | None:
        output = run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %T"], check=False).stdout
        states = dict(line.split() for line in output.splitlines() if len(line.split()) == 2)
        ready = all(
            states.get(name, "").rstrip("*") in {"idle", "mixed", "allocated"}
            and not states[name].endswith("*")
            for name in names
        )
        return ready or None

    _wait_for(all_ready, "every node to register idle")


def _wait_for(probe: Any, what: str, timeout: float = READY_TIMEOUT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


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


def profile_data(shared: Path, gpus_per_node: int = 8) -> dict[str, Any]:
    """The sandbox's cluster profile (the ClusterProfile schema's keys, nothing else)."""
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
        "fabric": {"kind": "tcp"},
        "paths": {"workspace": str(shared)},
        "preflight": {"check_gpus": False},
    }


def _write_profile(layout: Layout, gpus_per_node: int) -> None:
    text = yaml.safe_dump(profile_data(layout.shared, gpus_per_node), sort_keys=False)
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


def _saved_next_job_id(layout: Layout) -> int:
    try:
        return max(1, int(layout.next_job_id_file.read_text().strip()))
    except (FileNotFoundError, ValueError):
        return 1


def _save_next_job_id(layout: Layout) -> None:
    if read_pid(layout.slurmctld_pid_file) is None:
        return
    config = run(["scontrol", "show", "config"], check=False, timeout=30).stdout
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "NEXT_JOB_ID" and value.strip().isdigit():
            layout.next_job_id_file.write_text(value.strip() + "\n")


def _take_down(layout: Layout, info: SandboxInfo | None) -> None:
    _save_next_job_id(layout)
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
    for target in (SLURM_CONF, GRES_CONF, CONTAINERS_CONF):
        restore_backup(target, layout.backup)
    for device in created.get("fake_gpus", []):
        Path(device).unlink(missing_ok=True)
    if created.get("munge_key"):
        MUNGE_KEY.unlink(missing_ok=True)
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
