"""Command line: parse, call the API, print. Nothing here decides anything."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "slurm-sglang"
EXIT_USAGE = 2


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

    report = api.check(args.sglang_args, args.cluster, args.nodes)
    par = report.parallelism
    summary = {
        "ok": report.ok,
        "nodes": report.nodes,
        "gpus_per_node": report.profile.slurm.gpus_per_node,
        "parallelism": {"tp": par.tp, "pp": par.pp, "dp": par.dp, "ep": par.ep,
                        "attention_dp": par.dp_attention, "replicas": par.replicas},
        "sglang_args": list(report.spec.sglang_args),
        "problems": report.problems,
        "notes": report.notes,
    }
    lines = [
        f"nodes {report.nodes} x {report.profile.slurm.gpus_per_node} GPUs; "
        f"tp {par.tp} pp {par.pp} dp {par.dp} ep {par.ep}"
        + (" (attention DP)" if par.dp_attention else "")
        + f"; {par.total_gpus} GPUs in {par.replicas} server(s)",
        *(f"note: {note}" for note in report.notes if note not in report.problems),
        *(f"problem: {problem}" for problem in report.problems),
        "ok" if report.ok else "not ok",
    ]
    _emit(args, summary, "\n".join(lines))
    return 0 if report.ok else EXIT_USAGE


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Bring the local multi-node sandbox up or down, or show it."""
    from slurm_sglang.sandbox import cluster

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    render.add_argument("--nodes", type=_positive_int, help="add #SBATCH --nodes=N")
    render.add_argument("-o", "--output", help="file to write (default: standard output)")
    render.set_defaults(handler=cmd_render)

    check = verbs.add_parser("check", help="check sglang arguments against a profile")
    _profile_cluster_option(check)
    check.add_argument("--nodes", type=_positive_int, help="nodes to check against")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("sglang_args", nargs=argparse.REMAINDER, help="-- then sglang's arguments")
    check.set_defaults(handler=cmd_check)

    sandbox = verbs.add_parser("sandbox", help="a local multi-node SLURM cluster (root)")
    sandbox.add_argument("sandbox_verb", choices=["up", "down", "status"])
    sandbox.add_argument("--nodes", type=_positive_int, default=4, help="nodes for up (default 4)")
    sandbox.add_argument("--json", action="store_true", help="print one JSON object")
    sandbox.set_defaults(handler=cmd_sandbox)
    return parser


def _version() -> str:
    from slurm_sglang import __version__

    return __version__


def _strip_separator(args: argparse.Namespace) -> None:
    rest = getattr(args, "sglang_args", None)
    if rest and rest[0] == "--":
        args.sglang_args = rest[1:]


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
    except KeyboardInterrupt:
        return 130
