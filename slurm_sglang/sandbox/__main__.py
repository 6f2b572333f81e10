"""`python -m slurm_sglang.sandbox up [--nodes N] | down | status [--json]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from slurm_sglang.sandbox.cluster import sandbox_down, sandbox_status, sandbox_up
from slurm_sglang.sandbox.host import SandboxError


def build_parser() -> argparse.ArgumentParser:
    """The sandbox's argument parser (also reusable as a sub-command of the main CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m slurm_sglang.sandbox",
        description="A local multi-node SLURM cluster: namespaced nodes, fake GPUs, podman.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start the sandbox (or keep it, or reshape it)")
    up.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    up.add_argument("--gpus-per-node", type=int, default=8, help="fake GPUs per node (default 8)")
    up.add_argument(
        "--no-install",
        action="store_true",
        help="never run apt-get; print the install line instead",
    )
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    down = verbs.add_parser("down", help="stop the sandbox and undo its changes")
    down.add_argument(
        "--purge", action="store_true", help="also delete the shared workspace and logs"
    )
    status = verbs.add_parser("status", help="say whether the sandbox is up, and its nodes")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sandbox verb; 0 on success, 1 on a sandbox error (message on stderr)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="slurm-sglang sandbox: %(message)s",
    )
    try:
        if args.verb == "up":
            info = sandbox_up(args.nodes, args.gpus_per_node, allow_install=not args.no_install)
            print(json.dumps(info.to_json(), indent=2) if args.json else info.summary())
        elif args.verb == "down":
            sandbox_down(purge=args.purge)
            print("sandbox down")
        else:
            current = sandbox_status()
            if args.json:
                print(json.dumps(current.to_json() if current else None, indent=2))
            else:
                print(
                    current.summary().replace("sandbox up:", "sandbox is up:", 1)
                    if current
                    else "sandbox is down"
                )
            return 0 if current else 3
    except SandboxError as error:
        print(f"slurm-sglang sandbox: {error}", file=sys.stderr)
        if args.verb == "up":
            print(
                "slurm-sglang sandbox: `down` removes whatever this `up` started; logs are in "
                "the state directory's log/",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
