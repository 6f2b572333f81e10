"""Command line: parse, call the API, print. Nothing here decides anything."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from slurm_sglang.jobs import JobRecord, JobStatus, find_record, list_records

if TYPE_CHECKING:
    from slurm_sglang import api
    from slurm_sglang.metrics import TargetReading

PROG = "slurm-sglang"
EXIT_USAGE = 2
# How often an open tunnel checks that its job still serves.
_TUNNEL_CHECK_SECONDS = 5.0


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2, nothing submitted."""


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def cmd_render(args: argparse.Namespace) -> int:
    """Write run.sbatch for a profile."""
    from slurm_sglang import api

    text = api.render(args.cluster, args.nodes)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        api.render_to(Path(args.output), args.cluster, args.nodes)
        print(f"wrote {args.output} (profile {args.cluster})", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run every rule on the sglang arguments; exit 2 on a problem."""
    from slurm_sglang import api

    report = api.check(args.sglang_args, args.cluster, args.nodes,
                       gpus_per_node=args.gpus_per_node, sglang_parser=args.sglang_parser)
    par = report.parallelism
    summary = {
        "ok": report.ok,
        "nodes": report.nodes,
        "gpus_per_node": report.gpus_per_node,
        "parallelism": {"tp": par.tp, "pp": par.pp, "dp": par.dp, "ep": par.ep,
                        "attention_dp": par.dp_attention, "replicas": par.replicas},
        "sglang_args": list(report.spec.sglang_args),
        "problems": report.problems,
        "notes": report.notes,
        "warnings": report.warnings,
        "sglang_parser": report.parser_verdicts,
        "plan": report.plan.to_dict() if report.plan else None,
    }
    lines = [
        f"nodes {report.nodes} x {report.gpus_per_node} GPUs; "
        f"tp {par.tp} pp {par.pp} dp {par.dp} ep {par.ep}"
        + (" (attention DP)" if par.dp_attention else "")
        + f"; {par.total_gpus} GPUs in {par.replicas} server(s)",
        *(f"note: {note}" for note in report.notes if note not in report.problems),
        *(f"warning: {warning}" for warning in report.warnings),
        *(f"problem: {problem}" for problem in report.problems),
        *report.parser_verdicts,
        *([report.plan.table()] if report.plan else []),
        "ok" if report.ok else "not ok",
    ]
    _emit(args, summary, "\n".join(lines))
    return 0 if report.ok else EXIT_USAGE


def _print_phase(view: api.JobView, started: float, stream: TextIO, printed: list[str]) -> None:
    elapsed = time.monotonic() - started
    phase = view.phase
    # The events can say "ready" a poll before the state file does: one line for both.
    if printed[-1:] == [phase]:
        return
    printed.append(phase)
    print(f"[{elapsed:6.1f}s] job {view.record.job_id}: {phase}", file=stream, flush=True)


def _ready_text(view: api.JobView) -> str:
    endpoint = view.endpoint or {}
    url = str(endpoint.get("url", view.progress.ready_url))
    model = str(endpoint.get("model", ""))
    return "\n".join([
        f"ready: {url}",
        "",
        "  curl:",
        f"    curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"      -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
        "\"content\": \"Hello\"}], \"max_tokens\": 50}'",
        "  python:",
        "    from openai import OpenAI",
        f"    client = OpenAI(base_url=\"{url}/v1\", api_key=\"none\")",
        f"    client.chat.completions.create(model=\"{model}\", "
        "messages=[{\"role\": \"user\", \"content\": \"Hello\"}])",
        "",
        *([f"  from this machine (the URL above is the cluster's): "
           f"python -m slurm_sglang tunnel {view.record.job_id}"] if view.record.host else []),
        f"  stop it with: python -m slurm_sglang cancel {view.record.job_id}",
    ])


def _view_dict(view: api.JobView) -> dict[str, object]:
    return {
        "job_id": view.record.job_id,
        "host": view.record.host or "local",
        "status": view.status.value,
        "queue_state": view.queue_state,
        "phase": view.phase,
        "url": (view.endpoint or {}).get("url") or view.progress.ready_url or None,
        "replicas": view.replicas,
        "endpoint": view.endpoint,
        "failures": view.progress.failures,
        "staged": {node: {"bytes": copied, "bytes_per_s": rate}
                   for node, (copied, rate) in view.progress.staged.items()},
        "log_dir": view.record.log_dir,
        "driver_log": view.record.driver_log,
    }


def _follow_until_ready(args: argparse.Namespace, record: JobRecord) -> int:
    from slurm_sglang import api

    started = time.monotonic()
    stream = sys.stderr
    printed: list[str] = []
    try:
        view = api.follow(record, lambda view: None if args.json else _print_phase(
            view, started, stream, printed), timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job runs on. Cancel it with: "
              f"python -m slurm_sglang cancel {record.job_id}", file=sys.stderr)
        return 130
    if view.status is JobStatus.READY:
        _emit(args, _view_dict(view), _ready_text(view))
        return 0
    _emit(args, _view_dict(view), "\n".join(
        [f"job {record.job_id} {view.status.value}", *view.progress.failures,
         f"driver log: {record.driver_log}"]))
    return 1


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate, render, submit, then follow the job until it serves."""
    from slurm_sglang import api

    record = api.submit(
        args.sglang_args, args.cluster, args.nodes, time=args.time or "",
        partition=args.partition or "", name=args.name, image=args.image or "", port=args.port,
        health_timeout=args.health_timeout, workspace=args.workspace or "", ssh=args.ssh or "",
        trust_new_host=args.trust_new_host, env=_job_env(args.env or []),
        api_key_file=args.api_key_file or "", torch_profile=args.profile,
        stage_model=args.stage_model or "")
    if not args.json:
        where = f" on {record.host}" if record.host else ""
        print(f"submitted job {record.job_id}{where}; logs in {record.log_dir}", file=sys.stderr)
    if not args.wait:
        _emit(args, {"job_id": record.job_id, "log_dir": record.log_dir}, record.job_id)
        return 0
    return _follow_until_ready(args, record)


def _job_env(entries: Sequence[str]) -> dict[str, str]:
    """--env NAME=VALUE, or NAME alone for this shell's value (tokens stay off command lines)."""
    import os
    import re

    env: dict[str, str] = {}
    for entry in entries:
        name, has_value, value = entry.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--env {entry!r}: {name!r} is not a variable name")
        if not has_value:
            if name not in os.environ:
                raise UsageError(f"--env {name}: not set here; pass {name}=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


def cmd_status(args: argparse.Namespace) -> int:
    """One job's status (the latest by default); --watch: a live view until it ends."""
    from slurm_sglang import api

    if getattr(args, "watch", False):
        return _watch_status(args)
    view = api.job_view(find_record(args.job))
    text = f"job {view.record.job_id}: {view.status.value} ({view.phase})"
    if view.endpoint:
        text += f"\n  url: {view.endpoint.get('url')}"
    for replica in view.replicas:
        text += (f"\n  replica {replica.get('replica')}: {replica.get('state')} "
                 f"{replica.get('url')} nodes {replica.get('nodes')}")
    if view.progress.staging and view.progress.staging != view.phase:
        text += f"\n  {view.progress.staging}"
    text += "".join(f"\n  {failure}" for failure in view.progress.failures)
    _emit(args, _view_dict(view), text)
    return 0


def _live(frames: Callable[[], tuple[str, object, bool]], args: argparse.Namespace,
          stream: TextIO | None = None) -> int:
    """Show frames until the last one (or Ctrl-C): redrawn in place on a terminal, else each
    changed frame as plain lines (a pipe, a log file), or one JSON object a line with --json."""
    stream = stream or sys.stdout
    terminal = stream.isatty() and not args.json
    shown = None
    try:
        while True:
            text, data, last = frames()
            if args.json:
                stream.write(json.dumps(data, default=str) + "\n")
            elif terminal:
                # Over the last frame from the top-left corner, each line and then the rest of
                # the screen cleared: a clear-screen would push every frame into the scrollback.
                lines = (time.strftime("%H:%M:%S  ") + text).split("\n")
                stream.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
            elif text != shown:
                stream.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n")
            shown = text
            stream.flush()
            if last:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _metrics_data(view: api.JobView, readings: Sequence[TargetReading]) -> dict[str, object]:
    return {"job_id": view.record.job_id, "status": view.status.value, "phase": view.phase,
            "targets": [reading.to_dict() for reading in readings]}


def _metrics_text(view: api.JobView, readings: Sequence[TargetReading]) -> str:
    from slurm_sglang.metrics import table

    if view.status is not JobStatus.READY:
        return f"job {view.record.job_id} is {view.status.value} ({view.phase}): no metrics yet"
    return table(readings)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Every server's and the router's metrics as a table; --watch refreshes it."""
    from slurm_sglang import api
    from slurm_sglang.transport import transport_for

    record = find_record(args.job)
    with transport_for(record.host or None) as transport:
        if args.watch:
            def frame() -> tuple[str, object, bool]:
                view, readings = api.metrics(record, transport)
                return (_metrics_text(view, readings), _metrics_data(view, readings),
                        view.status.finished)

            return _live(frame, args)
        view, readings = api.metrics(record, transport)
    _emit(args, _metrics_data(view, readings), _metrics_text(view, readings))
    if view.status is not JobStatus.READY:
        return 1
    return 0 if all(reading.ok for reading in readings) else 1


def _status_frame(view: api.JobView, readings: Sequence[TargetReading]) -> str:
    lines = [f"job {view.record.job_id}: {view.status.value} ({view.phase})"]
    if view.endpoint:
        nodes = view.endpoint.get("nodes")
        lines.append(f"  url: {view.endpoint.get('url')}   nodes: "
                     f"{', '.join(map(str, nodes)) if isinstance(nodes, list) else '-'}")
    for replica in view.replicas:
        lines.append(f"  replica {replica.get('replica')}: {replica.get('state')} "
                     f"{replica.get('url')} nodes {replica.get('nodes')}")
    lines += [f"  {failure}" for failure in view.progress.failures]
    if readings:
        lines += ["", _metrics_text(view, readings)]
    return "\n".join(lines)


def _watch_status(args: argparse.Namespace) -> int:
    from slurm_sglang import api
    from slurm_sglang.transport import transport_for

    record = find_record(args.job)
    with transport_for(record.host or None) as transport:
        def frame() -> tuple[str, object, bool]:
            view, readings = api.metrics(record, transport)
            data = {**_view_dict(view), "metrics": [r.to_dict() for r in readings]}
            return _status_frame(view, readings), data, view.status.finished

        return _live(frame, args)


def cmd_list(args: argparse.Namespace) -> int:
    """Every recorded job, newest first."""
    records = list_records()
    rows = [{"job_id": r.job_id, "host": r.host or "local", "cluster": r.cluster,
             "submitted_at": r.submitted_at, "name": r.name} for r in records]
    lines = [f"{'JOB':>8}  {'HOST':<14} {'CLUSTER':<20} SUBMITTED"] + [
        f"{r['job_id']:>8}  {r['host']:<14} {r['cluster']:<20} {r['submitted_at']}" for r in rows]
    _emit(args, rows, "\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the driver's log or one rank's; --follow keeps reading."""
    from slurm_sglang import api
    from slurm_sglang.transport import transport_for

    record = find_record(args.job)
    path = api.log_path(record, args.node, args.rank)
    offset = 0
    with transport_for(record.host or None) as transport:
        while True:
            chunk = transport.read_bytes_from(path, offset)
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                offset += len(chunk)
            if not args.follow:
                return 0
            time.sleep(0.5)


def cmd_endpoint(args: argparse.Namespace) -> int:
    """The URL once the job is healthy; exit 1 until then."""
    from slurm_sglang import api

    view = api.job_view(find_record(args.job))
    if view.status is not JobStatus.READY or not view.endpoint:
        _emit(args, _view_dict(view), f"job {view.record.job_id} is {view.status.value}, not ready")
        return 1
    _emit(args, view.endpoint, str(view.endpoint["url"]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """scancel the job and confirm SLURM ended it."""
    from slurm_sglang import api

    view = api.cancel(find_record(args.job), timeout=args.timeout or 60)
    if view.queue_state is not None:
        _emit(args, _view_dict(view), f"job {view.record.job_id} still {view.queue_state}")
        return 1
    left = view.progress.nodes_not_ended
    if left:
        _emit(args, _view_dict(view),
              f"job {view.record.job_id} cancelled, but {', '.join(left)} never reported its "
              f"rank ended: look for containers labelled slurm-sglang.job={view.record.job_id}")
        return 1
    ended = len(view.progress.nodes_ended)
    _emit(args, _view_dict(view), f"job {view.record.job_id} cancelled ({view.status.value}); "
          f"{ended} node(s) confirmed their ranks ended and their containers are gone")
    return 0


def cmd_tunnel(args: argparse.Namespace) -> int:
    """Forward a port on 127.0.0.1 to the job's head until Ctrl-C or the job ends."""
    from slurm_sglang import api

    record = find_record(args.job)
    with api.tunnel(record, args.local_port or 0) as forward:
        print(f"tunnel: {forward.url} -> {forward.remote_host}:{forward.remote_port} "
              "(Ctrl-C to close)", flush=True)
        try:
            while True:
                time.sleep(_TUNNEL_CHECK_SECONDS)
                view = api.job_view(record, forward.transport)
                if view.status is not JobStatus.READY:
                    print(f"tunnel: job {record.job_id} is {view.status.value}; closing",
                          file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
    print("tunnel closed", file=sys.stderr)
    return 0


def cmd_profiles_list(args: argparse.Namespace) -> int:
    """The built-in profiles, one line each."""
    from slurm_sglang.profile import builtin_profile_names, load_profile

    rows = [{"name": name, "description": load_profile(name).description}
            for name in builtin_profile_names()]
    _emit(args, rows, "\n".join(f"{row['name']:<14} {row['description']}" for row in rows))
    return 0


def cmd_profiles_show(args: argparse.Namespace) -> int:
    """One profile as the renderer sees it: extends resolved, every default filled in."""
    import yaml

    from slurm_sglang.profile import load_profile

    data = load_profile(args.profile).model_dump(mode="json")
    _emit(args, data, yaml.safe_dump(data, sort_keys=False).rstrip("\n"))
    return 0


def cmd_profiles_validate(args: argparse.Namespace) -> int:
    """Every problem of each file with its YAML line; exit 2 when any."""
    from slurm_sglang.profile import validate_profile_file

    problems = {path: validate_profile_file(path) for path in args.files}
    lines = [line for path, found in problems.items() for line in (found or [f"{path}: ok"])]
    _emit(args, problems, "\n".join(lines))
    return EXIT_USAGE if any(problems.values()) else 0


def cmd_profiles_init(args: argparse.Namespace) -> int:
    """A commented starting profile, on standard output or in a new file."""
    from slurm_sglang.profile_init import render_profile_init

    text = render_profile_init(args.from_profile)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "x", encoding="utf-8") as sink:
            sink.write(text)
    except FileExistsError:
        raise UsageError(f"{args.output} exists; remove it or choose another name") from None
    print(f"wrote {args.output}; check it with: {PROG} profiles validate {args.output}",
          file=sys.stderr)
    return 0


def cmd_profiles_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of a profile file, for editors."""
    from slurm_sglang.profile import profile_schema

    print(json.dumps(profile_schema(), indent=2))
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """Run the rendered script's NCCL check over this allocation's nodes, and stop."""
    from slurm_sglang.preflight_launch import run_nccl_preflight

    if not args.nccl:
        raise UsageError("preflight: say which check: --nccl")
    return run_nccl_preflight(args.cluster, args.script_args)


def cmd_smoke(args: argparse.Namespace) -> int:
    """The seed's API checks against a URL or a job's endpoint; exit 1 when any fails."""
    import os

    from slurm_sglang.smoke import run_smoke

    target = args.target
    if target is None or not target.startswith(("http://", "https://")):
        from slurm_sglang import api

        view = api.job_view(find_record(target))
        if view.status is not JobStatus.READY or not view.endpoint:
            return _fail(f"job {view.record.job_id} is {view.status.value}, not ready; "
                         "give a URL or wait for `endpoint` to answer")
        if view.record.host:
            return _fail(f"job {view.record.job_id} runs on {view.record.host}: open "
                         f"`python -m slurm_sglang tunnel {view.record.job_id}` and smoke its URL")
        target = str(view.endpoint["url"])
    api_key = os.environ.get("SLURM_SGLANG_API_KEY") or None
    report = run_smoke(target, model=args.model, api_key=api_key, timeout=args.timeout)
    _emit(args, report.to_dict(), report.format_table())
    return 0 if report.ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """sglang's serving benchmark against a job or URL; exit 1 when a run fails the gate."""
    from slurm_sglang import api
    from slurm_sglang.bench import BENCH_TYPES, BenchSettings, compare_summaries, load_summary

    if args.target == "compare" or args.reports:
        if args.target != "compare" or len(args.reports) != 2:
            raise UsageError("bench compare: give two reports, bench compare A.json B.json")
        print(compare_summaries(*(load_summary(Path(path)) for path in args.reports)))
        return 0
    types = [name for item in args.type or ["throughput"] for name in item.split(",") if name]
    if "all" in types:
        types = list(BENCH_TYPES)
    settings = BenchSettings(
        num_prompts=args.num_prompts, input_lens=_ints(args.input_len, "--input-len"),
        output_lens=_ints(args.output_len, "--output-len"),
        request_rates=_rates(args.request_rate),
        concurrencies=_ints(args.concurrency, "--concurrency"), range_ratio=args.range_ratio,
        dataset_path=args.dataset_path, backend=args.backend, model=args.model,
        tokenizer=args.tokenizer, seed=args.seed, warmup_requests=args.warmup_requests)
    report = api.bench(
        args.target, types, settings, python=args.python,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        plot=Path(args.plot) if args.plot else None,
        api_key=_bench_api_key(args.api_key_file),
        progress=None if args.json else lambda line: print(line, file=sys.stderr, flush=True),
        client=args.client, client_mounts=args.client_mount or (),
        client_env=_assignments(args.client_env, "--client-env"))
    text = report.format_table()
    if report.files:
        text += f"\nfiles: {report.files[0]}" + "".join(
            f"\n       {path}" for path in report.files[1:] if path.endswith(".png"))
    _emit(args, report.to_dict(), text)
    return 0 if report.ok else 1


def _bench_api_key(path: str | None) -> str | None:
    """The server's API key: --api-key-file (the user's alone), else $SLURM_SGLANG_API_KEY."""
    import os

    if not path:
        return os.environ.get("SLURM_SGLANG_API_KEY") or None
    try:
        mode = Path(path).stat().st_mode & 0o777
        key = Path(path).read_text().strip()
    except OSError as error:
        raise UsageError(f"--api-key-file: cannot read {path}: {error.strerror}") from None
    if mode & 0o077:
        raise UsageError(f"--api-key-file: {path} is readable by group or others (mode "
                         f"{mode:o}): chmod 600 {path}")
    if not key:
        raise UsageError(f"--api-key-file: {path} is empty")
    return key


def _assignments(items: list[str] | None, name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"{name}: {item!r} is not NAME=VALUE")
        found[key] = value
    return found


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a comma-separated list of whole numbers") \
            from None
    if not values or min(values) < 1:
        raise UsageError(f"{name}: every value must be at least 1, got {text!r}")
    return values


def _rates(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"--request-rate: {text!r} is not a comma-separated list of numbers "
                         "or inf") from None
    if not values or min(values) <= 0:
        raise UsageError(f"--request-rate: every rate must be above 0, got {text!r}")
    return values


def cmd_image_save(args: argparse.Namespace) -> int:
    """Save an image as the tarball run.sbatch loads; prints its path, size and image ID."""
    from slurm_sglang import api
    from slurm_sglang.image import human_size

    saved = api.save_image(
        args.reference, Path(args.output), args.cluster, container_cli=args.container_cli or "",
        pull=args.pull, force=args.force,
        progress=None if args.json else lambda line: print(line, file=sys.stderr, flush=True))
    _emit(args, saved.to_dict(), "\n".join([
        f"wrote {saved.path}",
        f"  size:     {human_size(saved.size_bytes)} ({saved.size_bytes} bytes)",
        f"  image ID: {saved.image_id}",
        f"  from:     {saved.reference} ({saved.container_cli} save"
        f"{'' if saved.compressor == 'none' else ' | ' + saved.compressor}"
        f"{', pulled' if saved.pulled else ''}, {saved.seconds:.1f} s)",
        f"  use it:   bash sbatch/run.sbatch --image {saved.path} ...",
    ]))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Bring the local multi-node sandbox up or down, or show it."""
    from slurm_sglang.sandbox import cluster

    if args.sandbox_verb == "demo":
        from slurm_sglang.sandbox.demo import run_demo

        return run_demo(nodes=2)
    if args.sandbox_verb == "up":
        info = cluster.sandbox_up(nodes=args.nodes)
        _emit(args, info.to_dict(), info.summary())
    elif args.sandbox_verb == "down":
        cluster.sandbox_down()
        print("sandbox down")
    else:
        status = cluster.sandbox_status()
        if status is None:
            _emit(args, {"up": False}, "sandbox is down")
            return 1
        _emit(args, status.to_dict(), status.summary())
    return 0


def _profile_cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", default="default", metavar="NAME|FILE",
        help="built-in profile name or a profile YAML file (default: default)",
    )


def _ssh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ssh", metavar="HOST",
                        help="work on HOST over SSH (~/.ssh/config alias or [user@]host[:port])")
    parser.add_argument("--trust-new-host", action="store_true",
                        help="accept and record an unknown SSH host key (check its fingerprint)")


def _watch_options(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--watch", "-w", action="store_true", help=text)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between refreshes with --watch (default 2)")


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a plainly written whole number from low to high (launch_plan's rule,
    the one the script applies: no '08', '+8', '1_6' or fullwidth digits)."""
    from slurm_sglang.launch_plan import UserInputError, bounded_int

    def convert(text: str) -> int:
        try:
            return bounded_int("value", text, low, high)
        except UserInputError:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not a whole number from {low} to {high}") from None

    return convert


def _port(text: str) -> int:
    from slurm_sglang.launch_plan import PORT_MAX, PORT_MIN

    value = _positive_int(text)
    if not PORT_MIN <= value <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port ({PORT_MIN}-{PORT_MAX})")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Bounds of issue 23 item 7, as launch_plan applies them in the script.
_NODES = _bounded(1, 10000)
_GPUS_PER_NODE = _bounded(1, 64)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    parser = _Parser(prog=PROG, description="Serve SGLang across the nodes of a SLURM cluster.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    render = verbs.add_parser("render", help="write run.sbatch for a cluster profile")
    _profile_cluster_option(render)
    render.add_argument("--nodes", type=_NODES, help="add #SBATCH --nodes=N")
    render.add_argument("-o", "--output", help="file to write (default: standard output)")
    render.set_defaults(handler=cmd_render)

    check = verbs.add_parser("check", help="check sglang arguments against a profile")
    _profile_cluster_option(check)
    check.add_argument("--nodes", type=_NODES, help="nodes to check against")
    check.add_argument("--gpus-per-node", type=_GPUS_PER_NODE,
                       help="GPUs a node has (default: the profile's slurm.gpus_per_node)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--sglang-parser", action=argparse.BooleanOptionalAction, default=True,
                       help="also run sglang's own parser on every rank's argv where installed "
                            "(default: on)")
    check.add_argument("sglang_args", nargs=argparse.REMAINDER, help="-- then sglang's arguments")
    check.set_defaults(handler=cmd_check)

    submit = verbs.add_parser("submit", help="submit a serving job and follow it until ready")
    _profile_cluster_option(submit)
    submit.add_argument("--nodes", type=_NODES, help="nodes (default: what tp*pp*dp needs)")
    submit.add_argument("--time", help="time limit (e.g. 04:00:00; default: the profile's)")
    submit.add_argument("--partition", help="SLURM partition (default: the profile's)")
    submit.add_argument("--name", default="sglang", help="job name (default: sglang)")
    submit.add_argument("--image", help="image tarball or registry reference")
    submit.add_argument("--port", type=_port, default=30000, help="HTTP port (default 30000)")
    submit.add_argument("--health-timeout", type=_positive_int, default=1800,
                        help="seconds to wait for /health (default 1800)")
    submit.add_argument("--workspace", help="shared directory for scripts and logs")
    submit.add_argument("--stage-model", metavar="DIR",
                        help="copy the model to DIR/$USER/ on each node's local disk before "
                             "the ranks start, reading the shared copy once (default: the "
                             "profile's paths.local_model_dir; none: no staging)")
    submit.add_argument("--api-key-file", metavar="FILE",
                        help="file on shared storage holding the server's API key")
    submit.add_argument("--profile", nargs="?", const="", metavar="DIR",
                        help="PyTorch profiler traces to DIR; bare: WORKSPACE/sglang_profile "
                             "(the script's --profile)")
    submit.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="follow the job until it serves (default) or return at once")
    submit.add_argument("--timeout", type=float, help="stop following after this many seconds")
    _ssh_options(submit)
    submit.add_argument("--env", action="append", metavar="NAME[=VALUE]",
                        help="add to the job's environment, repeatable; NAME alone passes its "
                        "value here (e.g. --env HF_TOKEN)")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    submit.add_argument("sglang_args", nargs=argparse.REMAINDER, help="-- then sglang's arguments")
    submit.set_defaults(handler=cmd_submit)

    for verb, handler, text in (
        ("status", cmd_status, "a job's status (default: the latest)"),
        ("endpoint", cmd_endpoint, "a job's URL once healthy (exit 1 until then)"),
        ("cancel", cmd_cancel, "scancel a job and confirm it ended"),
        ("logs", cmd_logs, "a job's driver log, or one rank's"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("job", nargs="?", help="job id (default: the latest)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(handler=handler)
        if verb == "logs":
            sub.add_argument("--node", help="this node's rank log")
            sub.add_argument("--rank", type=int, help="this rank's log")
            sub.add_argument("--follow", "-F", action="store_true", help="keep reading")
        if verb == "cancel":
            sub.add_argument("--timeout", type=float, help="seconds to wait (default 60)")
        if verb == "status":
            _watch_options(sub, "redraw a live view (phase, replicas, metrics) until the job "
                           "ends; plain lines when not a terminal")
    metrics = verbs.add_parser("metrics", help="a ready job's servers' and router's metrics")
    metrics.add_argument("job", nargs="?", help="job id (default: the latest)")
    metrics.add_argument("--json", action="store_true", help="print JSON (a line a refresh)")
    _watch_options(metrics, "refresh the table in place until Ctrl-C or the job ends")
    metrics.set_defaults(handler=cmd_metrics)
    tunnel = verbs.add_parser("tunnel", help="reach a job's API at http://127.0.0.1:PORT")
    tunnel.add_argument("job", nargs="?", help="job id (default: the latest)")
    tunnel.add_argument("--local-port", type=_port,
                        help="port on 127.0.0.1 (default: any free one)")
    tunnel.set_defaults(handler=cmd_tunnel)
    smoke = verbs.add_parser("smoke", help="the seed's API checks against a server")
    smoke.add_argument("target", nargs="?", metavar="URL|JOB",
                       help="http://HOST:PORT, or a job id (default: the latest job)")
    smoke.add_argument("--model", help="model name (default: the first of /v1/models)")
    smoke.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    smoke.add_argument("--json", action="store_true", help="print one JSON object")
    smoke.set_defaults(handler=cmd_smoke)

    bench = verbs.add_parser("bench", help="sglang's serving benchmark against a job or URL")
    bench.add_argument("target", nargs="?", metavar="JOB|URL",
                       help="job id (default: the newest) or the server's URL; or `compare A B`")
    bench.add_argument("reports", nargs="*", metavar="A B", help=argparse.SUPPRESS)
    bench.add_argument("--type", action="append", metavar="T[,T...]",
                       help="throughput (default), prefill, decode, latency, concurrency, "
                            "sharegpt, or all; repeatable")
    bench.add_argument("--num-prompts", type=_positive_int, help="requests per run (100)")
    bench.add_argument("--input-len", metavar="N[,N...]", help="input tokens, a sweep")
    bench.add_argument("--output-len", metavar="N[,N...]", help="output tokens, a sweep")
    bench.add_argument("--request-rate", metavar="R[,R...]", help="requests/s (inf: all at once)")
    bench.add_argument("--concurrency", metavar="C[,C...]",
                       help="max concurrency sweep (concurrency type: 1,4,16,64,256)")
    bench.add_argument("--range-ratio", type=float,
                       help="random lengths in [ratio*N, N] (sglang's default 0; 1: exact)")
    bench.add_argument("--dataset-path", metavar="FILE",
                       help="a local ShareGPT JSON (needed by sharegpt; nodes have no internet)")
    bench.add_argument("--backend", default="sglang",
                       help="sglang (/generate), sglang-oai, sglang-oai-chat")
    bench.add_argument("--model", help="model name (default: the first of /v1/models)")
    bench.add_argument("--tokenizer", metavar="DIR", help="a local tokenizer directory")
    bench.add_argument("--seed", type=int, default=42, help="sampling seed (42, the seed's)")
    bench.add_argument("--warmup-requests", type=int, help="sglang's warm-up requests (1)")
    bench.add_argument("--python", metavar="PATH",
                       help="a python that imports sglang (default: $SLURM_SGLANG_BENCH_PYTHON, "
                            "else this one)")
    bench.add_argument("--api-key-file", metavar="FILE",
                       help="the server's API key, in a file of yours alone (default: "
                            "$SLURM_SGLANG_API_KEY)")
    bench.add_argument("--client", choices=("auto", "local", "job"), default="auto",
                       help="where sglang's client runs: here, or in the job's image on its "
                            "head node (auto: here when sglang imports here)")
    bench.add_argument("--client-mount", action="append", metavar="SRC[:DST]",
                       help="a mount for the client's container (--client job); repeatable")
    bench.add_argument("--client-env", action="append", metavar="NAME=VALUE",
                       help="a variable for the client (--client job; not for secrets)")
    bench.add_argument("--output-dir", metavar="DIR",
                       help="where results go (default: the job's logs/<job>/bench/)")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="draw latency and throughput against concurrency or size")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=cmd_bench)

    listing = verbs.add_parser("list", help="recorded jobs, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_list)

    profiles = verbs.add_parser("profiles", help="cluster profiles: list, show, validate, init")
    profile_verbs = profiles.add_subparsers(dest="profiles_verb", required=True,
                                            parser_class=_Parser)
    profile_listing = profile_verbs.add_parser("list", help="the built-in profiles")
    profile_listing.add_argument("--json", action="store_true", help="print JSON")
    profile_listing.set_defaults(handler=cmd_profiles_list)
    profile_show = profile_verbs.add_parser("show", help="a profile resolved (extends, defaults)")
    profile_show.add_argument("profile", metavar="NAME|FILE", help="built-in name or YAML file")
    profile_show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    profile_show.set_defaults(handler=cmd_profiles_show)
    profile_validate = profile_verbs.add_parser("validate", help="every error with its YAML line")
    profile_validate.add_argument("files", nargs="+", metavar="FILE", help="profile YAML files")
    profile_validate.add_argument("--json", action="store_true", help="print JSON")
    profile_validate.set_defaults(handler=cmd_profiles_validate)
    profile_init = profile_verbs.add_parser("init", help="a commented starting profile")
    profile_init.add_argument("--from", dest="from_profile", default="default",
                              metavar="NAME|FILE",
                              help="start from this profile's values (default: default)")
    profile_init.add_argument("-o", "--output", help="new file to write (default: standard output)")
    profile_init.set_defaults(handler=cmd_profiles_init)
    profile_schema = profile_verbs.add_parser("schema", help="JSON Schema, for editors")
    profile_schema.set_defaults(handler=cmd_profiles_schema)

    preflight = verbs.add_parser("preflight", help="inside an allocation: check the fabric")
    _profile_cluster_option(preflight)
    preflight.add_argument("--nccl", action="store_true",
                           help="time an all-reduce over every GPU of every node")
    preflight.add_argument("script_args", nargs=argparse.REMAINDER,
                           help="-- then run.sbatch options (--image, --workspace, ...)")
    preflight.set_defaults(handler=cmd_preflight)

    image = verbs.add_parser("image", help="the image tarball run.sbatch loads on every node")
    image_verbs = image.add_subparsers(dest="image_verb", required=True, parser_class=_Parser)
    image_save = image_verbs.add_parser(
        "save", help="docker|podman save an image (pulled if missing), compressed, atomically")
    image_save.add_argument("reference", metavar="REF",
                            help="image reference, e.g. lmsysorg/sglang:latest")
    image_save.add_argument("-o", "--output", default="sglang-serve-latest.tar.gz",
                            metavar="FILE", help=".tar.gz (pigz, else gzip), .tar.zst or .tar "
                            "(default: sglang-serve-latest.tar.gz, run.sbatch's default)")
    _profile_cluster_option(image_save)
    image_save.add_argument("--container-cli", metavar="CLI",
                            help="docker or podman (default: the profile's container runtime)")
    image_save.add_argument("--pull", action="store_true",
                            help="pull REF even when it is present here")
    image_save.add_argument("-f", "--force", action="store_true",
                            help="replace FILE when it exists")
    image_save.add_argument("--json", action="store_true", help="print one JSON object")
    image_save.set_defaults(handler=cmd_image_save)

    sandbox = verbs.add_parser("sandbox", help="a local multi-node SLURM cluster (root)")
    sandbox.add_argument("sandbox_verb", choices=["up", "down", "status", "demo"])
    sandbox.add_argument("--nodes", type=_positive_int, default=4, help="nodes for up (default 4)")
    sandbox.add_argument("--json", action="store_true", help="print one JSON object")
    sandbox.set_defaults(handler=cmd_sandbox)
    return parser


def _version() -> str:
    from slurm_sglang import __version__

    return __version__


def _strip_separator(args: argparse.Namespace) -> None:
    for name in ("sglang_args", "script_args"):
        rest = getattr(args, name, None)
        if rest and rest[0] == "--":
            setattr(args, name, rest[1:])


# Errors that already read as one line for a user; their modules load only when used, so
# they are looked up, never imported, here (keeps `render` and `check` fast to start).
_REPORTED_ERRORS = (
    ("slurm_sglang.transport.base", "TransportError"),
    ("slurm_sglang.sandbox.host", "SandboxError"),
    ("slurm_sglang.render", "RenderError"),
    ("slurm_sglang.image", "ImageError"),
)


def _is_reported_error(exc: Exception) -> bool:
    for module_name, class_name in _REPORTED_ERRORS:
        module = sys.modules.get(module_name)
        error_class = getattr(module, class_name, None) if module else None
        if isinstance(error_class, type) and isinstance(exc, error_class):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from slurm_sglang.errors import UserInputError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _strip_separator(args)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (UsageError, UserInputError) as exc:
        return _fail(str(exc).replace("\n", "; "))
    except Exception as exc:
        if _is_reported_error(exc):
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `slurm-sglang profiles schema | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return 0
