"""Cluster profiles: what an HPC admin writes once so every user's scripts fit the cluster.

A profile is YAML validated by pydantic models with ``extra="forbid"``: a misspelt key is an
error that names the key, the file and the line. Profiles may ``extends:`` another profile;
the child's mappings are merged over the parent's, lists and scalars replace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slurm_sglang.errors import UserInputError

BUILTIN_PROFILE_PACKAGE = "slurm_sglang.profiles"
DEFAULT_PROFILE_NAME = "default"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProfileError(UserInputError):
    """A profile that cannot be loaded; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_newlines(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must be one line (newlines would break the #SBATCH header)")
    return value


class SlurmSettings(_Strict):
    """The #SBATCH side: where and how the job is allocated."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = ""
    gpus_per_node: int = Field(default=8, ge=0, le=64)
    gres_style: Literal["gpus-per-node", "gres", "none"] = "gpus-per-node"
    exclusive: bool = True
    constraint: str = ""
    requeue: bool = False
    extra_directives: list[str] = Field(default_factory=list)

    @field_validator("partition", "account", "qos", "time", "constraint")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _no_newlines(value, "this value")

    @field_validator("extra_directives")
    @classmethod
    def _directives(cls, values: list[str]) -> list[str]:
        for value in values:
            _no_newlines(value, "an extra directive")
            if not value.startswith("--"):
                raise ValueError(f"extra directive {value!r} must be an sbatch option like --mem=0")
        return values


class FabricSettings(_Strict):
    """The network the ranks talk over, and the environment NCCL/Gloo/sglang need for it."""

    kind: Literal["tcp", "efa", "infiniband"] = "tcp"
    socket_interface: str = ""
    ib_hca: str = ""
    ib_gid_index: int | None = None
    efa_plugin_path: str = "/opt/amazon/efa/lib:/opt/aws-ofi-nccl/lib"
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            _no_newlines(value, f"env {name}")
        return env


class ContainerSettings(_Strict):
    """How a rank's process is started on a node: container runtime, image and mounts."""

    runtime: Literal["docker", "podman", "enroot", "apptainer", "none"] = "docker"
    image: str = ""
    mounts: list[str] = Field(default_factory=list)
    run_args: list[str] = Field(default_factory=list)
    gpus: Literal["docker", "cdi", "env", "none"] = "docker"
    privileged: bool = False
    activate: list[str] = Field(default_factory=list)
    python: str = "python3"

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            _no_newlines(mount, "a mount")
            if not mount.startswith("/"):
                raise ValueError(f"mount {mount!r} must be an absolute path (SRC[:DST[:OPTIONS]])")
        return mounts


class PathSettings(_Strict):
    """Where the job's files live; empty workspace means the directory the user runs from."""

    workspace: str = ""
    logs: str = "logs"
    container_mount: str = "/fsx"


class PreflightSettings(_Strict):
    """Checks run on every node before any rank starts."""

    enabled: bool = True
    check_gpus: bool = True
    min_free_disk_gb: float = Field(default=0.0, ge=0)
    nccl: bool = False
    nccl_min_busbw_gbps: float = Field(default=0.0, ge=0)


class RouterSettings(_Strict):
    """Where sglang-router comes from when --dp N spans nodes as replicas, and its policy."""

    source: Literal["image", "venv", "none"] = "image"
    venv: str = ""
    policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = "cache_aware"

    @field_validator("venv")
    @classmethod
    def _venv(cls, venv: str) -> str:
        _no_newlines(venv, "router.venv")
        if venv and not venv.startswith("/"):
            raise ValueError(f"router.venv {venv!r} must be an absolute path on shared storage")
        return venv


class ClusterProfile(_Strict):
    """One cluster's settings: SLURM, fabric, container, paths and pre-flight."""

    name: str = DEFAULT_PROFILE_NAME
    description: str = ""
    extends: str = ""
    template_dir: str = ""
    sglang_version: str = ""
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    fabric: FabricSettings = Field(default_factory=FabricSettings)
    container: ContainerSettings = Field(default_factory=ContainerSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    preflight: PreflightSettings = Field(default_factory=PreflightSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)

    @property
    def container_cli(self) -> str:
        """The Docker-compatible CLI for docker/podman runtimes, empty otherwise."""
        return self.container.runtime if self.container.runtime in ("docker", "podman") else ""


@dataclass(frozen=True)
class ProfileSource:
    """Where a profile's text came from, for error messages."""

    name: str
    path: str
    text: str


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files(BUILTIN_PROFILE_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_source(name_or_path: str) -> ProfileSource:
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(f"--cluster {name_or_path}: no such profile file")
        return ProfileSource(path.stem, str(path), path.read_text(encoding="utf-8"))
    resource = resources.files(BUILTIN_PROFILE_PACKAGE).joinpath(f"{name_or_path}.yaml")
    if not resource.is_file():
        known = ", ".join(builtin_profile_names())
        raise ProfileError(
            f"--cluster {name_or_path}: no built-in profile of that name (known: {known}); "
            "or give a path to a YAML file"
        )
    return ProfileSource(name_or_path, f"<built-in {name_or_path}.yaml>", resource.read_text())


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                item_key = (*prefix, str(index))
                lines[item_key] = item.start_mark.line + 1
                walk(item, item_key)

    if root is not None:
        walk(root, ())
    return lines


def _parse_yaml(source: ProfileSource) -> dict[str, Any]:
    try:
        data = yaml.safe_load(source.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{source.path}{where}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{source.path}: a profile is a mapping (slurm:, container:, ...)")
    return data


def merge_profile_data(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` over ``base``: mappings merge key by key, anything else replaces."""
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_profile_data(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError, source: ProfileSource) -> str:
    lines = _key_lines(source.text)
    messages = []
    for error in exc.errors():
        location = tuple(str(part) for part in error["loc"])
        dotted = ".".join(location)
        line = lines.get(location) or lines.get(location[:-1])
        where = f"{source.path}:{line}" if line else source.path
        if error["type"] == "extra_forbidden":
            parent = _model_at(location[:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else ""
            messages.append(f"{where}: unknown key '{dotted}' (valid keys here: {valid})")
        else:
            messages.append(f"{where}: {dotted}: {error['msg']}")
    return "\n".join(messages)


def _model_at(location: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = ClusterProfile
    for part in location:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _resolve_data(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict[str, Any], ProfileSource]:
    source = _read_source(name_or_path)
    if source.path in seen:
        chain = " -> ".join((*seen, source.path))
        raise ProfileError(f"{source.path}: extends forms a cycle ({chain})")
    data = _parse_yaml(source)
    parent = data.get("extends", "")
    if parent:
        if not isinstance(parent, str):
            raise ProfileError(f"{source.path}: extends must be a profile name or path")
        is_path = "/" in parent or parent.endswith((".yaml", ".yml"))
        if is_path and not parent.startswith(("/", "~")) and not source.path.startswith("<"):
            parent = str(Path(source.path).parent / parent)
        parent_data, _ = _resolve_data(parent, (*seen, source.path))
        parent_data.pop("name", None)
        parent_data.pop("description", None)
        data = merge_profile_data(parent_data, data)
    data.setdefault("name", source.name)
    return data, source


def load_profile(name_or_path: str = DEFAULT_PROFILE_NAME) -> ClusterProfile:
    """Load a built-in profile by name or a YAML file by path, resolving ``extends``."""
    data, source = _resolve_data(name_or_path, ())
    try:
        return ClusterProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(exc, source)) from None


def validate_profile_file(path: str) -> list[str]:
    """Every problem of a profile file, one line each with its YAML line; empty when valid."""
    try:
        load_profile(path)
    except ProfileError as exc:
        return str(exc).splitlines()
    return []


def profile_schema() -> dict[str, Any]:
    """The JSON Schema of a profile file, for editors."""
    return ClusterProfile.model_json_schema()
