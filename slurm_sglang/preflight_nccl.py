#!/usr/bin/env python3
"""NCCL pre-flight: prove the fabric with a timed all-reduce before the model loads.

Self-contained (Python 3.8+ standard library and torch only): it is copied to every node and
run there, one invocation per node, inside the serving image or venv. docs/preflight.md
explains it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

KEY = "preflight/"
# The environment each node prints first: the fabric's variables; secrets by name are hidden.
SHOWN = re.compile(r"(NCCL_|FI_|TORCH_NCCL_|NVSHMEM_).*|GLOO_SOCKET_IFNAME|SGLANG_HOST_IP"
                   r"|CUDA_VISIBLE_DEVICES|TORCH_SYMM_MEM_DISABLE_MULTICAST")
SECRET = re.compile("KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
POLL_SECONDS = 0.1
ACK_SECONDS = 10.0


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """Read '1M,16M,256M' (binary K/M/G suffixes, or plain bytes) into (label, bytes) pairs."""
    sizes = []
    for item in filter(None, (item.strip().upper() for item in text.split(","))):
        match = re.fullmatch(r"(\d+)([KMG]?)", item)
        if not match or int(match[1]) == 0:
            raise ValueError(f"bad message size {item!r}: use e.g. 1M, 512K, 1G or bytes")
        scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2]]
        sizes.append((item, max(4, int(match[1]) * scale // 4 * 4)))  # whole float32 elements
    if not sizes:
        raise ValueError("no message size given")
    return sizes


def interface_problem(variable: str, value: str, available: list[str], node: str) -> str | None:
    """Why VARIABLE=VALUE names no interface here, or None (NCCL: name prefixes, '=' exact,
    '^' exclude; gloo: exact names)."""
    if not value or value.startswith("^"):
        return None
    exact = variable != "NCCL_SOCKET_IFNAME" or value.startswith("=")
    for name in filter(None, (name.strip() for name in value.lstrip("=").split(","))):
        if any(have == name if exact else have.startswith(name) for have in available):
            return None
    return f"{variable}={value}: no such interface on {node} (it has: {', '.join(available)})"


def describe_failure(message: str, backend: str, node: str, rank: int, stage: str) -> str:
    """Turn a backend exception text into one line that names the node and the likely fix."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["no message"]
    first, last_error = lines[0], ""
    for index, line in enumerate(lines):
        if line.startswith("Last error"):  # NCCL may put the reason on the next line
            last_error = line.partition(":")[2].strip() or " ".join(lines[index + 1 : index + 2])
    if first.startswith("NCCL error in:"):  # drop torch's source location, keep NCCL's words
        first = "NCCL " + first.partition(", ")[2]
    detail = first + (f" (Last error: {last_error})" if last_error else "")
    where = f"on {node} (rank {rank}, {stage})"
    if "Duplicate GPU" in message:
        return f"two ranks share one GPU {where}: give each rank its own GPU; {detail}"
    if "socket interface" in message or "NCCL_SOCKET_IFNAME" in message:
        value = os.environ.get("NCCL_SOCKET_IFNAME", "<unset>")
        return f"NCCL_SOCKET_IFNAME={value}: NCCL found no usable interface {where}: {detail}"
    return f"{backend} error {where}: {detail}"


def shown_environment() -> list[str]:
    """The fabric variables this run sees, as NAME=value lines, secrets masked."""
    return [f"{name}={'<hidden>' if SECRET.search(name) else value}"
            for name, value in sorted(os.environ.items()) if SHOWN.fullmatch(name)]


