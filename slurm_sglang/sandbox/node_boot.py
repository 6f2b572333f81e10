"""Boot one sandbox node inside fresh UTS and mount namespaces, then exec its daemon.

Run as `nsenter --net=... unshare --uts --mount --propagation private python -m
slurm_sglang.sandbox.node_boot --hostname sbn1 --bind SRC:DST --tmpfs DST -- slurmd -N sbn1`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from slurm_sglang.transport.local import run_local


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the boot options; everything after `--` is the daemon's argv."""
    parser = argparse.ArgumentParser(prog="python -m slurm_sglang.sandbox.node_boot")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    parser.add_argument("--tmpfs", action="append", default=[], metavar="DST")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the daemon's argv after --")
    return args


def _mount(argv: list[str]) -> None:
    completed = run_local(argv)
    if completed.returncode != 0:
        sys.exit(f"node_boot: {' '.join(argv)} failed: {completed.stderr.strip()}")


def main(argv: Sequence[str] | None = None) -> None:
    """Set the hostname, mount the node's private directories, and exec the daemon."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    socket.sethostname(args.hostname)
    for pair in args.bind:
        source, target = pair.split(":", 1)
        _mount(["mount", "--bind", source, target])
    for target in args.tmpfs:
        mode = "1777" if target == "/dev/shm" else "0755"
        _mount(["mount", "-t", "tmpfs", "-o", f"mode={mode}", "tmpfs", target])
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    main()
