"""Cluster profiles: loading, extends, and errors that name the key, the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_sglang.profile import (
    ClusterProfile,
    ProfileError,
    builtin_profile_names,
    load_profile,
    merge_profile_data,
    profile_schema,
    validate_profile_file,
)


def test_builtin_profiles_load_and_differ_where_they_should() -> None:
    names = builtin_profile_names()
    assert {"default", "tcp", "aws-p5-efa", "aws-p4d-efa", "infiniband", "sandbox"} <= set(names)
    p5 = load_profile("aws-p5-efa")
    assert (p5.fabric.kind, p5.container.runtime, p5.container.gpus) == ("efa", "docker", "docker")
    ib = load_profile("infiniband")
    assert (ib.fabric.kind, ib.container.runtime, ib.slurm.gres_style) == (
        "infiniband", "enroot", "gres")
    assert load_profile("sandbox").preflight.check_gpus is False


def test_extends_merges_mappings_and_keeps_the_child_name() -> None:
    p4d = load_profile("aws-p4d-efa")
    assert p4d.name == "aws-p4d-efa"
    assert p4d.fabric.kind == "efa"  # inherited
    assert p4d.preflight.min_free_disk_gb == 50  # overridden
    assert p4d.fabric.env == {"NCCL_NVLS_ENABLE": "0"}


def test_file_profile_extends_builtin(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("extends: aws-p5-efa\nslurm:\n  partition: gpu\n  account: ml\n")
    profile = load_profile(str(path))
    assert profile.name == "site"
    assert (profile.slurm.partition, profile.slurm.account, profile.fabric.kind) == (
        "gpu", "ml", "efa")


def test_unknown_key_names_key_file_line_and_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("slurm:\n  partition: gpu\n  partiton: typo\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert f"{path}:3: unknown key 'slurm.partiton'" in message
    assert "partition" in message.split("valid keys here:")[1]


def test_wrong_type_points_at_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nslurm:\n  gpus_per_node: eight\n")
    problems = validate_profile_file(str(path))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:3: slurm.gpus_per_node:")


def test_unknown_runtime_lists_choices(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("container:\n  runtime: lxc\n")
    (problem,) = validate_profile_file(str(path))
    assert ":2: container.runtime:" in problem
    assert "'docker'" in problem and "'enroot'" in problem


def test_newline_in_sbatch_value_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text('slurm:\n  partition: "gpu\\n#SBATCH --x"\n')
    (problem,) = validate_profile_file(str(path))
    assert "slurm.partition" in problem and "one line" in problem


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(str(tmp_path / "a.yaml"))


def test_unknown_builtin_lists_known() -> None:
    with pytest.raises(ProfileError, match=r"known: .*aws-p5-efa"):
        load_profile("aws-p9")


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("slurm:\n  partition: [unclosed\n")
    with pytest.raises(ProfileError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_profile(str(path))


def test_merge_replaces_lists_and_merges_mappings() -> None:
    merged = merge_profile_data(
        {"container": {"mounts": ["/a:/a"], "runtime": "docker"}},
        {"container": {"mounts": ["/b:/b"]}},
    )
    assert merged == {"container": {"mounts": ["/b:/b"], "runtime": "docker"}}


def test_schema_names_every_section() -> None:
    schema = profile_schema()
    assert set(schema["properties"]) == set(ClusterProfile.model_fields)
