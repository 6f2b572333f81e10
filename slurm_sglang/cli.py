"""Command line: parse, call the API, print. Nothing here decides, loops, sleeps or reaches the
cluster: each verb is one call of slurm_sglang.api that returns typed data, printed as its
``text()`` or, with --json, its ``to_dict()``. Errors are errors.py's, one exit code a kind."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from slurm_sglang import api
from slurm_sglang.errors import SlurmSglangError, UserInputError
from slurm_sglang.render import TemplateSettings, template_settings_from

PROG = "slurm-sglang"
Args = argparse.Namespace


class UsageError(UserInputError):
    """Bad command-line input: printed as one line, exit code 2, nothing submitted."""


class _View(Protocol):
    def to_dict(self) -> Any: ...

    def text(self) -> str: ...


def _emit(args: Args, data: object, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def _write(text: str) -> int:
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _show(args: Args, view: _View, failed: int = 1) -> int:
    """Print a result; its exit code is failed when it has an `ok` that is false."""
    _emit(args, view.to_dict(), view.text())
    return 0 if getattr(view, "ok", True) else failed


def _templates() -> TemplateSettings:
    """The renderer's settings from this process's environment (the renderer reads none)."""
    return template_settings_from(os.environ, Path.home())


def _progress(args: Args) -> Callable[[str], None] | None:
    return None if args.json else lambda line: print(line, file=sys.stderr, flush=True)


def _after_dashes(words: Sequence[str]) -> list[str]:
    """REMAINDER arguments without the `--` that separates them."""
    return list(words[1:] if words[:1] == ["--"] else words)


def cmd_render(args: Args) -> int:
    """Write run.sbatch for a profile."""
    if args.output in (None, "-"):
        sys.stdout.write(api.render(args.cluster, args.nodes, _templates()))
        return 0
    api.render_to(Path(args.output), args.cluster, args.nodes, _templates())
    print(f"wrote {args.output} (profile {args.cluster})", file=sys.stderr)
    return 0


def cmd_submit(args: Args) -> int:
    """Validate, render, submit, then follow the job until it serves."""
    from slurm_sglang.submit import job_env

    record = api.submit(
        _after_dashes(args.sglang_args), args.cluster, args.nodes, time=args.time or "",
        partition=args.partition or "", name=args.name, image=args.image or "", port=args.port,
        health_timeout=args.health_timeout, workspace=args.workspace or "", ssh=args.ssh or "",
        trust_new_host=args.trust_new_host, env=job_env(args.env or [], os.environ),
        api_key_file=args.api_key_file or "", torch_profile=args.profile,
        stage_model=args.stage_model or "", templates=_templates())
    if not args.json:
        print(f"submitted job {record.ref}; logs in {record.log_dir}", file=sys.stderr)
    if not args.wait:
        _emit(args, {"id": record.ref, "job_id": record.job_id, "log_dir": record.log_dir},
              record.ref)
        return 0
    try:
        view = api.follow(record, (lambda view: None) if args.json else api.phase_printer(
            sys.stderr), timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job runs on. Cancel it with: "
              f"python -m slurm_sglang cancel {record.ref}", file=sys.stderr)
        return 130
    ready = view.status is api.JobStatus.READY
    _emit(args, view.to_dict(), view.ready_text() if ready else view.outcome_text())
    return 0 if ready else 1


def _watch(args: Args, frame: Callable[[api.MetricsView], api.Frame]) -> int:
    """Hand api.watch a printer: redrawn in place on a terminal, else each changed frame as
    plain lines (a pipe, a log file), or one JSON object a line with --json."""
    terminal = sys.stdout.isatty() and not args.json
    shown = [""]

    def show(current: api.Frame) -> None:
        text = current.text()
        if args.json:
            sys.stdout.write(json.dumps(current.to_dict(), default=str) + "\n")
        elif terminal:
            # Over the last frame from the top-left corner, each line and then the rest of the
            # screen cleared: a clear-screen would push every frame into the scrollback.
            lines = (time.strftime("%H:%M:%S  ") + text).split("\n")
            sys.stdout.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J")
        elif text != shown[0]:
            sys.stdout.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n")
        shown[0] = text
        sys.stdout.flush()

    api.watch(api.find_job(args.job), show, interval=args.interval, frame=frame)
    return 0


def cmd_logs(args: Args) -> int:
    """Print the driver's log or one rank's; --follow keeps reading until the job ends."""
    api.logs(api.find_job(args.job), _write, node=args.node, rank=args.rank, follow=args.follow)
    return 0


def cmd_tunnel(args: Args) -> int:
    """Forward a port on 127.0.0.1 to the job's head until Ctrl-C or the job ends."""
    end = api.hold_tunnel(api.find_job(args.job), lambda forward: print(
        f"tunnel: {forward.url} -> {forward.remote_host}:{forward.remote_port} "
        "(Ctrl-C to close)", flush=True), args.local_port or 0)
    print(end.text(), file=sys.stderr)
    return 0 if end.ok else 1


