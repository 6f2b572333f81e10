"""Rendering: a cluster profile becomes a frozen template context, then a bash script.

Templates only place values; every decision is made here, in Python. Values reach the script
through one filter, ``q`` (shlex.quote), so quoting happens exactly once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import math
import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from slurm_sglang import __version__
from slurm_sglang.errors import UserInputError
from slurm_sglang.launch_plan import LATEST_KNOWN, SCRIPT_FLAGS
from slurm_sglang.profile import (
    ClusterProfile,
    ContainerSettings,
    FabricSettings,
    RouterSettings,
    template_directory,
)

# The repo's top-level templates/, which pyproject.toml installs under this package name.
BUILTIN_TEMPLATE_PACKAGE = "slurm_sglang.templates"
TEMPLATE_DIR_ENV = "SLURM_SGLANG_TEMPLATE_DIR"
MAIN_TEMPLATE = "run.sbatch.j2"
PACKAGE_DIR = Path(__file__).resolve().parent
# What the script runs beside itself, in SUPPORT_DIR_NAME/ next to it (docs/architecture.md).
SUPPORT_DIR_NAME = "slurm-sglang"
SUPPORT_FILES = ("launch_plan.py", "preflight_nccl.py", "stage_model.py",
                 "data/sglang_flags_*.json")
DEFAULT_IMAGE_NAME = "sglang-serve-latest.tar.gz"

# enroot runs through pyxis and apptainer/none start processes directly; podman shares docker's.
RUNTIME_PARTIALS = {
    "docker": "docker",
    "podman": "docker",
    "enroot": "enroot",
    "apptainer": "apptainer",
    "none": "none",
}


class RenderError(UserInputError):
    """A template that cannot be rendered (missing partial, undefined value): the profile's or
    the override directory's templates, or an install without the built-in ones."""


@dataclass(frozen=True)
class RenderContext:
    """Everything a template may place; built from the profile, never read from globals."""

    version: str
    profile_name: str
    runtime: str
    runtime_partial: str
    fabric_kind: str
    gpus_per_node: int
    sbatch_directives: tuple[str, ...]
    container_mount: str
    workspace: str
    logs_subdir: str
    prometheus_targets_dir: str
    preflight_check_gpus: bool
    preflight_min_free_disk_gb: str
    preflight_min_free_disk_kb: int
    preflight_nccl: bool
    preflight_nccl_min_busbw_gbps: str
    sglang_version: str
    container: ContainerSettings
    fabric: FabricSettings
    router: RouterSettings
    stage: StageContext
    # The constants the script's flags fall back to, by name (flag_defaults).
    flag_defaults: Mapping[str, str]


@dataclass(frozen=True)
class StageContext:
    """Model staging as the script's stage partial takes it (sizes in bytes)."""

    margin_bytes: int
    limit_bytes: int
    checksum: bool


def sbatch_directives(profile: ClusterProfile, nodes: int | None = None) -> tuple[str, ...]:
    """The #SBATCH lines the profile asks for, in a stable order."""
    slurm = profile.slurm
    lines = ["--job-name=sglang"]
    if nodes:
        lines.append(f"--nodes={nodes}")
    for option, value in (
        ("partition", slurm.partition),
        ("account", slurm.account),
        ("qos", slurm.qos),
        ("time", slurm.time),
        ("constraint", slurm.constraint),
    ):
        if value:
            lines.append(f"--{option}={value}")
    if slurm.gpus_per_node and slurm.gres_style == "gpus-per-node":
        lines.append(f"--gpus-per-node={slurm.gpus_per_node}")
    elif slurm.gpus_per_node and slurm.gres_style == "gres":
        lines.append(f"--gres=gpu:{slurm.gpus_per_node}")
    lines.append("--ntasks-per-node=1")
    if slurm.exclusive:
        lines.append("--exclusive")
    if slurm.requeue:
        lines.append("--requeue")
    lines.extend(slurm.extra_directives)
    return tuple(lines)


def flag_defaults(profile: ClusterProfile) -> dict[str, str]:
    """What the script's flags fall back to (its `declare -rx` constants, launch_plan.py's
    `$NAME` defaults), from the profile; `submit` reads its flags against the same."""
    return {
        "CONTAINER_RUNTIME": profile.container.runtime,
        "PROFILE_GPUS_MODE": profile.container.gpus,
        "DEFAULT_IMAGE": profile.container.image or DEFAULT_IMAGE_NAME,
        "DEFAULT_CONTAINER_MOUNT": profile.paths.container_mount,
        "DEFAULT_WORKSPACE": profile.paths.workspace,
        "PROFILE_ROUTER_POLICY": profile.router.policy,
        "DEFAULT_STAGE_MODEL": profile.paths.local_model_dir,
    }


