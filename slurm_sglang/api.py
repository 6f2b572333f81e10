"""The public Python API: what the CLI wraps, usable from notebooks and scripts."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slurm_sglang.jobs import JobProgress, JobRecord, JobStatus
from slurm_sglang.profile import ClusterProfile, load_profile

# spec and plan build pydantic models at import: `render` needs neither, so they load on use.
if TYPE_CHECKING:
    from slurm_sglang.bench import BenchReport, BenchSettings, Runner
    from slurm_sglang.image import SavedImage
    from slurm_sglang.in_job import JobPlace
    from slurm_sglang.launch_plan import Plan
    from slurm_sglang.metrics import TargetReading
    from slurm_sglang.spec import Parallelism, ServeSpec
    from slurm_sglang.transport import Transport, Tunnel
    from slurm_sglang.transport.base import CommandResult


@dataclass(frozen=True)
class CheckReport:
    """What `check` found: the rewritten argv, notes, problems, and sglang's own verdicts."""

    spec: ServeSpec
    profile: ClusterProfile
    nodes: int
    gpus_per_node: int
    parallelism: Parallelism
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parser_verdicts: list[str] = field(default_factory=list)
    plan: Plan | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing would stop the job."""
        return not self.problems


def render(cluster: str = "default", nodes: int | None = None) -> str:
    """Render run.sbatch for a cluster profile (built-in name or YAML path)."""
    from slurm_sglang.render import render_script

    return render_script(load_profile(cluster), nodes)


def render_to(path: Path, cluster: str = "default", nodes: int | None = None) -> Path:
    """Render run.sbatch and write it to ``path``; returns the path."""
    from slurm_sglang.render import write_script

    write_script(render(cluster, nodes), path)
    return path


def _parser_verdicts(argv: Sequence[str], nnodes: int, port: int) -> tuple[list[str], list[str]]:
    """sglang's own parser on the head's and a worker's argv: (verdict lines, problems)."""
    from slurm_sglang.launch_plan import rank_argv
    from slurm_sglang.sglang_parser import check_with_sglang

    # The head's address is a placeholder: sglang only parses it here.
    ranks = {"head (rank 0)": list(rank_argv(argv, nnodes, 0, "10.0.0.1", 20000, port))}
    if nnodes > 1:
        ranks["worker (rank 1)"] = list(rank_argv(argv, nnodes, 1, "10.0.0.1", 20000, port))
    lines, problems = [], []
    for verdict in check_with_sglang(ranks):
        lines.append(f"sglang parser, {verdict.label}: {verdict.status}"
                     + (f": {verdict.message}" if verdict.message else ""))
        if verdict.status == "error":
            problems.append(f"sglang's parser refuses the {verdict.label} argv: {verdict.message}")
    return lines, problems


def check(
    sglang_args: Sequence[str],
    cluster: str = "default",
    nodes: int | None = None,
    *,
    gpus_per_node: int | None = None,
    sglang_parser: bool = False,
    **settings: object,
) -> CheckReport:
    """Validate a serve request against a profile without touching SLURM.

    With sglang_parser, sglang's own parser also reads every rank's argv where it is installed."""
    from slurm_sglang.launch_plan import (
        LATEST_KNOWN,
        LaunchRequest,
        PlanError,
        launch,
        rewrite_argv,
    )
    from slurm_sglang.sglang_flags import check_known_flags
    from slurm_sglang.spec import build_spec, check_parallelism, nodes_needed

    profile = load_profile(cluster)
    version = profile.sglang_version or LATEST_KNOWN
    rewritten = rewrite_argv(sglang_args, version)
    spec = build_spec(rewritten.argv, nodes=nodes, **settings)
    parallelism = spec.parallelism
    if gpus_per_node is None:
        gpus_per_node = profile.slurm.gpus_per_node
    chosen = nodes or nodes_needed(parallelism, gpus_per_node)
    # Too few nodes is the placement's refusal, with its arithmetic and the nodes to ask for:
    # the reason the script gives, first.
    problems = check_parallelism(parallelism, chosen, gpus_per_node)
    notes = list(rewritten.notes)
    for flag_problem in check_known_flags(spec.sglang_args, version):
        if flag_problem.severity == "error":
            problems.append(flag_problem.message)
        else:
            notes.append(flag_problem.message)
    placement: Plan | None = None
    server_argv: tuple[str, ...] = spec.sglang_args
    if not problems:
        request = LaunchRequest(spec.sglang_args, chosen, gpus_per_node, spec.port, version,
                                profile.router.source, profile.router.venv,
                                profile.container.runtime)
        try:
            launched = launch(request)
            placement, server_argv = launched.plan, launched.server_argv
        except PlanError as exc:
            problems.append(str(exc))
    verdicts: list[str] = []
    if sglang_parser and not problems and placement is not None:
        verdicts, parser_problems = _parser_verdicts(
            server_argv, len(placement.replicas[0].nodes), spec.port)
        problems.extend(parser_problems)
    return CheckReport(spec, profile, chosen, gpus_per_node, parallelism, problems, notes, verdicts,
                       plan=placement, warnings=_open_endpoint_warnings())