def build_parser() -> argparse.ArgumentParser:
    """The command line: one invocation per node."""
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--nnodes", type=int, required=True)
    add("--node-rank", type=int, required=True)
    add("--master-addr", required=True, help="the head node's address")
    add("--master-port", type=int, required=True, help="a free TCP port there")
    add("--nodes", default="", help="node names in node-rank order, a,b,c")
    add("--gpus-per-node", "--procs-per-node", dest="procs", type=int, default=0,
        help="ranks per node (default: every visible GPU with nccl, one with gloo)")
    add("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    add("--sizes", default="1M,16M,64M,256M")
    add("--iters", type=int, default=20)
    add("--warmup", type=int, default=5)
    add("--join-timeout", type=float, default=60.0)
    add("--timeout", type=float, default=300.0, help="deadline of the run")
    add("--min-busbw-gbps", type=float, default=0.0)
    add("--no-interface-check", action="store_true", help="leave NCCL_SOCKET_IFNAME to NCCL")
    add("--worker-rank", type=int, default=-1, help=argparse.SUPPRESS)  # a launcher's child
    return parser


class Run:
    """One node's view of the check: its options, node names, layout and deadlines."""

    def __init__(self, options: argparse.Namespace, started: float) -> None:
        names = [name for name in options.nodes.split(",") if name]
        if names and len(names) != options.nnodes:
            raise ValueError(f"--nodes names {len(names)} nodes, --nnodes is {options.nnodes}")
        if not 0 <= options.node_rank < options.nnodes:
            raise ValueError(f"--node-rank {options.node_rank} is outside 0..{options.nnodes - 1}")
        self.names: list[str] = names or [f"node-rank {rank}" for rank in range(options.nnodes)]
        if not names:  # without --nodes a node calls itself as SLURM or the host does
            self.names[options.node_rank] = os.getenv("SLURMD_NODENAME") or socket.gethostname()
        self.options, self.sizes = options, parse_sizes(options.sizes)
        self.node = self.names[options.node_rank]
        self.deadline: float = started + options.timeout
        self.join_deadline: float = started + options.join_timeout
        self.head_ready = False  # the head's own ranks joined: its join clock runs from then
        self.backend: str = options.backend  # prepare_node settles both on a launcher
        self.procs: int = options.procs

    @property
    def world(self) -> int:
        """Number of ranks over all nodes."""
        return int(self.options.nnodes * self.procs)

    def connect(self, is_master: bool, until: float) -> Any:
        """Open the rendezvous store at master-addr:port (the head's launcher serves it)."""
        return import_torch()[1].TCPStore(
            self.options.master_addr, self.options.master_port, is_master=is_master,
            wait_for_workers=False, timeout=timedelta(seconds=max(1.0, until - time.time())))


def import_torch() -> tuple[Any, Any]:
    """torch and torch.distributed, imported late and typed loosely: any recent torch will do."""
    return importlib.import_module("torch"), importlib.import_module("torch.distributed")


def read(store: Any, key: str, default: str = "") -> str:
    """The value of KEY, or default while the store lacks it (never blocks)."""
    return bytes(store.get(KEY + key)).decode() if store.check([KEY + key]) else default


def publish(store: Any, verdict: str) -> None:
    """Make this the run's verdict unless one is out already: the first failure wins."""
    store.compare_set(KEY + "verdict", "", verdict)


def one_line(text: object) -> str:
    """Squash a message onto one line, for the machine-readable verdict."""
    return " ".join(str(text).split())


def time_all_reduce(tensor: Any, run: Run, rank: int) -> float:
    """Check one all-reduce's sum, warm up, then return the median seconds of the timed ones
    (CUDA events on a GPU: a host clock would time the launch)."""
    torch, dist = import_torch()
    tensor.fill_(rank + 1)
    dist.all_reduce(tensor)
    expected = run.world * (run.world + 1) / 2
    if {tensor[0].item(), tensor[-1].item()} != {expected}:
        raise RuntimeError(f"all_reduce summed to {tensor[-1].item()}, not {expected}")
    for _ in range(run.options.warmup):
        dist.all_reduce(tensor)
    samples: list[Any] = []
    for _ in range(run.options.iters):
        if tensor.is_cuda:
            samples.append([torch.cuda.Event(enable_timing=True) for _ in "se"])
            samples[-1][0].record()
            dist.all_reduce(tensor)
            samples[-1][1].record()
        else:
            began = time.perf_counter()
            dist.all_reduce(tensor)
            samples.append(time.perf_counter() - began)
    if tensor.is_cuda:
        torch.cuda.synchronize()
        samples = [start.elapsed_time(end) / 1e3 for start, end in samples]
    return float(statistics.median(samples))


def run_worker(run: Run, local_rank: int) -> int:
    """One rank: join, init the process group, time every size, publish its medians."""
    torch, dist = import_torch()
    rank, stage = run.options.node_rank * run.procs + local_rank, "init_process_group"
    store = run.connect(False, run.deadline)
    try:
        store.set(f"{KEY}rank/{rank}", run.node)  # joined: the head can name who is missing
        store.set(f"{KEY}stage/{rank}", stage)
        device = torch.device("cuda", local_rank) if run.backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # NCCL is created eagerly (device_id): its errors come here, not in the first collective.
        dist.init_process_group(
            run.backend, store=dist.PrefixStore("pg/", store), rank=rank, world_size=run.world,
            timeout=timedelta(seconds=max(1.0, run.deadline - time.time())),
            device_id=device if device.type == "cuda" else None)
        medians = {}
        for label, nbytes in run.sizes:
            stage = f"all_reduce {label}"
            store.set(f"{KEY}stage/{rank}", stage)
            tensor = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
            medians[label] = time_all_reduce(tensor, run, rank)
        store.set(f"{KEY}result/{rank}", json.dumps({"node": run.node, "seconds": medians}))
        dist.destroy_process_group()
        return 0
    except Exception as error:  # any backend failure becomes the verdict, named by node
        text = describe_failure(str(error), run.backend, run.node, rank, stage)
        print(f"preflight: rank {rank}: {text}\n{str(error)[:2000]}", file=sys.stderr, flush=True)
        try:
            publish(store, f"preflight: FAILED {text}")
        finally:  # a broken communicator can hang in teardown: leave at once
            os._exit(1)


def report(run: Run, results: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The head's table and verdict: per size the slowest rank's median, algbw and busbw
    (algbw * 2(n-1)/n, as nccl-tests counts); per node its slowest rank at the largest size."""
    world, floor, largest = run.world, run.options.min_busbw_gbps, run.sizes[-1][0]
    lines = [f"preflight: {run.backend} all-reduce of float32, {world} ranks on "
             f"{run.options.nnodes} node(s), {run.procs} per node, "
             f"median of {run.options.iters} iterations",
             f"{'size':>8} {'time_us':>12} {'algbw_GB/s':>12} {'busbw_GB/s':>12}"]
    busbw = {}
    for label, nbytes in run.sizes:
        seconds = max(result["seconds"][label] for result in results)
        busbw[label] = nbytes / seconds / 1e9 * 2 * (world - 1) / world
        lines.append(f"{label:>8} {seconds * 1e6:>12.1f} {nbytes / seconds / 1e9:>12.2f} "
                     f"{busbw[label]:>12.2f}")
    per_node: dict[str, float] = {}
    for result in results:
        per_node[result["node"]] = max(per_node.get(result["node"], 0), result["seconds"][largest])
    slowest = max(per_node, key=lambda node: per_node[node])
    lines += [f"per node at {largest}:"]
    lines += [f"  {node:<24} {seconds * 1e6:>12.1f} us" for node, seconds in per_node.items()]
    lines += [f"slowest node: {slowest}"]
    if world == 1:
        lines += ["note: one rank moves no data over any link, so its bus bandwidth is 0 by "
                  "definition"]
    if floor > 0 and world > 1 and busbw[largest] < floor:
        return lines, (f"preflight: FAILED busbw {busbw[largest]:.2f} GB/s at {largest} is under"
                       f" the floor of {floor:.2f} GB/s (slowest node: {slowest})")
    return lines, f"preflight: ok busbw_max={max(busbw.values()):.2f} slowest={slowest}"


def judge_progress(run: Run, store: Any) -> None:
    """The head's turn: publish the report's verdict, or who did not join, or who is late."""
    ranks, now = range(run.world), time.time()
    if not run.head_ready and store.check([f"{KEY}rank/{rank}" for rank in range(run.procs)]):
        # A slow import of torch on the head is not blamed on the other nodes, nor on the head.
        run.head_ready, run.join_deadline = True, now + run.options.join_timeout
    if store.check([f"{KEY}result/{rank}" for rank in ranks]):
        lines, verdict = report(run, [json.loads(read(store, f"result/{rank}")) for rank in ranks])
        print("\n".join(lines), flush=True)
        publish(store, verdict)
    elif run.head_ready and now > run.join_deadline and not store.check(
            [f"{KEY}rank/{rank}" for rank in ranks]):
        missing: dict[str, list[str]] = {}
        for rank in (rank for rank in ranks if not store.check([f"{KEY}rank/{rank}"])):
            missing.setdefault(run.names[rank // run.procs], []).append(str(rank))
        publish(store, f"preflight: FAILED did not join within {run.options.join_timeout:g} s: "
                + "; ".join(f"{node} (ranks {', '.join(ids)})" for node, ids in missing.items()))
    elif now > run.deadline:
        stuck = [f"rank {rank} on {run.names[rank // run.procs]} in "
                 f"{read(store, f'stage/{rank}', 'join')}"
                 for rank in ranks if not store.check([f"{KEY}result/{rank}"])]
        publish(store, f"preflight: FAILED no result within {run.options.timeout:g} s: "
                + ", ".join(stuck[:8]) + (" ..." if len(stuck) > 8 else ""))


def prepare_node(run: Run) -> str | None:
    """Settle the backend and the ranks here (imports torch); say what makes the check
    pointless on this node: a missing interface, too few GPUs."""
    torch, dist = import_torch()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if run.backend == "auto":
        run.backend = "nccl" if gpus and dist.is_nccl_available() else "gloo"
    run.procs = run.procs or (gpus if run.backend == "nccl" else 0) or 1
    interfaces = sorted(name for _, name in socket.if_nameindex())
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if variable == "NCCL_SOCKET_IFNAME" and run.options.no_interface_check:
            continue
        problem = interface_problem(variable, os.environ.get(variable, ""), interfaces, run.node)
        if problem:
            return problem
    if run.backend == "nccl" and gpus < run.procs:
        return f"{run.node} sees {gpus} GPU(s), the check needs {run.procs} (one per rank)"
    return None


def await_verdict(run: Run, store: Any, workers: list[subprocess.Popen[bytes]]) -> str:
    """Until a verdict is out: name a local rank that died without one; the head judges."""
    while not store.check([KEY + "verdict"]):
        for local_rank, worker in enumerate(workers):
            if worker.poll():  # a rank that failed published why before it exited: a crash
                rank = run.options.node_rank * run.procs + local_rank
                publish(store, f"preflight: FAILED rank {rank} on {run.node} exited with code "
                        f"{worker.returncode} (its stderr is above)")
        if run.options.node_rank == 0:
            judge_progress(run, store)
        elif time.time() > run.deadline + ACK_SECONDS:
            return (f"preflight: FAILED {run.node} got no verdict from the head "
                    f"{run.options.master_addr}:{run.options.master_port} in time")
        time.sleep(POLL_SECONDS)
    return read(store, "verdict")


def linger(run: Run, store: Any) -> None:
    """Keep the head's store up after the verdict until every node that joined, or may still
    join, has read it (ACK_SECONDS at most)."""
    give_up = time.time() + ACK_SECONDS
    while time.time() < give_up:
        joined = store.add(KEY + "nodes", 0)
        if store.add(KEY + "acks", 0) >= joined and (
                joined == run.options.nnodes - 1 or time.time() > run.join_deadline):
            return
        time.sleep(POLL_SECONDS)


def run_node(run: Run) -> str:
    """One node's launcher: check locally, rendezvous, start the ranks; return the verdict."""
    options, is_head = run.options, run.options.node_rank == 0
    head = f"{options.master_addr}:{options.master_port}"
    print(f"preflight: node {run.node} (node rank {options.node_rank} of {options.nnodes}), "
          f"head {head}")
    print("".join(f"preflight: env {line}\n" for line in shown_environment()), end="", flush=True)
    environment = dict(os.environ)
    # The store client logs a C++ stack for every refused connection; the verdict says it better.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    try:
        problem = prepare_node(run)
    except ImportError as error:
        return (f"preflight: FAILED torch is not importable on {run.node} ({sys.executable}): "
                f"{error}")
    if problem:
        print(f"preflight: {problem}", flush=True)
    try:
        socket.getaddrinfo(options.master_addr, options.master_port)
        store = run.connect(is_head, run.deadline if is_head else run.join_deadline)
    except Exception as error:  # the store's own errors say little: name both ends
        role = "serve the rendezvous at" if is_head else "reach the head at"
        return (f"preflight: FAILED {problem + '; ' if problem else ''}{run.node} could not "
                f"{role} {head}: {one_line(error)[:300]}")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if is_head:
            store.set(KEY + "procs", str(run.procs))
        else:
            store.add(KEY + "nodes", 1)
            head_procs = int(store.get(KEY + "procs"))
            if head_procs != run.procs and not problem:
                problem = (f"{run.node} starts {run.procs} ranks, the head {head_procs}: "
                           "give every node the same --gpus-per-node")
        if problem:
            publish(store, f"preflight: FAILED {problem}")
        else:  # this same file, told the layout chosen here
            command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--backend",
                       run.backend, "--procs-per-node", str(run.procs), "--worker-rank"]
            workers = [subprocess.Popen([*command, str(local_rank)], env=environment)
                       for local_rank in range(run.procs)]
        verdict = await_verdict(run, store, workers)
        if is_head:
            linger(run, store)
        else:
            store.add(KEY + "acks", 1)
    except Exception as error:  # the head went away under us
        verdict = f"preflight: FAILED {run.node} lost the rendezvous: {one_line(error)[:300]}"
    finally:
        for worker in workers:  # end those still running (one hung in a collective, say)
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return verdict


def main(argv: list[str] | None = None) -> int:
    """Entry point: a node's launcher, or (hidden --worker-rank) one of its ranks."""
    options = build_parser().parse_args(argv)
    try:
        run = Run(options, time.time())
    except ValueError as error:
        verdict = f"preflight: FAILED {error}"
    else:
        if options.worker_rank >= 0:
            return run_worker(run, options.worker_rank)
        verdict = run_node(run)
    print(one_line(verdict), flush=True)
    return 0 if verdict.startswith("preflight: ok") else 1


if __name__ == "__main__":
    sys.exit(main())