def script_argv(values: Mapping[str, str]) -> list[str]:
    """The script's flags for these values (by variable; '' leaves a flag out, a switch is
    given by 1) as --flag=value, which never takes the next word (bare --profile does)."""
    argv = []
    for flag in SCRIPT_FLAGS:
        value = values.get(flag.var, "") if flag.var else ""
        if flag.metavar and value:
            argv.append(f"{flag.names[-1]}={value}")
        elif not flag.metavar and value == "1":
            argv.append(flag.names[-1])
    return argv


def build_context(profile: ClusterProfile, nodes: int | None = None) -> RenderContext:
    """Turn a validated profile into the frozen context the templates read."""
    return RenderContext(
        version=__version__,
        profile_name=profile.name,
        runtime=profile.container.runtime,
        runtime_partial=RUNTIME_PARTIALS[profile.container.runtime],
        fabric_kind=profile.fabric.kind,
        gpus_per_node=profile.slurm.gpus_per_node,
        sbatch_directives=sbatch_directives(profile, nodes),
        container_mount=profile.paths.container_mount,
        workspace=profile.paths.workspace,
        logs_subdir=profile.paths.logs,
        prometheus_targets_dir=profile.paths.prometheus_targets_dir,
        preflight_check_gpus=profile.preflight.check_gpus and profile.preflight.enabled,
        preflight_min_free_disk_gb=f"{profile.preflight.min_free_disk_gb:.1f}",
        # GiB as whole KiB, rounded up: the script compares integers.
        preflight_min_free_disk_kb=math.ceil(profile.preflight.min_free_disk_gb * 1048576),
        preflight_nccl=profile.preflight.nccl and profile.preflight.enabled,
        preflight_nccl_min_busbw_gbps=f"{profile.preflight.nccl_min_busbw_gbps:g}",
        sglang_version=profile.sglang_version or LATEST_KNOWN,
        container=profile.container,
        fabric=profile.fabric,
        router=profile.router,
        stage=StageContext(
            margin_bytes=math.ceil(profile.paths.local_model_margin_gb * 2**30),
            limit_bytes=math.ceil(profile.paths.local_model_limit_gb * 2**30),
            checksum=profile.paths.local_model_checksum,
        ),
        flag_defaults=flag_defaults(profile),
    )


@functools.cache
def builtin_template_dir() -> Path:
    """The built-in templates' directory, found through the import system.

    A wheel holds them in slurm_sglang/templates/; an editable install's finder maps that
    package name to the checkout's templates/. Asking the import system serves both alike.
    """
    try:
        folder = resources.files(BUILTIN_TEMPLATE_PACKAGE)
    except ModuleNotFoundError as exc:
        # An editable install made before templates/ became a package, or a bare PYTHONPATH.
        raise RenderError(
            f"the built-in templates ({BUILTIN_TEMPLATE_PACKAGE}) are not installed: "
            "run `pip install -e .` in the checkout, or install the wheel"
        ) from exc
    # Jinja's FileSystemLoader reads real files; a package inside a zip archive has none.
    if not isinstance(folder, Path):
        raise RenderError(f"{BUILTIN_TEMPLATE_PACKAGE} is not a directory on disk: {folder}")
    return folder


@dataclass(frozen=True)
class TemplateSettings:
    """Where templates come from besides the profile, and where compiled ones are kept.

    Passed to the renderer explicitly: it reads no environment. override_dirs come after the
    profile's template_dir and before the built-ins; cache_dir None keeps nothing on disk."""

    override_dirs: tuple[Path, ...] = ()
    cache_dir: Path | None = None


# The built-in templates (and the profile's template_dir) only, nothing cached on disk.
BUILTIN_TEMPLATES = TemplateSettings()


def template_settings_from(environ: Mapping[str, str], home: Path) -> TemplateSettings:
    """The settings the CLI reads from its environment: SLURM_SGLANG_TEMPLATE_DIR (colon-
    separated override directories) and the cache under $XDG_CACHE_HOME, else HOME/.cache."""
    overrides = []
    for part in environ.get(TEMPLATE_DIR_ENV, "").split(os.pathsep):
        if not part:
            continue
        try:
            overrides.append(template_directory(part))
        except ValueError as error:
            raise RenderError(f"{TEMPLATE_DIR_ENV}: {error}") from None
    cache_home = Path(environ.get("XDG_CACHE_HOME") or home / ".cache")
    return TemplateSettings(tuple(overrides), cache_home / "slurm-sglang" / "jinja")


def template_search_path(profile: ClusterProfile,
                         settings: TemplateSettings = BUILTIN_TEMPLATES) -> list[Path]:
    """Admin override directories first (the profile's, then the settings'), built-ins last."""
    paths: list[Path] = []
    if profile.template_dir:
        paths.append(Path(profile.template_dir).expanduser())
    for directory in settings.override_dirs:
        # A directory that is not there would render the built-ins without a word.
        if not directory.is_dir():
            raise RenderError(f"TemplateSettings.override_dirs: {directory} is not a directory")
        paths.append(directory)
    paths.append(builtin_template_dir())
    return paths


