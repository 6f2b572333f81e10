"""The sandbox's daemons: munged, slurmctld, and one slurmd per node in its namespaces."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import slurm_sglang
from slurm_sglang.sandbox import network
from slurm_sglang.sandbox.host import SandboxError, replace_with_backup, run
from slurm_sglang.sandbox.layout import (
    NODE_PRIVATE_DIRS,
    NODE_TMPFS_DIRS,
    PARTITION,
    Layout,
    SandboxInfo,
)
from slurm_sglang.sandbox.nodes import read_pid
from slurm_sglang.sandbox.slurm_config import (
    hardware_fields,
    render_gres_conf,
    render_slurm_conf,
)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGED_PID_FILE = MUNGE_RUN_DIR / "munged.pid"
READY_TIMEOUT_SECONDS = 60.0


def start_munge(created: dict[str, Any]) -> None:
    """Start munged as user munge unless one answers already; record what it created."""
    if run(["munge", "-n"], check=False).returncode == 0:
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        # Created 0400 from the start: the key must never be readable by others, even briefly.
        descriptor = os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(descriptor, os.urandom(1024))
        finally:
            os.close(descriptor)
        created["munge_key"] = True
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    for directory in (MUNGE_RUN_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    run(["runuser", "-u", "munge", "--", "munged"])
    created["munged_pid"] = _wait_for(lambda: read_pid(MUNGED_PID_FILE), "munged to start")
    _wait_for(lambda: run(["munge", "-n"], check=False).returncode == 0 or None, "munge to answer")


def make_fake_gpus(count: int) -> list[str]:
    """Create /dev/fakegpu0..count-1 where missing; the paths it created."""
    made: list[str] = []
    for index in range(count):
        path = Path(f"/dev/fakegpu{index}")
        if not path.exists():
            # The same major:minor as /dev/null: harmless to open, visible as a device file.
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            made.append(str(path))
    return made


def write_slurm_configs(layout: Layout, info: SandboxInfo) -> None:
    """Write slurm.conf and gres.conf in the state dir and link them from /etc/slurm."""
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
            first_job_id=saved_next_job_id(layout),
        )
    )
    layout.gres_conf.write_text(render_gres_conf(list(info.nodes), info.gpus_per_node))
    replace_with_backup(SLURM_CONF, layout.backup, symlink_to=layout.slurm_conf)
    replace_with_backup(GRES_CONF, layout.backup, symlink_to=layout.gres_conf)


def start_slurmctld(layout: Layout) -> None:
    """Start slurmctld on the host and wait until it answers `scontrol ping`."""
    run(["slurmctld", "-i"])
    _wait_for(lambda: read_pid(layout.slurmctld_pid_file), "slurmctld to start")
    _wait_for(
        lambda: "UP" in run(["scontrol", "ping"], check=False).stdout or None, "slurmctld to answer"
    )


def start_slurmd(layout: Layout, node: str) -> None:
    """Start node's slurmd inside its network namespace, a fresh UTS and mount namespace."""
    boot = [sys.executable, "-m", "slurm_sglang.sandbox.node_boot", "--hostname", node]
    for inside in NODE_PRIVATE_DIRS:
        source = layout.node_dir(node, inside)
        source.mkdir(parents=True, exist_ok=True)
        if inside == "/tmp":
            source.chmod(0o1777)
        Path(inside).mkdir(parents=True, exist_ok=True)
        boot += ["--bind", f"{source}:{inside}"]
    # The node's own pretend devices (Layout.pretend_sysfs), where fabric detection reads.
    layout.node_sysfs(node).mkdir(parents=True, exist_ok=True)
    layout.pretend_sysfs.mkdir(parents=True, exist_ok=True)
    boot += ["--bind", f"{layout.node_sysfs(node)}:{layout.pretend_sysfs}"]
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


def wait_for_nodes(names: tuple[str, ...]) -> None:
    """Wait until every node has registered with slurmctld and is usable."""

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


def saved_next_job_id(layout: Layout) -> int:
    """The job id the next slurmctld should start from (1 the first time)."""
    try:
        return max(1, int(layout.next_job_id_file.read_text().strip()))
    except (FileNotFoundError, ValueError):
        return 1


def save_next_job_id(layout: Layout) -> None:
    """Remember the running slurmctld's next job id for the next `up`."""
    if read_pid(layout.slurmctld_pid_file) is None:
        return
    config = run(["scontrol", "show", "config"], check=False, timeout=30).stdout
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "NEXT_JOB_ID" and value.strip().isdigit():
            layout.next_job_id_file.write_text(value.strip() + "\n")
