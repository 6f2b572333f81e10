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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slurm_sglang.errors import UserInputError
from slurm_sglang.launch_plan import image_conversion_hint

BUILTIN_PROFILE_PACKAGE = "slurm_sglang.profiles"
DEFAULT_PROFILE_NAME = "default"
# \Z, not $: $ also matches before a final newline, and "FOO\n" rendered `export FOO` then `=x`.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Names that reach #SBATCH lines, submitit's batch script and messages: nothing a shell or
# sbatch's line parser could read as more than one word.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# The toolkit's own directives (render.sbatch_directives, submit): a profile's extra_directives
# written after them would win. sbatch takes unambiguous prefixes of long options, so a
# prefix of one of these is refused too, unless it is itself an sbatch option.
PROTECTED_DIRECTIVES = (
    "--job-name", "--nodes", "--ntasks", "--ntasks-per-node", "--tasks-per-node", "--output",
    "--error", "--input", "--partition", "--account", "--qos", "--time", "--constraint",
    "--gpus-per-node", "--gres", "--exclusive", "--requeue", "--no-requeue", "--signal",
    "--chdir", "--open-mode", "--array", "--wrap",
)
_SBATCH_OPTIONS_THAT_ARE_PREFIXES = ("--gpus",)


class ProfileError(UserInputError):
    """A profile that cannot be loaded; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_name(value: str, what: str) -> str:
    """Refuse a name (profile, job, partition, account, qos) that is not one plain word."""
    if value and not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}: "
                         "letters, digits, '.', '_' and '-', up to 64")
    return value


def protected_directive(directive: str) -> str | None:
    """The toolkit's own sbatch option that ``directive`` (--name[=value]) would set, or None."""
    name = directive.split("=", 1)[0]
    if name in _SBATCH_OPTIONS_THAT_ARE_PREFIXES:
        return None
    for option in PROTECTED_DIRECTIVES:
        if option == name or (len(name) > 2 and option.startswith(name)):
            return option
    return None