NO_API_KEY_WARNING = (
    "no API key (set SLURM_SGLANG_API_KEY, or give submit or the script --api-key-file FILE): "
    "the endpoint (sglang, or the router with replicas) is open to anyone on the cluster network")


def _open_endpoint_warnings() -> list[str]:
    """Without a key, sglang and the router serve anyone who reaches the node (issue 23, item 4);
    check only sees the environment, so a later --api-key-file is named as the way out."""
    import os

    return [] if os.environ.get("SLURM_SGLANG_API_KEY", "").strip() else [NO_API_KEY_WARNING]



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


# ---- the job's life: submit, follow, status, logs, endpoint, cancel ---------------------------


@dataclass(frozen=True)
class JobView:
    """A job as the user sees it: record, status, progress and endpoint."""

    record: JobRecord
    status: JobStatus
    queue_state: str | None
    progress: JobProgress
    endpoint: dict[str, object] | None

    @property
    def phase(self) -> str:
        """What the job is doing now: the events' phase while it runs, else its status."""
        if self.status is JobStatus.PENDING:
            return f"queued ({self.queue_state or 'PENDING'})"
        if self.status.finished or self.status is JobStatus.UNKNOWN:
            return str(self.status.value)
        return self.progress.phase

    @property
    def replicas(self) -> list[dict[str, object]]:
        """Each data-parallel replica's URL, nodes and state, from endpoint.json."""
        listed = (self.endpoint or {}).get("replicas")
        return [item for item in listed if isinstance(item, dict)] if isinstance(listed,
                                                                                 list) else []


def _open_transport(host: str, trust_new_host: bool = False) -> Transport:
    from slurm_sglang.transport import transport_for

    return transport_for(host or None, trust_new_host=trust_new_host)


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
) -> JobRecord:
    """Validate, render and submit; records the job and returns its record. Raises on bad input.

    env adds variables to the job's environment (over SSH never on a command line);
    api_key_file names a file on the cluster's shared storage holding the server's API key;
    torch_profile is the script's --profile: "" for the seed's bare form (the workspace's
    sglang_profile), else a directory (relative to here, or to the workspace over SSH);
    stage_model is the script's --stage-model: a node-local directory, or "none"."""
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.jobs import save_record
    from slurm_sglang.render import render_script
    from slurm_sglang.submit import SubmitRequest, submit_local, submit_remote, time_minutes

    if time:
        time_minutes(time)
    if stage_model and stage_model != "none" and not stage_model.startswith("/"):
        raise UserInputError(f"--stage-model: {stage_model!r} is not an absolute path (a "
                             "node-local directory, e.g. /local/nvme/models; none: no staging)")
    # The cheap checks first: sglang's own parser (seconds) runs once everything else passed.
    quick = check(sglang_args, cluster, nodes, port=port, health_timeout=health_timeout,
                  image=image)
    if quick.problems:
        raise UserInputError("; ".join(quick.problems))
    profile = quick.profile
    workspace = workspace or profile.paths.workspace or str(Path.cwd())
    if not ssh:
        if not Path(workspace).is_dir():
            raise UserInputError(f"--workspace: {workspace} is not a directory")
        image_file = image.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst", ".sqsh", ".sif"))
        if image_file and not Path(image).is_file():
            raise UserInputError(f"--image: {image} does not exist (make it with: python -m "
                                 f"slurm_sglang image save REF -o {image})")
        if api_key_file and not Path(api_key_file).is_file():
            raise UserInputError(f"--api-key-file: {api_key_file} does not exist")
        # The script refuses it too (over SSH only the script can see the file).
        if api_key_file and Path(api_key_file).stat().st_mode & 0o077:
            mode = Path(api_key_file).stat().st_mode & 0o777
            raise UserInputError(f"--api-key-file: {api_key_file} is readable by group or "
                                 f"others (mode {mode:o}): chmod 600 {api_key_file}")
    report = check(sglang_args, cluster, nodes, sglang_parser=True, port=port,
                   health_timeout=health_timeout, image=image)
    if report.problems:
        raise UserInputError("; ".join(report.problems))
    script_args: list[str] = ["--workspace", workspace, "--port", str(port),
                              "--health-timeout", str(health_timeout)]
    if image:
        script_args += ["--image", image]
    if api_key_file:
        script_args += ["--api-key-file", api_key_file]
    if stage_model:
        script_args.append(f"--stage-model={stage_model}")
    if torch_profile is not None:
        script_args.append(f"--profile={_profile_dir(torch_profile, workspace, bool(ssh))}")
    script_args += ["--", *report.spec.sglang_args]
    request = SubmitRequest(
        profile=profile, cluster=cluster, script_text=render_script(profile, report.nodes),
        script_args=tuple(script_args), nodes=report.nodes, workspace=workspace, job_name=name,
        time=time, partition=partition, env=dict(env or {}),
    )
    if ssh:
        with _open_transport(ssh, trust_new_host) as transport:
            record = submit_remote(request, transport, ssh)
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


