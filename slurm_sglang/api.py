"""The public Python API: everything a CLI verb does is one call here that returns typed
data; each result has ``to_dict`` (what ``--json`` prints) and a text form. Usable from
notebooks and scripts (docs/python-api.md).

The job's life (view, follow, logs, metrics, tunnel, cancel) lives in control.py, its results
in views.py; both are exported from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurm_sglang.bench_job import bench
from slurm_sglang.control import (
    cancel,
    check_job_files,
    endpoint,
    find_job,
    follow,
    hold_tunnel,
    job_view,
    list_jobs,
    log_path,
    logs,
    metrics,
    open_transport,
    tunnel,
    wait_ready,
    watch,
)
from slurm_sglang.errors import (
    ClusterError,
    JobError,
    SlurmSglangError,
    TransportError,
    UserInputError,
)
from slurm_sglang.jobs import JobRecord, JobStatus
from slurm_sglang.profile import load_profile
from slurm_sglang.render import BUILTIN_TEMPLATES, TemplateSettings
from slurm_sglang.serve_check import (
    NO_API_KEY_WARNING,
    CheckReport,
    check,
    with_parser_verdicts,
)
from slurm_sglang.views import (
    Cancelled,
    Endpoint,
    Frame,
    JobList,
    JobView,
    MetricsFrame,
    MetricsView,
    StatusFrame,
    TunnelEnd,
    phase_printer,
)

# spec and plan build pydantic models at import: `render` needs neither, so they load on use.
if TYPE_CHECKING:
    from slurm_sglang.image import SavedImage
    from slurm_sglang.sandbox.layout import SandboxInfo
    from slurm_sglang.smoke import SmokeReport
    from slurm_sglang.transport import Transport

__all__ = [
    "NO_API_KEY_WARNING",
    "Cancelled",
    "CheckReport",
    "ClusterError",
    "Endpoint",
    "Frame",
    "JobError",
    "JobList",
    "JobRecord",
    "JobStatus",
    "JobView",
    "MetricsFrame",
    "MetricsView",
    "ProfileList",
    "ProfileValidation",
    "ProfileView",
    "SlurmSglangError",
    "StatusFrame",
    "TemplateSettings",
    "TransportError",
    "TunnelEnd",
    "UserInputError",
    "bench",
    "cancel",
    "check",
    "check_job_files",
    "endpoint",
    "find_job",
    "follow",
    "hold_tunnel",
    "job_view",
    "list_jobs",
    "log_path",
    "logs",
    "metrics",
    "phase_printer",
    "preflight_nccl",
    "profile_init",
    "profile_schema",
    "profiles",
    "render",
    "render_to",
    "sandbox_demo",
    "sandbox_down",
    "sandbox_status",
    "sandbox_up",
    "save_image",
    "show_profile",
    "smoke",
    "submit",
    "tunnel",
    "validate_profiles",
    "wait_ready",
    "watch",
]


def render(cluster: str = "default", nodes: int | None = None,
           templates: TemplateSettings = BUILTIN_TEMPLATES) -> str:
    """Render run.sbatch for a cluster profile (built-in name or YAML path); templates names
    override directories and a compile cache (the CLI reads them from the environment)."""
    from slurm_sglang.render import render_script

    return render_script(load_profile(cluster), nodes, templates)


def render_to(path: Path, cluster: str = "default", nodes: int | None = None,
              templates: TemplateSettings = BUILTIN_TEMPLATES) -> Path:
    """Render run.sbatch and write it to ``path`` with its support files; returns the path."""
    from slurm_sglang.render import write_script

    write_script(render(cluster, nodes, templates), path)
    return path


# ---- the image tarball ------------------------------------------------------------------------


def save_image(
    reference: str,
    output: Path,
    cluster: str = "default",
    *,
    container_cli: str = "",
    pull: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SavedImage:
    """Save an image as the tarball run.sbatch loads, with the profile's container CLI.

    Pulls reference only when it is missing here (always with pull); see docs/image.md."""
    from slurm_sglang.image import save_image as save

    return save(reference, output, load_profile(cluster), container_cli=container_cli,
                pull=pull, force=force, progress=progress)


def submit(
    sglang_args: Sequence[str],
    cluster: str = "default",
    nodes: int | None = None,
    *,
    time: str = "",
    partition: str = "",
    name: str = "sglang",
    image: str = "",
    port: int = 30000,
    health_timeout: int = 1800,
    workspace: str = "",
    ssh: str = "",
    trust_new_host: bool = False,
    env: Mapping[str, str] | None = None,
    api_key_file: str = "",
    torch_profile: str | None = None,
    stage_model: str = "",
    templates: TemplateSettings = BUILTIN_TEMPLATES,
    transport: Transport | None = None,
) -> JobRecord:
    """Validate, render and submit; records the job and returns its record. Raises on bad input.

    env adds variables to the job's environment (over SSH never on a command line);
    api_key_file names a file on the cluster's shared storage holding the server's API key;
    torch_profile is the script's --profile: "" for the seed's bare form (the workspace's
    sglang_profile), else a directory (relative to here, or to the workspace over SSH);
    stage_model is the script's --stage-model: a node-local directory, or "none"; transport,
    with ssh, is an open one to that host (tests pass a fake scheduler's)."""
    from slurm_sglang.jobs import save_record
    from slurm_sglang.launch_plan import (
        IMAGE_FILE_SUFFIXES,
        gpus_per_node_of,
        parse_script_argv,
        requested_gpus,
    )
    from slurm_sglang.render import flag_defaults, render_script, script_argv
    from slurm_sglang.submit import SubmitRequest, submit_local, submit_remote, time_minutes

    if time:
        time_minutes(time)
    profile = load_profile(cluster)
    workspace = workspace or profile.paths.workspace or str(Path.cwd())
    torch_dir = "" if torch_profile is None else _profile_dir(torch_profile, workspace, bool(ssh))
    # The script's own flags from its table, checked as the script checks them; the files
    # they name only here (over SSH the script checks them where they are).
    script_args = script_argv({"WORKSPACE": workspace, "PORT": str(port),
                               "HEALTH_TIMEOUT": str(health_timeout), "IMAGE": image,
                               "API_KEY_FILE": api_key_file, "STAGE_MODEL": stage_model,
                               "TORCH_PROFILE_DIR": torch_dir})
    # Against the environment the job will have: sbatch exports this shell's (a remote job gets
    # the login shell's, unknown here) with env over it, and the script's constants over both.
    job_environ = {**({} if ssh else os.environ), **(env or {})}
    parse_script_argv(script_args, {**job_environ, **flag_defaults(profile),
                                    "PWD": str(Path.cwd())}, local=not ssh)
    gpus = requested_gpus(job_environ.get("GPUS", ""))
    # The cheap checks first: sglang's own parser (seconds) runs once everything else passed.
    quick = check(sglang_args, profile, nodes, port=port, health_timeout=health_timeout,
                  image=image,
                  gpus_per_node=gpus_per_node_of(gpus, profile.slurm.gpus_per_node))
    if quick.problems:
        raise UserInputError("; ".join(quick.problems))
    if not ssh:
        image_file = image.endswith(IMAGE_FILE_SUFFIXES)
        if image_file and not Path(image).is_file():
            raise UserInputError(f"--image: {image} does not exist (make it with: python -m "
                                 f"slurm_sglang image save REF -o {image})")
    report = with_parser_verdicts(quick)
    if report.problems:
        raise UserInputError("; ".join(report.problems))
    script_args += ["--", *report.spec.sglang_args]
    request = SubmitRequest(
        profile=profile, cluster=cluster,
        script_text=render_script(profile, report.nodes, templates),
        script_args=tuple(script_args), nodes=report.nodes, workspace=workspace, job_name=name,
        time=time, partition=partition, env=dict(env or {}),
    )
    if ssh and transport is not None:
        record = submit_remote(request, transport, ssh)
    elif ssh:
        with open_transport(ssh, trust_new_host) as opened:
            record = submit_remote(request, opened, ssh)
    else:
        record = submit_local(request)
    save_record(record)
    return record


def _profile_dir(torch_profile: str, workspace: str, remote: bool) -> str:
    """--profile's directory as an absolute path: the job starts elsewhere than this shell."""
    if not torch_profile:
        return f"{workspace}/sglang_profile"
    if torch_profile.startswith("/"):
        return torch_profile
    return f"{workspace}/{torch_profile}" if remote else str(Path.cwd() / torch_profile)


def _local_url(view: JobView, verb: str) -> str:
    """A ready local job's URL; a job elsewhere is reached through `tunnel`."""
    if view.status is not JobStatus.READY or not view.endpoint:
        raise JobError(f"job {view.record.ref} is {view.status.value}, not ready; give a URL or "
                       "wait for `endpoint` to answer")
    if view.record.host:
        raise UserInputError(
            f"job {view.record.ref} runs on {view.record.host}: open `python -m slurm_sglang "
            f"tunnel {view.record.ref}` and {verb} its URL")
    return str(view.endpoint["url"])


def smoke(target: str | None = None, *, model: str | None = None, api_key: str | None = None,
          timeout: float = 60.0) -> SmokeReport:
    """The seed's API checks against a URL, or a ready local job (JOB, HOST:JOB; None: the
    newest); api_key for a server started with one."""
    from slurm_sglang.smoke import run_smoke

    url = target
    if url is None or not url.startswith(("http://", "https://")):
        url = _local_url(job_view(find_job(target)), "smoke")
    return run_smoke(url, model=model, api_key=api_key, timeout=timeout)


def preflight_nccl(cluster: str = "default", script_args: Sequence[str] = (),
                   templates: TemplateSettings = BUILTIN_TEMPLATES) -> int:
    """Inside an allocation: the rendered script's NCCL check over its nodes; its exit code."""
    from slurm_sglang.preflight_launch import run_nccl_preflight

    return run_nccl_preflight(load_profile(cluster), script_args, templates)


# ---- cluster profiles -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileList:
    """The built-in profiles: name and description of each."""

    descriptions: dict[str, str]

    def to_dict(self) -> list[dict[str, str]]:
        """As `profiles list --json` prints it."""
        return [{"name": name, "description": text} for name, text in self.descriptions.items()]

    def text(self) -> str:
        """One line a profile."""
        return "\n".join(f"{name:<14} {text}" for name, text in self.descriptions.items())


def profiles() -> ProfileList:
    """The built-in profiles."""
    from slurm_sglang.profile import builtin_profile_names

    return ProfileList({name: load_profile(name).description for name in builtin_profile_names()})


@dataclass(frozen=True)
class ProfileView:
    """A profile resolved: extends applied, every default filled in."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """As `profiles show --json` prints it."""
        return self.data

    def text(self) -> str:
        """The profile as YAML."""
        import yaml

        return yaml.safe_dump(self.data, sort_keys=False).rstrip("\n")


def show_profile(name_or_path: str) -> ProfileView:
    """A profile as the renderer sees it: extends resolved, every default filled in."""
    return ProfileView(load_profile(name_or_path).model_dump(mode="json"))


@dataclass(frozen=True)
class ProfileValidation:
    """Each file's problems, with their YAML lines (an empty list: the file is valid)."""

    problems: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        """Every file is valid."""
        return not any(self.problems.values())

    def to_dict(self) -> dict[str, list[str]]:
        """As `profiles validate --json` prints it."""
        return dict(self.problems)

    def text(self) -> str:
        """Each problem on its line, or `FILE: ok`."""
        return "\n".join(line for path, found in self.problems.items()
                         for line in (found or [f"{path}: ok"]))


def validate_profiles(files: Sequence[str]) -> ProfileValidation:
    """Every problem of each profile file, with its YAML line."""
    from slurm_sglang.profile import validate_profile_file

    return ProfileValidation({path: validate_profile_file(path) for path in files})


def profile_init(from_profile: str = "default", output: Path | None = None) -> str:
    """A commented starting profile; written to output when given (never over a file)."""
    from slurm_sglang.profile_init import render_profile_init

    text = render_profile_init(from_profile)
    if output is not None:
        try:
            with open(output, "x", encoding="utf-8") as sink:
                sink.write(text)
        except FileExistsError:
            raise UserInputError(f"{output} exists; remove it or choose another name") from None
    return text


def profile_schema() -> dict[str, Any]:
    """The JSON Schema of a profile file, for editors."""
    from slurm_sglang.profile import profile_schema as schema

    return schema()


# ---- the local sandbox (root) -----------------------------------------------------------------


def sandbox_up(nodes: int = 4) -> SandboxInfo:
    """Bring the local multi-node SLURM sandbox up (or find it up); docs/sandbox.md."""
    from slurm_sglang.sandbox import cluster

    return cluster.sandbox_up(nodes=nodes)


def sandbox_down() -> None:
    """Take the sandbox down, removing whatever its `up` started."""
    from slurm_sglang.sandbox import cluster

    cluster.sandbox_down()


def sandbox_status() -> SandboxInfo | None:
    """The sandbox when it is up, else None."""
    from slurm_sglang.sandbox import cluster

    return cluster.sandbox_status()


def sandbox_demo(nodes: int = 2) -> int:
    """Serve across the sandbox's nodes, chat once, release; 0 when it answered."""
    from slurm_sglang.sandbox.demo import run_demo

    return run_demo(nodes=nodes)
