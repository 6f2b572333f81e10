"""`slurm-sglang profiles`: list, show, validate, init and schema, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from slurm_sglang.cli import main
from slurm_sglang.profile import ClusterProfile, builtin_profile_names, load_profile
from slurm_sglang.profile_init import valid_values


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI; its exit code, standard output and standard error."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_names_every_builtin_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profiles", "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == builtin_profile_names()
    assert "InfiniBand (NCCL IB transport)" in out
    code, out, _ = run(capsys, "profiles", "list", "--json")
    rows = json.loads(out)
    assert {row["name"]: row["description"] for row in rows}["sandbox"] == (
        load_profile("sandbox").description)


def test_show_prints_the_resolved_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profiles", "show", "aws-p4d-efa")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown == load_profile("aws-p4d-efa").model_dump(mode="json")
    # Inherited from aws-p5-efa, then overridden by aws-p4d-efa itself.
    assert shown["fabric"]["kind"] == "efa"
    assert shown["container"]["run_args"][:2] == ["--ulimit", "stack=67108864"]
    assert shown["preflight"]["min_free_disk_gb"] == 50
    code, out, _ = run(capsys, "profiles", "show", "aws-p4d-efa", "--json")
    assert json.loads(out) == shown


def test_show_resolves_a_file_that_extends_a_builtin(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("extends: infiniband\nslurm:\n  partition: h100\nfabric:\n  ib_hca: mlx5_0\n")
    code, out, _ = run(capsys, "profiles", "show", str(path), "--json")
    shown = json.loads(out)
    assert code == 0
    assert (shown["name"], shown["slurm"]["partition"], shown["slurm"]["gres_style"]) == (
        "site", "h100", "gres")
    assert (shown["fabric"]["ib_hca"], shown["fabric"]["ib_gid_index"]) == ("mlx5_0", None)


def test_show_unknown_name_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profiles", "show", "no-such-profile")
    assert code == 2
    assert "known: aws-p4d-efa, aws-p5-efa" in err


def test_validate_reports_every_error_with_its_line(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: site\n"
        "slurm:\n"
        "  partiton: gpu\n"
        "  gpus_per_node: eight\n"
        "container:\n"
        "  runtime: lxc\n"
        "  mounts: [relative/path]\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text("extends: tcp\nslurm:\n  partition: gpu\n")
    code, out, _ = run(capsys, "profiles", "validate", str(bad), str(good))
    assert code == 2
    lines = out.splitlines()
    assert sorted(lines) == sorted([
        f"{bad}:3: unknown key 'slurm.partiton' (valid keys here: account, constraint, "
        "exclusive, extra_directives, gpus_per_node, gres_style, partition, qos, requeue, time)",
        f"{bad}:4: slurm.gpus_per_node: Input should be a valid integer, unable to parse "
        "string as an integer",
        f"{bad}:6: container.runtime: Input should be 'docker', 'podman', 'enroot', "
        "'apptainer' or 'none'",
        f"{bad}:7: container.mounts: Value error, mount 'relative/path' must be an absolute "
        "path (SRC[:DST[:OPTIONS]])",
        f"{good}: ok",
    ])


def test_validate_ok_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("extends: sandbox\n")
    code, out, _ = run(capsys, "profiles", "validate", str(good))
    assert (code, out) == (0, f"{good}: ok\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fabric:\n  kind: [tcp\n")
    code, out, _ = run(capsys, "profiles", "validate", "--json", str(good), str(bad))
    problems = json.loads(out)
    assert code == 2
    assert problems[str(good)] == []
    (syntax,) = problems[str(bad)]
    assert syntax.startswith(f"{bad}:3: not valid YAML")


def test_validate_names_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, _ = run(capsys, "profiles", "validate", str(missing))
    assert code == 2
    assert str(missing) in out and "no such profile file" in out


@pytest.mark.parametrize("name", builtin_profile_names())
def test_init_from_each_builtin_validates_and_keeps_its_values(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    path = tmp_path / "site.yaml"
    code, _, err = run(capsys, "profiles", "init", "--from", name, "-o", str(path))
    assert code == 0 and "profiles validate" in err
    code, out, _ = run(capsys, "profiles", "validate", str(path))
    assert (code, out) == (0, f"{path}: ok\n")
    started = load_profile(str(path)).model_dump()
    source = load_profile(name).model_dump()
    assert started.pop("name") == "my-cluster"
    assert started.pop("extends") == ""
    source.pop("name")
    source.pop("extends")
    assert started == source


def _comment_block_above(lines: list[str], index: int) -> str:
    block: list[str] = []
    while index > 0 and lines[index - 1].lstrip().startswith("#"):
        index -= 1
        block.insert(0, lines[index].lstrip()[1:].strip())
    return " ".join(block)


def test_init_documents_every_key_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profiles", "init")
    assert code == 0
    lines = out.splitlines()
    expected: list[tuple[str, str, str]] = []
    for key, field in ClusterProfile.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            doc = (section.__doc__ or "").strip().splitlines()[0]
            expected.append((f"{key}:", doc, ""))
            expected += [(f"  {name}:", str(sub.description), valid_values(sub))
                         for name, sub in section.model_fields.items()]
        else:
            expected.append((f"{key}:", str(field.description), valid_values(field)))
    for prefix, description, valid in expected:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        comment = _comment_block_above(lines, index)
        assert description.rstrip(".") in comment, prefix
        if valid:
            assert f"Valid: {valid}." in comment, prefix


def test_init_lists_the_choices_of_every_choice_field(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "profiles", "init")
    assert "# Valid: one of: docker, podman, enroot, apptainer, none." in out
    assert "# Valid: one of: auto, tcp, efa, infiniband." in out
    assert "# Valid: a whole number (at least 0, at most 64)." in out
    assert "# Valid: a whole number, or null (at least 0)." in out


def test_init_never_overwrites(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("slurm:\n  partition: keep-me\n")
    code, _, err = run(capsys, "profiles", "init", "-o", str(path))
    assert code == 2 and "exists" in err
    assert path.read_text() == "slurm:\n  partition: keep-me\n"


def test_schema_is_json_schema_with_every_field_described(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profiles", "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["additionalProperties"] is False
    models = [schema, *schema["$defs"].values()]
    undocumented = [(model["title"], name) for model in models
                    for name, prop in model["properties"].items() if "description" not in prop
                    and "$ref" not in prop]
    assert undocumented == []
    container = schema["$defs"]["ContainerSettings"]["properties"]["runtime"]
    assert container["enum"] == ["docker", "podman", "enroot", "apptainer", "none"]


def test_profiles_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profiles")
    assert code == 2 and "required" in err


def test_admin_guide_documents_every_key() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "admin-guide.md").read_text()
    chunks = {chunk.split("\n", 1)[0]: chunk for chunk in guide.split("\n### ")[1:]}
    missing = []
    for key, field in ClusterProfile.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            (chunk,) = [text for title, text in chunks.items() if title.startswith(f"`{key}:`")]
            missing += [f"{key}.{name}" for name in section.model_fields
                        if f"`{name}`" not in chunk]
        elif f"`{key}`" not in chunks["Top level"]:
            missing.append(key)
    assert missing == []


def test_validate_refuses_a_template_dir_that_is_not_there(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text(f"extends: tcp\ntemplate_dir: {tmp_path}/missing\n")
    code, out, _ = run(capsys, "profiles", "validate", str(profile))
    assert code == 2
    assert out.splitlines() == [
        f"{profile}:2: template_dir: Value error, '{tmp_path}/missing' is not a directory here; "
        "create it with the partials it replaces (docs/admin-guide.md, \"Overriding a "
        "partial\"), or remove it"]
    (tmp_path / "missing").mkdir()
    code, out, _ = run(capsys, "profiles", "validate", str(profile))
    assert (code, out.splitlines()) == (0, [f"{profile}: ok"])
