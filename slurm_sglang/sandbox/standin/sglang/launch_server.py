"""`python3 -m sglang.launch_server`: the stand-in's entry point, one process per node.

Node rank 0 forms the group, loads, binds --host:--port, warms up and serves the API;
other ranks join it, load, and serve only the dummy health check, ignoring SIGTERM. After a
worker dies the head keeps running, blocks at its next forward batch, and ignores SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, NoReturn

from . import __version__
from .group import PROTOCOL as GROUP_PROTOCOL
from .group import HeadGroup, Message, WorkerGroup, parse_dist_init_addr
from .http_server import HeadHandler, StandinHTTPServer, WorkerHealthHandler, bind_http
from .node import GpuError, check_gpus, gpus_per_node, node_gpus, node_hostname, node_ip
from .server_args import ServerArgsError, describe, parse_server_args
from .service import HeadService
from .settings import StandinSettings
from .standin_log import fatal, log, set_rank_prefix

AVAILABLE_MEMORY_GB = 79.1


def _wait_forever() -> NoReturn:
    while True:
        time.sleep(3600)


def _serve_in_background(server: StandinHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _describe_rank(args: argparse.Namespace, argv: list[str]) -> Message:
    return {
        "type": "join",
        "protocol": GROUP_PROTOCOL,
        "node_rank": args.node_rank,
        "nnodes": args.nnodes,
        "model_path": args.model_path,
        "tp_size": args.tp_size,
        "pp_size": args.pp_size,
        "hostname": node_hostname(),
        "ip": node_ip(),
        "pid": os.getpid(),
        "gpus": node_gpus(args),
        "argv": argv,
    }


def _load_weights(
    args: argparse.Namespace, settings: StandinSettings, gpus: dict[str, Any]
) -> None:
    """Imitate model loading: wait, then claim the GPUs (failing as CUDA would)."""
    log(f"Load weight begin. avail mem={AVAILABLE_MEMORY_GB:.2f} GB")
    time.sleep(settings.load_seconds)
    check_gpus(gpus, settings.gpus_on_node)
    log(
        f"Load weight end. elapsed={settings.load_seconds:.2f} s, type=StandinForCausalLM, "
        f"dtype={args.dtype}, avail mem={AVAILABLE_MEMORY_GB - 1:.2f} GB, mem usage=1.00 GB."
    )


def _dist_timeout(args: argparse.Namespace, settings: StandinSettings) -> float:
    return (
        float(args.dist_timeout) if args.dist_timeout is not None else settings.dist_timeout_seconds
    )


def run_head(args: argparse.Namespace, argv: list[str], settings: StandinSettings) -> NoReturn:
    """Node rank 0: form the group, load, serve the API once everyone has loaded."""
    group: HeadGroup | None = None

    def shut_down(signum: int, frame: FrameType | None) -> None:
        if group is not None and group.peer_gone.is_set() and signum == signal.SIGTERM:
            # Its ShutdownReq would need the dead peer: sglang's head waits, and the
            # launcher has to kill it.
            log("SIGTERM received; gracefully exiting once the running batch finishes")
            return
        log(f"Received {signal.Signals(signum).name}; sending ShutdownReq to every rank.")
        if group is not None:
            group.shutdown()
        fatal("Shutdown complete.", exit_code=0)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    me = _describe_rank(args, argv)
    log("Init parallel begin.")
    ranks = [me]
    if args.dist_init_addr:
        group = HeadGroup(me, args.dist_init_addr, settings)
        ranks = group.form(_dist_timeout(args, settings))
        if args.nnodes > 1:
            log(f"The process group spans across nodes: {[rank['hostname'] for rank in ranks]}")
    log("Init parallel ends")
    try:
        _load_weights(args, settings, me["gpus"])
    except GpuError as error:
        fatal(str(error))
    if group is not None:
        group.wait_loaded()
    service = HeadService(args, ranks, settings.token_seconds)
    service.first_token_seconds = settings.first_token_seconds
    service.fault = settings.fault
    service.fault_every = settings.fault_every
    if group is not None:
        head_group = group
        service.before_forward = lambda: head_group.block_on_collective(args.watchdog_timeout)
    handler = type("BoundHeadHandler", (HeadHandler,), {"service": service})
    _serve_in_background(bind_http(args.host, args.port, handler, str(me["hostname"])))
    if not args.skip_server_warmup:
        time.sleep(settings.warmup_seconds)
        log("End of prefill warmup with status 200, resp: [{'text': ' the', 'meta_info': {}}]")
    service.ready.set()
    log("The server is fired up and ready to roll!")
    _wait_forever()


def run_worker(args: argparse.Namespace, argv: list[str], settings: StandinSettings) -> NoReturn:
    """Node rank >= 1: join rank 0, load, serve the dummy health check; SIGTERM is ignored."""

    def ignore_sigterm(signum: int, frame: FrameType | None) -> None:
        log(
            f"SIGTERM received on node_rank {args.node_rank}; waiting for the rank-0 "
            "ShutdownReq broadcast"
        )

    def interrupt(signum: int, frame: FrameType | None) -> None:
        fatal("KeyboardInterrupt", exit_code=130)

    signal.signal(signal.SIGTERM, ignore_sigterm)
    signal.signal(signal.SIGINT, interrupt)
    log("Init parallel begin.")
    me = _describe_rank(args, argv)
    group = WorkerGroup(me, args.dist_init_addr, settings)
    group.join(_dist_timeout(args, settings))
    log("The process group spans across nodes.")
    log("Init parallel ends")
    try:
        _load_weights(args, settings, me["gpus"])
    except GpuError as error:
        log(str(error))
        group.report_error(f"{error} on {node_hostname()}")
        time.sleep(0.2)  # let rank 0 read the reason before this link closes
        fatal("Exiting: this node failed to load.")
    server = bind_http(args.host, args.port, WorkerHealthHandler, node_hostname())
    group.report_loaded()
    _serve_in_background(server)
    log(f"Dummy health check server started on node_rank {args.node_rank}.")
    _wait_forever()


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse sglang's flags, then run this node's rank of the group."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_server_args(arguments)
        settings = StandinSettings.from_environ()
        if args.dist_init_addr:
            parse_dist_init_addr(args.dist_init_addr)
    except (ServerArgsError, ValueError) as error:
        sys.stderr.write(f"ValueError: {error}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
    first_tp_rank = args.node_rank * (gpus_per_node(args) // max(args.dp_size, 1))
    set_rank_prefix(f" TP{first_tp_rank}")
    log(f"sglang {__version__} STAND-IN (no GPU, no model; for tests and the sandbox only)")
    log(describe(args))
    if args.node_rank == 0:
        run_head(args, arguments, settings)
    run_worker(args, arguments, settings)


if __name__ == "__main__":
    main()
