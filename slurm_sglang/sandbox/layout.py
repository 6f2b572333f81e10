"""Where the sandbox keeps things, its fixed names and addresses, and what `status` reports."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "SLURM_SGLANG_SANDBOX_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/slurm-sglang-sandbox")

BRIDGE = "sbxbr0"
SUBNET_PREFIX = "10.213.7"
PREFIX_LENGTH = 24
CONTROLLER_ADDRESS = f"{SUBNET_PREFIX}.1"
FIRST_NODE_HOST_PART = 11
MAX_NODES = 64
# Below the Linux ephemeral range (32768+) and away from SLURM's usual 6817/6818.
SLURMCTLD_PORT = 26817
SLURMD_PORT = 26818
PARTITION = "sandbox"
IMAGE_NAME_IN_SHARED = "sglang-serve-latest.tar.gz"

# Paths inside a node that get the node's own storage (bind mounts of per-node dirs).
NODE_PRIVATE_DIRS = ("/tmp", "/var/lib/containers")
# Paths inside a node that start empty at each node boot, as /run does on a real machine.
NODE_TMPFS_DIRS = ("/run/containers", "/run/libpod", "/run/runc", "/run/crun", "/dev/shm")


def node_name(index: int) -> str:
    """Name of node number index (1-based): sbn1, sbn2, ..."""
    return f"sbn{index}"


def node_address(index: int) -> str:
    """IPv4 address of node number index (1-based) on the sandbox bridge."""
    return f"{SUBNET_PREFIX}.{FIRST_NODE_HOST_PART + index - 1}"


def host_veth(index: int) -> str:
    """Name of the host end of node index's veth pair."""
    return f"sbxv{index}"


@dataclass(frozen=True)
class Layout:
    """All sandbox paths, derived from one state directory."""

    root: Path

    @classmethod
    def from_env(cls) -> Layout:
        """The layout under $SLURM_SGLANG_SANDBOX_DIR, or the default state directory."""
        return cls(Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR))

    @property
    def state_file(self) -> Path:
        return self.root / "sandbox.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def next_job_id_file(self) -> Path:
        return self.root / "next_job_id"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.etc / "gres.conf"

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def controller_state(self) -> Path:
        return self.root / "slurmctld"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def profile(self) -> Path:
        return self.root / "profile.yaml"

    @property
    def slurmctld_pid_file(self) -> Path:
        return self.run / "slurmctld.pid"

    def slurmd_pid_file(self, node: str) -> Path:
        """Pid file slurmd writes for node (SlurmdPidFile with %n)."""
        return self.run / f"slurmd-{node}.pid"

    def node_dir(self, node: str, inside_path: str) -> Path:
        """Host directory that backs inside_path on node."""
        return self.nodes / node / inside_path.strip("/").replace("/", "_")

    @property
    def pretend_sysfs(self) -> Path:
        """The sandbox profile's fabric.sysfs_root: one path, each node's own tree behind it.

        /sys cannot be written and the host has no /sys/class/infiniband to bind over, so
        the nodes' pretend RDMA devices live here, bound per node like /tmp; empty (no
        device, so fabric auto finds tcp) until a test makes a node's tree.
        """
        return self.root / "sysfs"

    def node_sysfs(self, node: str) -> Path:
        """Host directory that backs pretend_sysfs on node: write a pretend device here."""
        return self.nodes / node / "sysfs"


@dataclass(frozen=True)
class SandboxInfo:
    """What a running sandbox offers: its nodes, addresses, shared dir, profile and image."""

    nodes: tuple[str, ...]
    addresses: dict[str, str]
    controller_address: str
    gpus_per_node: int
    state_dir: Path
    shared_dir: Path
    profile_path: Path
    image_tarball: Path | None
    image_id: str | None
    up_seconds: float
    created: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few human lines: nodes and addresses, shared dir, profile, image, time taken."""
        lines = [f"sandbox up: {len(self.nodes)} nodes, {self.gpus_per_node} fake GPUs each"]
        lines += [f"  {node}  {self.addresses[node]}" for node in self.nodes]
        lines += [
            f"  controller    {self.controller_address}",
            f"  shared dir    {self.shared_dir}",
            f"  profile       {self.profile_path}",
            f"  image         {self.image_tarball or '(not built)'}",
            f"  took          {self.up_seconds:.1f} s",
        ]
        return "\n".join(lines)

    def text(self) -> str:
        """What `sandbox up|status` prints: the summary."""
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["nodes"] = list(self.nodes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        """Inverse of to_json."""
        tarball = data.get("image_tarball")
        return cls(
            nodes=tuple(data["nodes"]),
            addresses=dict(data["addresses"]),
            controller_address=data["controller_address"],
            gpus_per_node=int(data["gpus_per_node"]),
            state_dir=Path(data["state_dir"]),
            shared_dir=Path(data["shared_dir"]),
            profile_path=Path(data["profile_path"]),
            image_tarball=Path(tarball) if tarball else None,
            image_id=data.get("image_id"),
            up_seconds=float(data.get("up_seconds", 0.0)),
            created=dict(data.get("created", {})),
        )


def read_state(layout: Layout) -> SandboxInfo | None:
    """The recorded sandbox, or None when none was brought up."""
    try:
        return SandboxInfo.from_json(json.loads(layout.state_file.read_text()))
    except FileNotFoundError:
        return None


def write_state(layout: Layout, info: SandboxInfo) -> None:
    """Record info atomically (tmp file, then rename)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.state_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    tmp.replace(layout.state_file)
