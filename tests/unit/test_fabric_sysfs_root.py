"""fabric.sysfs_root: where fabric auto and the RDMA checks read a node's devices (issue 16, 5).

/sys on a real cluster; a test cluster (the sandbox) points it at a per-node tree of pretend
devices. The detection itself is the same code either way: only the directory moves.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from slurm_sglang.profile import ClusterProfile, ProfileError, load_profile
from slurm_sglang.render import render_script
from slurm_sglang.sandbox.cluster import profile_data
from slurm_sglang.sandbox.layout import Layout


def _functions(tmp_path: Path, sysfs_root: str) -> Path:
    text = render_script(ClusterProfile.model_validate(
        {"container": {"runtime": "none"}, "fabric": {"kind": "auto", "sysfs_root": sysfs_root}}))
    path = tmp_path / "functions.sh"
    path.write_text(text[: -len('main "$@"\n')])
    return path


def _detect(script: Path) -> str:
    program = f"set +e; source {script}\nset +eu\nNODE_NAME=n1\nfabric_detect\n"
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_default_reads_the_kernels_sysfs() -> None:
    text = render_script(load_profile("default"))
    assert "declare -rx RDMA_SYSFS=/sys/class/infiniband\n" in text


@pytest.mark.parametrize(("driver", "state", "expected"), [
    ("efa", "1: ACTIVE", "efa"),
    ("mlx5_core", "4: ACTIVE", "infiniband"),
    ("mlx5_core", "1: DOWN", "tcp"),
])
def test_auto_reads_its_devices_under_the_root(tmp_path: Path, driver: str, state: str,
                                               expected: str) -> None:
    root = tmp_path / "pretend sys"
    device = root / "class" / "infiniband" / "dev0"
    (device / "device").mkdir(parents=True)
    (device / "device" / "driver").symlink_to(f"../../../../bus/pci/drivers/{driver}")
    (device / "ports" / "1").mkdir(parents=True)
    (device / "ports" / "1" / "state").write_text(f"{state}\n")
    assert _detect(_functions(tmp_path, f"{root}/")) == expected
    # The kernel's own /sys is not read: this machine's devices do not leak into the answer.
    assert _detect(_functions(tmp_path, str(tmp_path / "empty"))) == "tcp"


@pytest.mark.parametrize("value", ["sys", "", "/sys\n/tmp"])
def test_a_relative_or_multi_line_root_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"fabric": {"sysfs_root": value}}))
    with pytest.raises(ProfileError, match="sysfs_root"):
        load_profile(str(path))


def test_the_sandbox_profile_points_at_its_per_node_trees(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    data = profile_data(layout.shared, 8, layout.pretend_sysfs)
    profile = ClusterProfile.model_validate(data)
    assert profile.fabric.sysfs_root == str(tmp_path / "sysfs")
    # One path for every node; each node's own tree is bound there (daemons.start_slurmd).
    assert layout.node_sysfs("sbn1") != layout.node_sysfs("sbn2")
    assert layout.node_sysfs("sbn1").parent == layout.nodes / "sbn1"