def job_view(record: JobRecord, transport: Transport | None = None) -> JobView:
    """Read the job's queue state and its own status files into one view."""
    from slurm_sglang.jobs import read_progress, status_from
    from slurm_sglang.submit import queue_state

    own_transport = transport is None
    transport = transport or _open_transport(record.host)
    try:
        queue = queue_state(transport, record.job_id)
        check_job_files(transport, record.log_dir, ("state", "events.log", "endpoint.json"))
        state = _read_optional(transport, f"{record.log_dir}/state")
        events = _read_optional(transport, f"{record.log_dir}/events.log") or ""
        endpoint_text = _read_optional(transport, f"{record.log_dir}/endpoint.json")
    finally:
        if own_transport:
            transport.close()
    status = status_from(queue, state)
    endpoint = json.loads(endpoint_text) if endpoint_text and status is JobStatus.READY else None
    return JobView(record, status, queue, read_progress(events), endpoint)


def check_job_files(transport: Transport, log_dir: str, names: Sequence[str]) -> None:
    """Refuse a job directory, or a file in it, that is not this user's own.

    Job ids are predictable on a shared workspace: a directory another user made first, or a
    file or link planted in it, could send `tunnel` and `smoke` (with the API key) anywhere.
    The directory must be a real directory of the user's that no one else can write; each
    file that exists, a regular file of the user's.
    """
    from slurm_sglang.errors import UserInputError

    if log_dir == "~" or log_dir.startswith("~/"):
        log_dir = transport.home() + log_dir[1:]
    paths = [log_dir, *(f"{log_dir}/{name}" for name in names)]
    uid = transport.run(["id", "-u"]).stdout.strip()
    # No -L: a symbolic link is described as one, never followed.
    listing = transport.run(["stat", "-c", "%u:%a:%F:%n", "--", *paths], check=False).stdout
    seen: dict[str, tuple[str, int, str]] = {}
    for line in listing.splitlines():
        owner, mode, kind, name = [*line.split(":", 3), "", "", ""][:4]
        seen[name] = (owner, int(mode or "0", 8), kind)
    if log_dir not in seen:
        return
    for path in paths:
        if path not in seen:
            continue
        owner, permissions, kind = seen[path]
        wanted = "directory" if path == log_dir else "regular file"
        if kind.replace("empty ", "") != wanted:
            raise UserInputError(
                f"{path} is a {kind}, not a {wanted}: not read (someone may have planted it); "
                f"remove {log_dir} and resubmit")
        if owner != uid:
            raise UserInputError(
                f"{path} belongs to uid {owner}, not to you (uid {uid}): not read; another "
                f"user made it first on this workspace; submit with a --workspace of your own")
        if path == log_dir and permissions & 0o022:
            raise UserInputError(
                f"{path} is writable by group or others (mode {permissions:o}): not read; "
                f"chmod go-w {path}")


