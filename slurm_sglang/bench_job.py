"""`bench` against a job: where sglang's client runs (here, through a tunnel to a remote job,
or in the job's image on its head node), what the job serves, where the files go. The
benchmark itself (points, the client's argv, the gate, the report) is bench.py's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from slurm_sglang.control import job_view, open_transport, read_optional
from slurm_sglang.errors import JobError, UserInputError
from slurm_sglang.jobs import JobStatus, find_record

if TYPE_CHECKING:
    from slurm_sglang.bench import BenchReport, BenchSettings, Runner
    from slurm_sglang.in_job import JobPlace
    from slurm_sglang.transport import Transport
    from slurm_sglang.transport.base import CommandResult
    from slurm_sglang.views import JobView


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
        with open_transport(record.host) as transport:
            view = job_view(record, transport)
            if view.status is not JobStatus.READY or not view.endpoint:
                raise JobError(f"job {view.record.ref} is {view.status.value}, not ready; give "
                               "a URL or wait for `endpoint` to answer")
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
    log = read_optional(transport, view.record.driver_log) if view.record.driver_log else None
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