def _no_newlines(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must be one line (newlines would break the #SBATCH header)")
    return value


def _absolute_path(value: str, what: str, where: str = "", optional: bool = False) -> str:
    """One line, and absolute (empty too when optional): paths the nodes read as they are."""
    _no_newlines(value, what)
    if (value or not optional) and not value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be an absolute path{' ' if where else ''}{where}")
    return value


def template_directory(value: str) -> Path:
    """An override template directory as the renderer reads it: '~' expanded, absolute and
    existing here (rendering runs where render or submit runs); ValueError says the fix."""
    _no_newlines(value, "a template directory")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path (render and submit run from any "
                         "directory), e.g. /shared/slurm-sglang/templates")
    if not path.is_dir():
        # A missing override would silently render the built-in partials instead.
        raise ValueError(f"{value!r} is not a directory here; create it with the partials it "
                         "replaces (docs/admin-guide.md, \"Overriding a partial\"), or remove it")
    return path


def _check_directive(value: str) -> str:
    # Checked one item at a time, so that the error names the item's line in the profile.
    _no_newlines(value, "an extra directive")
    if not value.startswith("--"):
        raise ValueError(f"extra directive {value!r} must be an sbatch option like --mem=0")
    if any(character.isspace() for character in value):
        raise ValueError(f"extra directive {value!r} must be one word (no spaces)")
    protected = protected_directive(value)
    if protected:
        raise ValueError(
            f"extra directive {value!r} would override the toolkit's own {protected} "
            "(set by slurm-sglang from the profile, the submit options or the plan); "
            "remove it, or use the slurm: key or submit option for it")
    return value


class SlurmSettings(_Strict):
    """The #SBATCH side: where and how the job is allocated."""

    partition: str = Field(default="", description=(
        "SLURM partition (#SBATCH --partition); empty: the cluster's default partition."))
    account: str = Field(default="", description=(
        "Account the job is charged to (#SBATCH --account); empty: the user's default."))
    qos: str = Field(default="", description=(
        "Quality of service (#SBATCH --qos); empty: none asked for."))
    time: str = Field(default="", description=(
        "Time limit (#SBATCH --time), e.g. 04:00:00 or 2-00:00:00; empty: the partition's "
        "limit. submit --time overrides it."))
    gpus_per_node: int = Field(default=8, ge=0, le=64, description=(
        "GPUs on each node: the GPU request and the tp*pp*dp checks use it."))
    gres_style: Literal["gpus-per-node", "gres", "none"] = Field(
        default="gpus-per-node", description=(
            "How GPUs are requested: gpus-per-node (--gpus-per-node=N), gres "
            "(--gres=gpu:N, for clusters without GPU TRES), none (no GPU directive)."))
    exclusive: bool = Field(default=True, description=(
        "Ask for whole nodes (#SBATCH --exclusive)."))
    constraint: str = Field(default="", description=(
        "Node features (#SBATCH --constraint), e.g. h100; empty: none."))
    requeue: bool = Field(default=False, description=(
        "Let SLURM requeue the job after a node failure (#SBATCH --requeue)."))
    extra_directives: list[Annotated[str, AfterValidator(_check_directive)]] = Field(
        default_factory=list, description=(
        "More sbatch options, one per item, each starting with --, e.g. --mem=0; "
        "written after the others."))

    @field_validator("partition", "account", "qos", "time", "constraint")
    @classmethod
    def _one_line(cls, value: str) -> str:
        _no_newlines(value, "this value")
        # sbatch splits an #SBATCH line at whitespace: a space would start another option.
        if any(character.isspace() for character in value):
            raise ValueError(f"{value!r} must be one word (no spaces)")
        return value

    @field_validator("gpus_per_node", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        # pydantic reads YAML's true as 1.
        if isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is not a number of GPUs; give a whole number")
        return value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _names(cls, value: str) -> str:
        # SLURM takes a comma-separated list of partitions or QOSes.
        for part in value.split(","):
            check_name(part, "each name in" if "," in value else "the name")
        return value


class FabricSettings(_Strict):
    """The network the ranks talk over, and the environment NCCL/Gloo/sglang need for it."""

    kind: Literal["auto", "tcp", "efa", "infiniband"] = Field(default="auto", description=(
        "The network between nodes: auto (found on each node when its rank starts: EFA "
        "devices give efa, an InfiniBand/RoCE HCA with an active port gives infiniband, "
        "otherwise tcp), tcp (sockets, no RDMA), efa (AWS Elastic Fabric Adapter through "
        "libfabric and aws-ofi-nccl), infiniband (NCCL's IB transport, InfiniBand or RoCE)."))
    socket_interface: str = Field(default="", description=(
        "Interface for NCCL/Gloo sockets and sglang's address, e.g. ens5; NCCL gets it in "
        "its exact-match form (NCCL_SOCKET_IFNAME==ens5); empty: found on each node from "
        "its route to the head node."))
    ib_hca: str = Field(default="", description=(
        "NCCL_IB_HCA as NCCL reads it, e.g. =mlx5_0,mlx5_1 (a leading = matches names "
        "exactly); empty: every HCA of the node with an active port, exact names. "
        "infiniband and auto only."))
    ib_gid_index: int | None = Field(default=None, ge=0, description=(
        "NCCL_IB_GID_INDEX, for RoCE only, when the GID NCCL picks by itself is not the "
        "one to use (IPv6 or VLAN GIDs); null: NCCL picks (ignored on native "
        "InfiniBand). infiniband and auto only."))
    efa_plugin_path: str = Field(
        default="/opt/amazon/ofi-nccl/lib:/opt/amazon/efa/lib", description=(
            "Colon-separated host directories of the aws-ofi-nccl plugin and libfabric, "
            "where the EFA installer puts them; mounted read-only into containers at the "
            "same path and put first on the ranks' LD_LIBRARY_PATH. Empty: the image's own "
            "plugin is used (it must be on the image's library path). efa and auto only."))
    efa_nccl_net_plugin: str = Field(default="ofi", description=(
        "NCCL_NET_PLUGIN for EFA: ofi loads libnccl-net-ofi.so (the EFA installer's "
        "name); empty: NCCL's default libnccl-net.so. NCCL_NET is set to 'AWS Libfabric' "
        "either way, so a plugin that fails to load fails the job instead of falling back "
        "to sockets. efa and auto only."))
    env: dict[str, str] = Field(default_factory=dict, description=(
        "Environment variables for every rank, set after the fabric's own so they win, "
        "e.g. NCCL_DEBUG: INFO."))
    sysfs_root: str = Field(default="/sys", description=(
        "Where auto and the RDMA checks read the node's devices (SYSFS_ROOT/class/"
        "infiniband). Leave /sys on a real cluster; a test cluster points it at a per-node "
        "directory of pretend devices (the sandbox does), since sysfs cannot be written."))

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            _no_newlines(value, f"env {name}")
        return env

    @field_validator("socket_interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]*", value):
            raise ValueError(f"{value!r} is not an interface name (give one, e.g. ens5)")
        return value

    @field_validator("sysfs_root")
    @classmethod
    def _sysfs_root(cls, value: str) -> str:
        return _absolute_path(value, "sysfs_root", "(/sys on a real node)")

    @field_validator("efa_plugin_path")
    @classmethod
    def _plugin_path(cls, value: str) -> str:
        _no_newlines(value, "efa_plugin_path")
        for part in filter(None, value.split(":")):
            _absolute_path(part, "efa_plugin_path entry")
        return value


class ContainerSettings(_Strict):
    """How a rank's process is started on a node: container runtime, image and mounts."""

    runtime: Literal["docker", "podman", "enroot", "apptainer", "none"] = Field(
        default="docker", description=(
            "How each node's rank starts: docker or podman (a container per node), enroot "
            "(pyxis, srun --container-image), apptainer (a .sif, --nv), none (sglang "
            "installed on the nodes, made usable by the activate lines)."))
    image: str = Field(default="", description=(
        "Default image: a tarball (.tar, .tar.gz, .tar.zst) or registry reference for "
        "docker/podman, a .sqsh or reference for enroot, a .sif for apptainer; unused by "
        "none. Empty: sglang-serve-latest.tar.gz in the workspace. --image overrides it."))
    mounts: list[str] = Field(default_factory=list, description=(
        "Extra bind mounts, SRC[:DST[:OPTIONS]] with absolute paths, e.g. /fsx:/fsx; the "
        "workspace and the model path are mounted anyway."))
    run_args: list[str] = Field(default_factory=list, description=(
        "Extra arguments for the runtime the profile names, one per item: docker/podman "
        "run options (e.g. [--ulimit, stack=67108864]), pyxis's srun options for enroot "
        "(--container-*), apptainer exec options for apptainer; an option the runtime's "
        "command does not take is refused. Memlock for RDMA is the fabric's (checked "
        "in the pre-flight), not a run argument."))
    gpus: Literal["docker", "cdi", "env", "none"] = Field(default="docker", description=(
        "How a container gets its GPUs: docker (--gpus device=...), cdi (--device "
        "nvidia.com/gpu=N), env (CUDA_VISIBLE_DEVICES only), none. docker/podman only; "
        "the other runtimes give a rank the GPUs SLURM granted, numbered as CUDA does."))
    privileged: bool = Field(default=False, description=(
        "Run containers with --privileged. docker/podman only."))
    activate: list[str] = Field(default_factory=list, description=(
        "Shell lines run on each node before sglang starts, runtime none only, e.g. "
        "[source /shared/venvs/sglang/bin/activate] or [module load cuda/12.4]."))
    python: str = Field(default="python3", description=(
        "The Python with sglang installed, found after the activate lines. none only."))
    broadcast: Literal["none", "sbcast"] = Field(default="none", description=(
        "sbcast: an image file is read once and sent to every node's broadcast_dir with "
        "SLURM's tree fan-out, then loaded there; none: every node reads the shared copy."))
    broadcast_dir: str = Field(default="/tmp", description=(
        "Node-local directory for the broadcast copy (deleted once loaded)."))
    broadcast_fanout: int = Field(default=0, ge=0, description=(
        "sbcast --fanout; 0 keeps SLURM's default."))

    @field_validator("broadcast_dir")
    @classmethod
    def _broadcast_dir(cls, value: str) -> str:
        return _absolute_path(value, "broadcast_dir", "on every node")

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            _absolute_path(mount, "mount", "(SRC[:DST[:OPTIONS]])")
        return mounts

    @model_validator(mode="after")
    def _scoped_to_runtime(self) -> ContainerSettings:
        problem = runtime_option_problem(self)
        if problem:
            raise ValueError(problem)
        return self


# docker run options that apptainer exec does not take (apptainer exec --help, 1.3): a
# profile written for docker must not reach apptainer unnoticed. -e is apptainer's
# --cleanenv, not docker's --env.
_DOCKER_ONLY_OPTIONS = frozenset({
    "--ulimit", "--gpus", "--device", "--shm-size", "--privileged", "-v", "--volume",
    "--label", "--init", "--rm", "--name", "--memory", "--cpus", "--cap-add",
    "--security-opt", "--entrypoint", "-e", "--runtime", "--user", "-u", "--publish", "-p",
})


def _option_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def runtime_option_problem(container: ContainerSettings) -> str:
    """Why the container options do not fit the runtime, naming the key; empty when they do."""
    runtime = container.runtime
    docker_like = runtime in ("docker", "podman")
    if container.activate and runtime != "none":
        return (f"container.activate is for runtime none only (runtime is {runtime}); "
                "remove it or set container.activate: []")
    if container.privileged and not docker_like:
        return (f"container.privileged is a docker/podman option; runtime {runtime} has "
                "no such switch: set container.privileged: false")
    options = [arg for arg in container.run_args if arg.startswith("-")]
    if runtime == "none" and container.run_args:
        return "container.run_args: runtime none starts no container; set container.run_args: []"
    if runtime == "enroot":
        # pyxis adds its options to srun (pyxis wiki, Usage): --container-* and
        # --no-container-*; everything else would be an srun option of the rank step.
        for arg in options:
            if not arg.startswith(("--container-", "--no-container-")):
                return (f"container.run_args: {_option_name(arg)} is not a pyxis option; "
                        "runtime enroot passes run_args to srun, which takes only "
                        "--container-* there (srun --help with pyxis)")
    if runtime == "apptainer":
        for arg in options:
            if _option_name(arg) in _DOCKER_ONLY_OPTIONS:
                return (f"container.run_args: {_option_name(arg)} is a docker run option "
                        "that apptainer exec does not take (apptainer exec --help)")
    hint = image_conversion_hint(runtime, container.image)
    return f"container.image: {hint}" if hint else ""


class PathSettings(_Strict):
    """Where the job's files live; empty workspace means the directory the user runs from."""

    workspace: str = Field(default="", description=(
        "Shared directory, the same on every node, for logs and the default image; empty: "
        "the directory the job is started from."))
    logs: str = Field(default="logs", description=(
        "Log directory inside the workspace; each job writes LOGS/JOB_ID/."))
    container_mount: str = Field(default="/fsx", description=(
        "Shared storage mounted into containers at the same path (the script's "
        "--container-mount default)."))
    prometheus_targets_dir: str = Field(default="", description=(
        "A directory the site's Prometheus reads (file_sd_configs, e.g. "
        "/srv/prometheus/targets/*.json), writable by the users: each job also writes its "
        "target file there as slurm-sglang-USER-JOBID.json, mode 0644, and removes it when "
        "it ends. The file holds addresses and labels, no secret. Empty: only "
        "logs/JOB_ID/prometheus-targets.json, readable by the user alone."))

    local_model_dir: str = Field(default="", description=(
        "Node-local directory (e.g. /local/nvme/models) where each job stages the model "
        "before the ranks start, in a subdirectory per user (the script's --stage-model "
        "default; docs/staging.md). Empty: the ranks read the shared copy."))
    local_model_limit_gb: float = Field(default=0.0, ge=0, description=(
        "Above this many GB of a user's staged copies on a node, the least recently used "
        "are evicted (never one a running job uses); 0: evicted only to make room."))
    local_model_margin_gb: float = Field(default=2.0, ge=0, description=(
        "Free space a node keeps beyond the model's size; less fails the pre-flight."))
    local_model_checksum: bool = Field(default=False, description=(
        "The manifest also holds each file's sha256 (read from the shared copy once per "
        "change), checked on every node's copy after the broadcast."))

    @field_validator("workspace", "container_mount")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _no_newlines(value, "this path")

    @field_validator("local_model_dir")
    @classmethod
    def _local_model_dir(cls, value: str) -> str:
        return _absolute_path(value, "local_model_dir",
                              "on every node's local disk, e.g. /local/nvme/models", optional=True)

    @field_validator("prometheus_targets_dir")
    @classmethod
    def _targets_dir(cls, value: str) -> str:
        # The job runs in a directory of SLURM's choosing, and the site's Prometheus in its own.
        return _absolute_path(value, "prometheus_targets_dir",
                              "that the nodes and the site's Prometheus both see", optional=True)

    @field_validator("logs")
    @classmethod
    def _logs(cls, value: str) -> str:
        # Joined to the workspace and the job id by the script and by the readers.
        plain = re.match(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\Z", value)
        if not plain or ".." in value.split("/"):
            raise ValueError(f"{value!r} must be a relative path of plain names (letters, digits, "
                             "'.', '_', '-'), e.g. logs")
        return value


class PreflightSettings(_Strict):
    """Checks run on every node before any rank starts."""

    enabled: bool = Field(default=True, description=(
        "Run the pre-flight checks; false turns the GPU and NCCL checks off."))
    check_gpus: bool = Field(default=True, description=(
        "Fail when a node sees fewer GPUs than its rank needs (tp*pp/nnodes)."))
    min_free_disk_gb: float = Field(default=0.0, ge=0, description=(
        "Fail when the workspace has less free disk than this on a node (GB); 0: no check."))
    nccl: bool = Field(default=False, description=(
        "Run one NCCL all-reduce over every node before any rank starts "
        "(docs/preflight.md); the script's --skip-preflight turns it off."))
    nccl_min_busbw_gbps: float = Field(default=0.0, ge=0, description=(
        "Fail the NCCL check below this all-reduce bus bandwidth (GB/s); 0: no minimum."))


class RouterSettings(_Strict):
    """Where sglang-router comes from when --dp N spans nodes as replicas, and its policy."""

    source: Literal["image", "venv", "none"] = Field(default="image", description=(
        "Where sglang-router runs from when --dp spans nodes as replicas: image (the "
        "serving image, docker/podman), venv (router.venv), none (replicas refused)."))
    venv: str = Field(default="", description=(
        "Absolute path of a venv with sglang-router, on storage every node sees; for "
        "source venv."))
    policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = Field(
        default="cache_aware", description="How the router picks a replica.")

    @field_validator("venv")
    @classmethod
    def _venv(cls, venv: str) -> str:
        return _absolute_path(venv, "router.venv", "on shared storage", optional=True)


class ClusterProfile(_Strict):
    """One cluster's settings: SLURM, fabric, container, paths and pre-flight."""

    name: str = Field(default=DEFAULT_PROFILE_NAME, description=(
        "Profile name, shown in the script's header; default: the file name."))
    description: str = Field(default="", description="One line for `profiles list`.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "the profile name")

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return _no_newlines(value, "description")
    extends: str = Field(default="", description=(
        "A profile this one builds on: a built-in name or a YAML path (relative to this "
        "file). Mappings merge key by key; lists and values replace."))
    template_dir: str = Field(default="", description=(
        "Directory searched before the built-in templates, to replace single partials "
        "(e.g. partials/fabric_tcp.sh.j2); then SLURM_SGLANG_TEMPLATE_DIR, then the "
        "built-ins."))
    sglang_version: str = Field(default="", description=(
        "sglang version on the cluster, for the offline flag checks; empty: the newest "
        "known."))

    @field_validator("template_dir")
    @classmethod
    def _template_dir(cls, value: str) -> str:
        if value:
            template_directory(value)
        return value
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
        return ProfileSource(path.stem, str(path), _read_profile_text(path))
    resource = resources.files(BUILTIN_PROFILE_PACKAGE).joinpath(f"{name_or_path}.yaml")
    if not resource.is_file():
        known = ", ".join(builtin_profile_names())
        raise ProfileError(
            f"--cluster {name_or_path}: no built-in profile of that name (known: {known}); "
            "or give a path to a YAML file"
        )
    return ProfileSource(name_or_path, f"<built-in {name_or_path}.yaml>", resource.read_text())


# A profile is a page of settings: these refuse, before anything is expanded, the documents
# that make PyYAML take minutes and gigabytes (aliases of aliases) or overflow its recursion.
MAX_PROFILE_BYTES = 1 << 20
MAX_PROFILE_ALIASES = 100
MAX_PROFILE_DEPTH = 100
MAX_PROFILE_VALUES = 100_000


def _read_profile_text(path: Path) -> str:
    """The file's text, refused when too large or not UTF-8."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_PROFILE_BYTES + 1)
    except OSError as error:
        raise ProfileError(f"--cluster {path}: cannot read it: {error.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES // 1024} KiB; a profile is "
                           "a page of settings")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ProfileError(f"{path}:{line}: not UTF-8 text (byte {error.start}); save the "
                           "profile as UTF-8") from None


def _check_yaml_limits(source: ProfileSource) -> None:
    """Count aliases and nesting from PyYAML's tokens, which expand nothing."""
    if len(source.text.encode("utf-8", "surrogatepass")) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{source.path}: larger than {MAX_PROFILE_BYTES // 1024} KiB")
    opening = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
               yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)
    closing = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    aliases = depth = 0
    try:
        for token in yaml.scan(source.text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > MAX_PROFILE_ALIASES:
                    raise ProfileError(
                        f"{source.path}:{token.start_mark.line + 1}: more than "
                        f"{MAX_PROFILE_ALIASES} YAML aliases (*name); write the values out")
            elif isinstance(token, opening):
                depth += 1
                if depth > MAX_PROFILE_DEPTH:
                    raise ProfileError(
                        f"{source.path}:{token.start_mark.line + 1}: nested more than "
                        f"{MAX_PROFILE_DEPTH} levels deep")
            elif isinstance(token, closing):
                depth -= 1
        # Fewer aliases can still nest: 8 lines of 9 aliases each expand to 9**9 values.
        # Composing shares an alias's node instead of copying it; count the copies here.
        root = yaml.compose(source.text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # _parse_yaml names the syntax error with its line
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a node that contains itself counts once
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    if root is not None and expanded(root) > MAX_PROFILE_VALUES:
        raise ProfileError(f"{source.path}: its aliases expand to more than "
                           f"{MAX_PROFILE_VALUES} values; write the values out")


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
    _check_yaml_limits(source)
    try:
        data = yaml.safe_load(source.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        # One line per problem: PyYAML's own text spans several, with source excerpts.
        problem = getattr(exc, "problem", None) or type(exc).__name__
        context = getattr(exc, "context", None)
        context_mark = getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} at line {context_mark.line + 1})"
        raise ProfileError(f"{source.path}{where}: not valid YAML: {problem}") from exc
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