def _read_optional(transport: Transport, path: str) -> str | None:
    from slurm_sglang.transport import FileMissingError

    try:
        return transport.read_text(path)
    except FileMissingError:
        return None


def follow(
    record: JobRecord,
    on_change: Callable[[JobView], None],
    timeout: float | None = None,
    interval: float = 0.5,
) -> JobView:
    """Poll the job until it is ready or finished, calling on_change when its phase moves."""
    import time as clock

    deadline = None if timeout is None else clock.monotonic() + timeout
    last: tuple[object, ...] = ()
    with _open_transport(record.host) as transport:
        while True:
            view = job_view(record, transport)
            key = (view.status, view.progress.phase, view.queue_state)
            if key != last:
                on_change(view)
                last = key
            if view.status is JobStatus.READY or view.status.finished:
                return view
            if deadline is not None and clock.monotonic() > deadline:
                return view
            clock.sleep(interval)


def cancel(record: JobRecord, timeout: float = 60) -> JobView:
    """scancel the job and wait until SLURM has ended it and every rank has stopped."""
    import time as clock

    from slurm_sglang.submit import cancel_job

    with _open_transport(record.host) as transport:
        cancel_job(transport, record.job_id)
        deadline = clock.monotonic() + timeout
        view = job_view(record, transport)
        # SLURM forgetting the job is not enough: every node that started a rank must also
        # have said its rank ended, which its supervisor does after removing the containers.
        while (view.queue_state is not None or view.progress.nodes_not_ended) and (
                clock.monotonic() < deadline):
            clock.sleep(0.3)
            view = job_view(record, transport)
    return view


def log_path(record: JobRecord, node: str | None = None, rank: int | None = None) -> str:
    """The driver's log, or one rank's log picked by node name or rank number."""
    if node is None and rank is None:
        return record.driver_log
    with _open_transport(record.host) as transport:
        listing = transport.run(["ls", "-1", record.log_dir], check=False).stdout.split()
    for name in listing:
        parts = name.removesuffix(".log").split("-", 2)
        if len(parts) == 3 and parts[0] == "rank" and name.endswith(".log") and (
            (rank is not None and parts[1] == str(rank)) or (node is not None and parts[2] == node)
        ):
            return f"{record.log_dir}/{name}"
    wanted = f"node {node}" if node is not None else f"rank {rank}"
    from slurm_sglang.errors import UserInputError

    ranks = [name for name in listing if name.startswith("rank-")]
    raise UserInputError(f"no log for {wanted} in {record.log_dir} (have: {', '.join(ranks)})")


@contextlib.contextmanager
def tunnel(record: JobRecord, local_port: int = 0) -> Iterator[Tunnel]:
    """Forward 127.0.0.1:local_port (0: any free one) to the ready job's head, via its host."""
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.transport import open_tunnel

    with _open_transport(record.host) as transport:
        view = job_view(record, transport)
        if view.status is not JobStatus.READY or not view.endpoint:
            raise UserInputError(
                f"job {record.job_id} is {view.status.value}, not ready: nothing to tunnel to "
                f"(follow it with: python -m slurm_sglang status {record.job_id})"
            )
        head = str(view.endpoint.get("head_ip") or view.endpoint.get("head"))
        port = int(str(view.endpoint["port"]))
        with open_tunnel(transport, head, port, local_port) as forward:
            yield forward