def cmd_profile_init(args: Args) -> int:
    """A commented starting profile, on standard output or in a new file."""
    if args.output in (None, "-"):
        sys.stdout.write(api.profile_init(args.from_profile))
        return 0
    api.profile_init(args.from_profile, Path(args.output))
    print(f"wrote {args.output}; check it with: {PROG} profiles validate {args.output}",
          file=sys.stderr)
    return 0


def cmd_sandbox(args: Args) -> int:
    """Bring the local multi-node sandbox up or down, show it, or run the demo."""
    if args.sandbox_verb == "demo":
        return api.sandbox_demo(nodes=2)
    if args.sandbox_verb == "down":
        api.sandbox_down()
        print("sandbox down")
        return 0
    info = api.sandbox_up(args.nodes) if args.sandbox_verb == "up" else api.sandbox_status()
    if info is None:
        _emit(args, {"up": False}, "sandbox is down")
        return 1
    return _show(args, info)


# ---- the grammar -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _bounded(flag: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high by launch_plan's rule and message,
    the script's (no '08', '+8', '1_6' or fullwidth digits)."""
    from slurm_sglang.launch_plan import bounded_int

    def convert(text: str) -> int:
        try:
            return bounded_int(flag, text, low, high)
        except UserInputError as exc:
            # argparse names the flag itself.
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None

    return convert