def make_environment(search_path: list[Path], cache_dir: Path | None = None
                     ) -> jinja2.Environment:
    """One Jinja environment: StrictUndefined, trimmed blocks, and the single quoting filter."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(path) for path in search_path]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        # bash's ${#array[@]} would open a Jinja comment; templates comment with {## ... ##}.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    # Compiled templates are kept between runs, keyed by their source's checksum: compiling
    # the whole script costs more than everything else `render` does. The cache is an
    # optimisation only: one that cannot be made is skipped.
    if cache_dir is not None:
        with contextlib.suppress(OSError):
            cache_dir.mkdir(parents=True, exist_ok=True)
            env.bytecode_cache = jinja2.FileSystemBytecodeCache(str(cache_dir))
    return env


def render_script(profile: ClusterProfile, nodes: int | None = None,
                  settings: TemplateSettings = BUILTIN_TEMPLATES) -> str:
    """Render run.sbatch for this profile: a function of its arguments and the template files."""
    search = template_search_path(profile, settings)
    env = make_environment(search, settings.cache_dir)
    try:
        template = env.get_template(MAIN_TEMPLATE)
        text = template.render(ctx=build_context(profile, nodes))
    except jinja2.TemplateNotFound as exc:
        searched = ", ".join(str(path) for path in search)
        raise RenderError(f"template {exc.name} not found in {searched}") from exc
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or exc.name or MAIN_TEMPLATE}:{exc.lineno}"
        raise RenderError(f"{where}: template syntax error: {exc.message}; fix the "
                          "template (an override in template_dir or "
                          f"{TEMPLATE_DIR_ENV})") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{_template_line(exc, search)}: template error: {exc.message}; "
                          "a template's values are ctx's fields (RenderContext in "
                          "slurm_sglang/render.py), and a macro sees only its arguments"
                          ) from None
    return text


def _template_line(exc: BaseException, search: list[Path]) -> str:
    """FILE:LINE of the innermost template frame an error passed through (Jinja rewrites
    its tracebacks to name the template file), else the main template's name."""
    roots = [path.resolve() for path in search]
    where = MAIN_TEMPLATE
    trace = exc.__traceback__
    while trace is not None:
        filename = trace.tb_frame.f_code.co_filename
        if any(Path(filename).resolve().is_relative_to(root) for root in roots):
            where = f"{filename}:{trace.tb_lineno}"
        trace = trace.tb_next
    return where


def write_script(text: str, path: Path) -> None:
    """Write a rendered script and make it executable, its support files beside it.

    A regular file (or a new one) is replaced atomically. Anything else that exists is never
    replaced: a device or a FIFO (``-o /dev/null``, ``-o /dev/stdout``) is written in place,
    without support files; a directory is refused. Renaming a temporary file over /dev/null,
    run as root, once left the machine without its null device.
    """
    try:
        info: os.stat_result | None = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise UserInputError(f"-o: cannot reach {path}: {error.strerror}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UserInputError(f"-o: {path} is a directory: name the script, e.g. {path}/run.sbatch")
    if info is not None and not stat.S_ISREG(info.st_mode):
        _write_in_place(text, path, info)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_support_dir(path.parent / SUPPORT_DIR_NAME)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(path)
    except OSError as error:
        raise UserInputError(f"-o: cannot write {error.filename or path}: {error.strerror}; "
                             "choose a directory you can write") from None


def _write_in_place(text: str, path: Path, info: os.stat_result) -> None:
    """Write into an existing device or FIFO, which stays what it is."""
    flags = os.O_WRONLY
    if stat.S_ISFIFO(info.st_mode):
        # Nobody reading a FIFO would block the render forever: refuse instead.
        flags |= os.O_NONBLOCK
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        reason = "no process reads it" if error.errno == errno.ENXIO else error.strerror
        raise UserInputError(f"-o: cannot write {path}: {reason}") from None
    try:
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "w", encoding="utf-8", closefd=False) as target:
            target.write(text)
    finally:
        os.close(descriptor)


def support_digest() -> str:
    """Twelve hex digits of the support files' SHA-256: one name per version of them."""
    digest = hashlib.sha256()
    for relative, text in support_files():
        digest.update(f"{relative}\0{text}\0".encode())
    return digest.hexdigest()[:12]


def support_files() -> list[tuple[str, str]]:
    """The files the script runs beside itself, as (path under SUPPORT_DIR_NAME/, text)."""
    return [
        (source.relative_to(PACKAGE_DIR).as_posix(), source.read_text(encoding="utf-8"))
        for pattern in SUPPORT_FILES
        for source in sorted(PACKAGE_DIR.glob(pattern))
    ]


def write_support_dir(directory: Path) -> None:
    """Copy the files the script runs (launch_plan.py, the NCCL check, the flag tables)."""
    if directory.is_symlink() and directory.resolve() == PACKAGE_DIR:
        return  # the repository's sbatch/slurm-sglang is the package itself
    for relative, text in support_files():
        target = directory / relative
        if target.is_file() and target.read_text(encoding="utf-8", errors="replace") == text:
            continue  # as it was: python's compiled launch_plan.py beside it stays valid
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