def bench(
    target: str | None,
    types: Sequence[str] = ("throughput",),
    settings: BenchSettings | None = None,
    *,
    python: str | None = None,
    output_dir: Path | None = None,
    plot: Path | None = None,
    api_key: str | None = None,
    progress: Callable[[str], None] | None = None,
    client: str = "auto",
    client_mounts: Sequence[str] = (),
    client_env: Mapping[str, str] | None = None,
) -> BenchReport:
    """Benchmark a ready job (id, None: the newest) or a URL with sglang's own client.

    Runs `python -m sglang.benchmark.serving` once per point of each type. client "local" runs
    it here (python: one that imports sglang; a remote job is reached through a tunnel),
    "job" in the job's image on its head node inside its allocation (srun --overlap, over SSH
    for a remote job; client_mounts and client_env go into that container), "auto" here when
    sglang is importable here (or python is given), else in the job. Files go to output_dir,
    else the job's logs/<job>/bench/ (a local client of a remote job writes ./bench-results/<job>
    and copies them there; ./bench-results for a URL). The report says, per run, whether the
    validity gate passed.
    """
    from slurm_sglang.bench import BenchSettings, find_client_python, plot_report, run_bench
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.jobs import find_record

    settings = settings or BenchSettings()
    if client not in ("auto", "local", "job"):
        raise UserInputError(f"--client: {client!r} is not one of auto, local, job")
    is_url = target is not None and target.startswith(("http://", "https://"))
    if plot is not None and importlib.util.find_spec("matplotlib") is None and (
            client == "job" or (not is_url and _bench_python(python, False) is None)):
        # Refused before any run: the picture is drawn here, after the benchmark.
        raise UserInputError("--plot: needs matplotlib, which is not installed here "
                             "(pip install 'slurm-sglang[plot]')")
    if target is not None and is_url:
        if client == "job":
            raise UserInputError("--client job: give a job id, not a URL (the client runs in "
                                 "that job's image on its head node)")
        here = find_client_python(python)
        local_python: str | None = here
        report = run_bench(target, types, settings, output_dir or Path("bench-results"),
                           _local_runner(here), api_key=api_key, progress=progress)
    else:
        record = find_record(target)
        local_python = _bench_python(python, required=client == "local") \
            if client != "job" else None
        with _open_transport(record.host) as transport:
            view = job_view(record, transport)
            if view.status is not JobStatus.READY or not view.endpoint:
                raise UserInputError(f"job {view.record.job_id} is {view.status.value}, not "
                                     "ready; give a URL or wait for `endpoint` to answer")
            place = _job_place(transport, view)
            served = _served(transport, view, place)
            if local_python is not None:
                report = _bench_job_here(transport, view, types, settings, local_python,
                                         output_dir, api_key, served, progress)
            else:
                folder = str(output_dir) if output_dir else f"{record.log_dir}/bench"
                runner = _in_job_runner(transport, place, folder, settings, client_mounts,
                                        client_env or {})
                report = run_bench(str(view.endpoint["url"]), types, settings, folder, runner,
                                   api_key=api_key, served=served, progress=progress,
                                   files=transport)
    if plot is not None:
        local_files = report.files and Path(report.files[0]).is_file()
        report.files.append(str(plot_report(report, plot,
                                            local_python if local_files else None)))
    return report


def _bench_python(python: str | None, required: bool) -> str | None:
    """The python that runs sglang's client here; None when the job's image should."""
    import os

    from slurm_sglang.bench import find_client_python

    if required or python or os.environ.get("SLURM_SGLANG_BENCH_PYTHON") or \
            importlib.util.find_spec("sglang") is not None:
        return find_client_python(python)
    return None


def _local_runner(python: str) -> Runner:
    from slurm_sglang.bench import local_runner

    return local_runner(python)


def _job_place(transport: Transport, view: JobView) -> JobPlace:
    """The job's head node, image (from its driver's log) and the profile's container."""
    from slurm_sglang.in_job import JobPlace, image_from_driver_log
    from slurm_sglang.profile import load_profile

    endpoint = view.endpoint or {}
    log = _read_optional(transport, view.record.driver_log) if view.record.driver_log else None
    profile = load_profile(view.record.cluster)
    uid = transport.run(["id", "-u"], check=False).stdout.strip()
    # endpoint.json does not name the image (yet): the driver's first line does.
    image = str(endpoint.get("image") or image_from_driver_log(log or ""))
    return JobPlace(view.record.job_id, str(endpoint.get("head", "")), image, profile.container,
                    uid)


def _served(transport: Transport, view: JobView, place: JobPlace) -> dict[str, object]:
    """What the job serves, for the results: nodes, parallel sizes, replicas, image, profile."""
    from slurm_sglang.in_job import image_id_argv
    from slurm_sglang.spec import SpecError, parse_parallelism

    endpoint = view.endpoint or {}
    try:
        # The record keeps the script's own options first, up to "--".
        args = view.record.sglang_args
        sizes = parse_parallelism(args[args.index("--") + 1:] if "--" in args else args)
        parallel: dict[str, object] = {"tp": sizes.tp, "pp": sizes.pp, "dp": sizes.dp,
                                       "ep": sizes.ep, "dp_attention": sizes.dp_attention}
        replicas = len(view.replicas) or sizes.replicas
    except SpecError:
        parallel, replicas = {}, len(view.replicas) or 1
    image_id = ""
    inspect = image_id_argv(place) if place.image else None
    if inspect is not None:
        found = transport.run(inspect, check=False)
        image_id = found.stdout.strip().removeprefix("sha256:") if found.returncode == 0 else ""
    return {"job": view.record.job_id, "host": view.record.host or "local",
            "cluster": view.record.cluster, "profile": endpoint.get("profile", ""),
            "nodes": endpoint.get("nodes", []), "head": endpoint.get("head", ""),
            "parallelism": parallel, "replicas": replicas, "runtime": place.container.runtime,
            "image": place.image, "image_id": image_id, "model": endpoint.get("model", ""),
            "sglang_args": view.record.sglang_args, "endpoint": endpoint.get("url", "")}