def _script_flag(name: str) -> Callable[[str], int]:
    """An argparse type for one of the script's own numeric flags: its check in launch_plan's
    table, with its message."""
    from slurm_sglang.launch_plan import script_flag

    check = script_flag(name).check
    assert check is not None, name

    def convert(text: str) -> int:
        try:
            return int(check(text))
        except UserInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _verb(verbs: Any, name: str, text: str, run: Callable[[Args], int] | None, *,
          json_help: str | None = "print JSON", cluster: bool = False, job: bool = False,
          watch: str = "") -> _Parser:
    """A verb, what it runs, and the options many verbs share."""
    sub: _Parser = verbs.add_parser(name, help=text)
    if run is not None:
        sub.set_defaults(handler=run)
    if cluster:
        sub.add_argument("--cluster", default="default", metavar="NAME|FILE",
                         help="built-in profile name or a profile YAML file (default: default)")
    if job:
        sub.add_argument("job", nargs="?", help="JOB, or HOST:JOB (default: the latest)")
    if json_help:
        sub.add_argument("--json", action="store_true", help=json_help)
    if watch:
        sub.add_argument("--watch", "-w", action="store_true", help=watch)
        sub.add_argument("--interval", type=float, default=2.0,
                         help="seconds between refreshes with --watch (default 2)")
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar, each verb with what it runs."""
    from slurm_sglang import __version__, bench
    # launch_plan's bounds (issue 23 item 7); --port and --health-timeout are the script's.
    nodes, gpus = _bounded("--nodes", 1, 10000), _bounded("--gpus-per-node", 1, 64)
    port, seconds = _script_flag("--port"), _script_flag("--health-timeout")
    one_json = "print one JSON object"
    parser = _Parser(prog=PROG, description="Serve SGLang across the nodes of a SLURM cluster.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    sub = _verb(verbs, "render", "write run.sbatch for a cluster profile", cmd_render,
                json_help=None, cluster=True)
    sub.add_argument("--nodes", type=nodes, help="add #SBATCH --nodes=N")
    sub.add_argument("-o", "--output", help="file to write (default: standard output)")
    sub = _verb(verbs, "check", "check sglang arguments against a profile", lambda a: _show(
        a, api.check(_after_dashes(a.sglang_args), a.cluster, a.nodes,
                     gpus_per_node=a.gpus_per_node, sglang_parser=a.sglang_parser), failed=2),
        json_help=one_json, cluster=True)
    sub.add_argument("--nodes", type=nodes, help="nodes to check against")
    sub.add_argument("--gpus-per-node", type=gpus,
                     help="GPUs a node has (default: the profile's slurm.gpus_per_node)")
    sub.add_argument("--sglang-parser", action=argparse.BooleanOptionalAction, default=True,
                     help="also run sglang's own parser on every rank's argv (default: on)")
    sub.add_argument("sglang_args", nargs=argparse.REMAINDER, help="-- then sglang's arguments")
    sub = _verb(verbs, "submit", "submit a serving job and follow it until ready", cmd_submit,
                json_help=one_json, cluster=True)
    sub.add_argument("--nodes", type=nodes, help="nodes (default: what tp*pp*dp needs)")
    sub.add_argument("--time", help="time limit (e.g. 04:00:00; default: the profile's)")
    sub.add_argument("--partition", help="SLURM partition (default: the profile's)")
    sub.add_argument("--name", default="sglang", help="job name (default: sglang)")
    sub.add_argument("--image", help="image tarball or registry reference")
    sub.add_argument("--port", type=port, default=30000, help="HTTP port (default 30000)")
    sub.add_argument("--health-timeout", type=seconds, default=1800,
                     help="seconds to wait for /health (default 1800)")
    sub.add_argument("--workspace", help="shared directory for scripts and logs")
    sub.add_argument("--stage-model", metavar="DIR", help="copy the model to DIR/$USER/ on each "
                     "node's local disk before the ranks start, reading the shared copy once "
                     "(default: the profile's paths.local_model_dir; none: no staging)")
    sub.add_argument("--api-key-file", metavar="FILE",
                     help="file on shared storage holding the server's API key")
    sub.add_argument("--profile", nargs="?", const="", metavar="DIR", help="PyTorch profiler "
                     "traces to DIR; bare: WORKSPACE/sglang_profile (the script's --profile)")
    sub.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="follow the job until it serves (default) or return at once")
    sub.add_argument("--timeout", type=float, help="stop following after this many seconds")
    sub.add_argument("--ssh", metavar="HOST",
                     help="work on HOST over SSH (~/.ssh/config alias or [user@]host[:port])")
    sub.add_argument("--trust-new-host", action="store_true",
                     help="accept and record an unknown SSH host key (check its fingerprint)")
    sub.add_argument("--env", action="append", metavar="NAME[=VALUE]",
                     help="add to the job's environment, repeatable; NAME alone passes its "
                     "value here (e.g. --env HF_TOKEN)")
    sub.add_argument("sglang_args", nargs=argparse.REMAINDER, help="-- then sglang's arguments")
    _verb(verbs, "status", "a job's status (default: the latest)", lambda a: _watch(
        a, api.StatusFrame) if a.watch else _show(a, api.job_view(api.find_job(a.job))), job=True,
          watch="redraw a live view (phase, replicas, metrics) until the job ends; plain "
                "lines when not a terminal")
    _verb(verbs, "endpoint", "a job's URL once healthy (exit 1 until then)", lambda a: _show(
        a, api.endpoint(api.find_job(a.job))), job=True)
    sub = _verb(verbs, "cancel", "scancel a job and confirm it ended", lambda a: _show(
        a, api.cancel(api.find_job(a.job), timeout=a.timeout or 60)), job=True)
    sub.add_argument("--timeout", type=float, help="seconds to wait (default 60)")
    sub = _verb(verbs, "logs", "a job's driver log, or one rank's", cmd_logs, job=True)
    sub.add_argument("--node", help="this node's rank log")
    sub.add_argument("--rank", type=int, help="this rank's log")
    sub.add_argument("--follow", "-F", action="store_true", help="keep reading until it ends")
    _verb(verbs, "metrics", "a ready job's servers' and router's metrics", lambda a: _watch(
        a, api.MetricsFrame) if a.watch else _show(a, api.metrics(api.find_job(a.job))),
          json_help="print JSON (a line a refresh)", job=True,
          watch="refresh the table in place until Ctrl-C or the job ends")
    sub = _verb(verbs, "tunnel", "reach a job's API at http://127.0.0.1:PORT", cmd_tunnel,
                json_help=None, job=True)
    sub.add_argument("--local-port", type=port, help="port on 127.0.0.1 (default: any free one)")
    sub = _verb(verbs, "smoke", "the seed's API checks against a server", lambda a: _show(
        a, api.smoke(a.target, model=a.model, api_key=bench.read_api_key(None, os.environ),
                     timeout=a.timeout)),
        json_help=one_json)
    sub.add_argument("target", nargs="?", metavar="URL|JOB",
                     help="http://HOST:PORT, or JOB or HOST:JOB (default: the latest job)")
    sub.add_argument("--model", help="model name (default: the first of /v1/models)")
    sub.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    sub = _verb(verbs, "bench", "sglang's serving benchmark against a job or URL", lambda a: _write(
        bench.compare_files(a.reports) + "\n") if a.target == "compare" or a.reports else _show(
        a, api.bench(a.target, bench.parse_types(a.type), bench.settings_from(vars(a)),
                     python=a.python, output_dir=Path(a.output_dir) if a.output_dir else None,
                     plot=Path(a.plot) if a.plot else None, progress=_progress(a),
                     api_key=bench.read_api_key(a.api_key_file, os.environ), client=a.client,
                     client_mounts=a.client_mount or (),
                     client_env=bench.parse_assignments(a.client_env, "--client-env"))),
        json_help=one_json)
    sub.add_argument("target", nargs="?", metavar="JOB|URL",
                     help="job id (default: the newest) or the server's URL; or `compare A B`")
    sub.add_argument("reports", nargs="*", metavar="A B", help=argparse.SUPPRESS)
    sub.add_argument("--type", action="append", metavar="T[,T...]", help="throughput (default), "
                     "prefill, decode, latency, concurrency, sharegpt, or all; repeatable")
    bench.add_settings_arguments(sub)
    sub.add_argument("--python", metavar="PATH", help="a python that imports sglang (default: "
                     "$SLURM_SGLANG_BENCH_PYTHON, else this one)")
    sub.add_argument("--api-key-file", metavar="FILE", help="the server's API key, in a file of "
                     "yours alone (default: $SLURM_SGLANG_API_KEY)")
    sub.add_argument("--client", choices=("auto", "local", "job"), default="auto", help="where "
                     "sglang's client runs: here, or in the job's image on its head node "
                     "(auto: here when sglang imports here)")
    sub.add_argument("--client-mount", action="append", metavar="SRC[:DST]",
                     help="a mount for the client's container (--client job); repeatable")
    sub.add_argument("--client-env", action="append", metavar="NAME=VALUE",
                     help="a variable for the client (--client job; not for secrets)")
    sub.add_argument("--output-dir", metavar="DIR",
                     help="where results go (default: the job's logs/<job>/bench/)")
    sub.add_argument("--plot", metavar="FILE.png",
                     help="draw latency and throughput against concurrency or size")
    _verb(verbs, "list", "recorded jobs, newest first", lambda a: _show(a, api.list_jobs()))
    kinds = _verb(verbs, "profiles", "cluster profiles: list, show, validate, init", None,
                  json_help=None).add_subparsers(dest="profiles_verb", required=True,
                                                 parser_class=_Parser)
    _verb(kinds, "list", "the built-in profiles", lambda a: _show(a, api.profiles()))
    _verb(kinds, "show", "a profile resolved (extends, defaults)", lambda a: _show(
        a, api.show_profile(a.profile)),
          json_help="print JSON instead of YAML").add_argument(
        "profile", metavar="NAME|FILE", help="built-in name or YAML file")
    _verb(kinds, "validate", "every error with its YAML line", lambda a: _show(
        a, api.validate_profiles(a.files), failed=2)).add_argument(
        "files", nargs="+", metavar="FILE", help="profile YAML files")
    sub = _verb(kinds, "init", "a commented starting profile", cmd_profile_init, json_help=None)
    sub.add_argument("--from", dest="from_profile", default="default", metavar="NAME|FILE",
                     help="start from this profile's values (default: default)")
    sub.add_argument("-o", "--output", help="new file to write (default: standard output)")
    _verb(kinds, "schema", "JSON Schema, for editors",
          lambda a: _write(json.dumps(api.profile_schema(), indent=2) + "\n"), json_help=None)
    sub = _verb(verbs, "preflight", "inside an allocation: check the fabric", lambda a: (
        api.preflight_nccl(a.cluster, _after_dashes(a.script_args), _templates())),
                json_help=None, cluster=True)
    sub.add_argument("--nccl", action="store_true", required=True,
                     help="time an all-reduce over every GPU of every node (the one check)")
    sub.add_argument("script_args", nargs=argparse.REMAINDER,
                     help="-- then run.sbatch options (--image, --workspace, ...)")
    kinds = _verb(verbs, "image", "the image tarball run.sbatch loads on every node", None,
                  json_help=None).add_subparsers(dest="image_verb", required=True,
                                                 parser_class=_Parser)
    sub = _verb(kinds, "save", "docker|podman save an image (pulled if missing), compressed, "
                "atomically", lambda a: _show(a, api.save_image(
                    a.reference, Path(a.output), a.cluster, container_cli=a.container_cli or "",
                    pull=a.pull, force=a.force, progress=_progress(a))),
                json_help=one_json, cluster=True)
    sub.add_argument("reference", metavar="REF",
                     help="image reference, e.g. lmsysorg/sglang:latest")
    sub.add_argument("-o", "--output", default="sglang-serve-latest.tar.gz", metavar="FILE",
                     help=".tar.gz (pigz, else gzip), .tar.zst or .tar (default: "
                          "sglang-serve-latest.tar.gz, run.sbatch's default)")
    sub.add_argument("--container-cli", metavar="CLI",
                     help="docker or podman (default: the profile's container runtime)")
    sub.add_argument("--pull", action="store_true", help="pull REF even when it is present here")
    sub.add_argument("-f", "--force", action="store_true", help="replace FILE when it exists")
    sub = _verb(verbs, "sandbox", "a local multi-node SLURM cluster (root)", cmd_sandbox,
                json_help=one_json)
    sub.add_argument("sandbox_verb", choices=["up", "down", "status", "demo"])
    sub.add_argument("--nodes", type=nodes, default=4, help="nodes for up (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors.py: one per kind of error)."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.handler(args)
        # Written out here, inside the try: a reader that left (`status | head -1`) is then a
        # BrokenPipeError below, not a traceback when the interpreter flushes at exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Later writes (and the flush at exit) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UserInputError as exc:
        print(f"{PROG}: error: {str(exc).replace(chr(10), '; ')}", file=sys.stderr)
        return exc.exit_code
    except SlurmSglangError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