def _bench_job_here(transport: Transport, view: JobView, types: Sequence[str],
                    settings: BenchSettings, python: str, output_dir: Path | None,
                    api_key: str | None, served: dict[str, object],
                    progress: Callable[[str], None] | None) -> BenchReport:
    """The client where the CLI runs: at the job's URL, or through a tunnel to a remote job."""
    from slurm_sglang.bench import run_bench
    from slurm_sglang.transport import open_tunnel

    endpoint = view.endpoint or {}
    runner = _local_runner(python)
    if not view.record.host:
        folder = output_dir or Path(view.record.log_dir) / "bench"
        return run_bench(str(endpoint["url"]), types, settings, folder, runner,
                         api_key=api_key, served=served, progress=progress)
    head = str(endpoint.get("head_ip") or endpoint.get("head"))
    with open_tunnel(transport, head, int(str(endpoint["port"]))) as forward:
        served["tunnel"] = forward.url
        folder = output_dir or Path("bench-results") / view.record.job_id
        report = run_bench(forward.url, types, settings, folder, runner, api_key=api_key,
                           served=served, progress=progress)
    # A copy beside the job's logs on the cluster, where its other runs are kept.
    remote = f"{view.record.log_dir}/bench"
    transport.makedirs(remote)
    for path in list(report.files):
        copy = f"{remote}/{Path(path).name}"
        transport.write_text(copy, Path(path).read_text(), 0o600)
        report.files.append(copy)
        log = Path(path).with_suffix(".log")
        if log.is_file():  # the client's output beside each run's JSONL
            transport.write_text(f"{remote}/{log.name}", log.read_text(), 0o600)
    return report


# What reaches the client in the job's image from this side's environment (by name only).
_FORWARDED_ENV = ("OPENAI_API_KEY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _in_job_runner(transport: Transport, place: JobPlace, folder: str, settings: BenchSettings,
                   mounts: Sequence[str], extra_env: Mapping[str, str]) -> Runner:
    """Run the client in the job's image on its head node; its files go to folder there."""
    from slurm_sglang.in_job import in_image_argv

    if not place.image and place.container.runtime != "none":
        from slurm_sglang.errors import UserInputError

        raise UserInputError(f"--client job: job {place.job_id}'s driver log does not say "
                             "which image it runs; run the client here (--client local)")
    # The client reads the tokenizer and dataset, and writes its JSONL, at the same paths.
    binds = [folder, *(path for path in (settings.tokenizer, settings.dataset_path)
                       if path and path.startswith("/")), *mounts]
    transport.makedirs(folder)

    def run(argv: Sequence[str], env: Mapping[str, str]) -> CommandResult:
        sent = {name: env[name] for name in _FORWARDED_ENV if env.get(name)}
        sent.update(extra_env)
        command = in_image_argv(place, [place.python, *argv], mounts=binds,
                                env_names=sorted(sent), workdir=folder)
        return transport.run(command, env=sent, check=False)

    return run


def metrics(record: JobRecord, transport: Transport | None = None
            ) -> tuple[JobView, list[TargetReading]]:
    """Read every metrics endpoint of a ready job (its servers' and its router's), with curl
    where the job's files are; a target that does not answer is a reading with its error."""
    from slurm_sglang.metrics import read_all

    own_transport = transport is None
    transport = transport or _open_transport(record.host)
    try:
        view = job_view(record, transport)
        if view.status is not JobStatus.READY or not view.endpoint:
            return view, []
        return view, read_all(transport, view.endpoint)
    finally:
        if own_transport:
            transport.close()
