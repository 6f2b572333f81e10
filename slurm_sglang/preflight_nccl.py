#!/usr/bin/env python3
"""NCCL pre-flight: prove the fabric with a timed all-reduce before the model loads.

Self-contained (standard library and torch only): it is copied to every node and run there,
one invocation per node, inside the serving image or venv. docs/preflight.md explains it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

KEY = "preflight/"
SHOWN_PREFIXES = ("NCCL_", "FI_", "TORCH_NCCL_", "NVSHMEM_")
SHOWN_NAMES = (
    "GLOO_SOCKET_IFNAME",
    "SGLANG_HOST_IP",
    "CUDA_VISIBLE_DEVICES",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
)
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
POLL_SECONDS = 0.1
JOIN_EXIT_CODE = 3  # a worker that stopped waiting for the others: the head names who
ACK_SECONDS = 10.0


@dataclass(frozen=True)
class MessageSize:
    """One all-reduce message size: the label the user wrote and its bytes."""

    label: str
    nbytes: int


def parse_sizes(text: str) -> list[MessageSize]:
    """Read '1M,16M,256M' (binary K/M/G suffixes, or plain bytes) into message sizes."""
    multipliers = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for item in text.split(","):
        label = item.strip().upper()
        if not label:
            continue
        factor = multipliers.get(label[-1], 1)
        digits = label[:-1] if label[-1] in multipliers else label
        if not digits.isdigit() or int(digits) == 0:
            raise ValueError(f"bad message size {item!r}: use e.g. 1M, 512K, 1G or bytes")
        nbytes = max(4, int(digits) * factor // 4 * 4)  # whole float32 elements
        sizes.append(MessageSize(label, nbytes))
    if not sizes:
        raise ValueError("no message size given")
    return sizes


def bus_bandwidth_factor(world_size: int) -> float:
    """All-reduce bus bandwidth over algorithm bandwidth: 2(n-1)/n, as nccl-tests counts."""
    return 2.0 * (world_size - 1) / world_size


def interface_problem(variable: str, value: str, available: list[str], node: str) -> str | None:
    """Say why VARIABLE=VALUE names no interface present here, or None when one matches.

    NCCL reads a comma list of name prefixes, '=' for exact names and '^' to exclude;
    gloo reads exact names.
    """
    if not value or value.startswith("^"):
        return None
    exact = variable != "NCCL_SOCKET_IFNAME" or value.startswith("=")
    wanted = [name.strip() for name in value.lstrip("=").split(",") if name.strip()]
    for name in wanted:
        if any(have == name if exact else have.startswith(name) for have in available):
            return None
    return f"{variable}={value}: no such interface on {node} (it has: {', '.join(available)})"


def describe_failure(message: str, backend: str, node: str, rank: int, stage: str) -> str:
    """Turn a backend exception text into one line that names the node and the likely fix."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    last_error = ""
    for index, line in enumerate(lines):
        if line.startswith("Last error"):
            # NCCL puts the reason on the line after a bare "Last error:".
            reason = line.partition(":")[2].strip() or " ".join(lines[index + 1 : index + 2])
            last_error = f"Last error: {reason}"
    first = lines[0] if lines else "no message"
    if first.startswith("NCCL error in:"):  # drop torch's source location, keep NCCL's words
        first = "NCCL " + first.partition(", ")[2]
    detail = first + (f" ({last_error})" if last_error else "")
    where = f"on {node} (rank {rank}, {stage})"
    if "Duplicate GPU" in message:
        return f"two ranks share one GPU {where}: give each rank its own GPU; {detail}"
    if "socket interface" in message or "NCCL_SOCKET_IFNAME" in message:
        value = os.environ.get("NCCL_SOCKET_IFNAME", "<unset>")
        return f"NCCL_SOCKET_IFNAME={value}: NCCL found no usable interface {where}: {detail}"
    return f"{backend} error {where}: {detail}"


def shown_environment() -> list[str]:
    """The fabric variables this run sees, as NAME=value lines, secrets masked."""
    shown = []
    for name in sorted(os.environ):
        if name.startswith(SHOWN_PREFIXES) or name in SHOWN_NAMES:
            secret = any(marker in name.upper() for marker in SECRET_MARKERS)
            shown.append(f"{name}={'<hidden>' if secret else os.environ[name]}")
    return shown


def one_line(text: str) -> str:
    """Squash a message onto one line, for the final machine-readable verdict."""
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    """The command line: one invocation per node."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, required=True)
    parser.add_argument("--master-addr", required=True, help="the head node's address")
    parser.add_argument("--master-port", type=int, required=True, help="a free TCP port there")
    parser.add_argument("--nodes", default="", help="node names in node-rank order, a,b,c")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="default: all visible")
    parser.add_argument("--procs-per-node", type=int, default=0, help="gloo processes per node")
    parser.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    parser.add_argument("--sizes", default="1M,16M,64M,256M")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--join-timeout", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline of the run")
    parser.add_argument("--min-busbw-gbps", type=float, default=0.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-interface-check",
        action="store_true",
        help="leave NCCL_SOCKET_IFNAME to NCCL (to see NCCL's own error)",
    )
    parser.add_argument("--worker-local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--worker-procs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-backend", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


class Run:
    """What every process of one node's pre-flight knows: layout, names, deadlines."""

    def __init__(self, options: argparse.Namespace, started: float) -> None:
        self.options = options
        self.sizes = parse_sizes(options.sizes)
        self.names: list[str] = [name for name in options.nodes.split(",") if name]
        if self.names and len(self.names) != options.nnodes:
            raise ValueError(f"--nodes names {len(self.names)} nodes, --nnodes is {options.nnodes}")
        if not 0 <= options.node_rank < options.nnodes:
            raise ValueError(f"--node-rank {options.node_rank} is outside 0..{options.nnodes - 1}")
        self.node: str = (
            self.node_label(options.node_rank)
            if self.names
            else (os.environ.get("SLURMD_NODENAME") or socket.gethostname())
        )
        # Workers inherit the node's deadline as a wall-clock instant, so one run has one clock.
        self.join_deadline: float = started + options.join_timeout
        self.deadline: float = options.worker_deadline or started + options.timeout
        self.procs: int = options.worker_procs
        self.backend: str = options.worker_backend

    def node_label(self, node_rank: int) -> str:
        """The name of a node by its rank, as --nodes gave it."""
        return self.names[node_rank] if self.names else f"node-rank {node_rank}"

    @property
    def world(self) -> int:
        """Number of ranks over all nodes."""
        nnodes: int = self.options.nnodes
        return nnodes * self.procs

    def remaining(self) -> float:
        """Seconds left before the run's deadline, at least one."""
        return max(1.0, self.deadline - time.time())

    def connect(self, is_master: bool, timeout: float) -> Any:
        """Open the rendezvous store at master-addr:port (the head's node serves it)."""
        _, dist = import_torch()
        return dist.TCPStore(
            self.options.master_addr,
            self.options.master_port,
            is_master=is_master,
            wait_for_workers=False,
            timeout=timedelta(seconds=max(1.0, timeout)),
        )


def import_torch() -> tuple[Any, Any]:
    """torch and torch.distributed, imported late and typed loosely: any recent torch will do."""
    return importlib.import_module("torch"), importlib.import_module("torch.distributed")


def has_key(store: Any, key: str) -> bool:
    """Whether the store holds KEY, without blocking."""
    return bool(store.check([KEY + key]))


def read_key(store: Any, key: str) -> str:
    """Read a key that is known to exist."""
    return bytes(store.get(KEY + key)).decode()


# ---------------------------------------------------------------- worker (one per GPU)


def time_all_reduce(tensor: Any, size: MessageSize, run: Run, rank: int) -> float:
    """Check one all-reduce's sum, then return the median seconds of the timed ones."""
    torch, dist = import_torch()

    on_gpu = tensor.is_cuda
    tensor.fill_(rank + 1)
    dist.all_reduce(tensor)
    expected = run.world * (run.world + 1) / 2
    for got in (tensor[0].item(), tensor[-1].item()):
        if got != expected:
            raise RuntimeError(f"all_reduce at {size.label} summed to {got}, not {expected}")
    for _ in range(run.options.warmup):
        dist.all_reduce(tensor)
    samples = []
    if on_gpu:
        torch.cuda.synchronize()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(run.options.iters)
        ]
        for start, end in events:
            start.record()
            dist.all_reduce(tensor)
            end.record()
        torch.cuda.synchronize()
        samples = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(run.options.iters):
            began = time.perf_counter()
            dist.all_reduce(tensor)
            samples.append(time.perf_counter() - began)
    return float(statistics.median(samples))


def run_worker(run: Run) -> int:
    """One rank: join, init the process group, time the all-reduce, publish the result."""
    torch, dist = import_torch()

    local_rank = run.options.worker_local_rank
    rank = run.options.node_rank * run.procs + local_rank
    store = run.connect(is_master=False, timeout=run.remaining())
    stage = "join"
    try:
        store.set(f"{KEY}rank/{rank}", run.node)
        store.add(KEY + "joined", 1)
        # The head judges who is missing and publishes a verdict; until then, wait.
        while store.add(KEY + "joined", 0) < run.world:
            if has_key(store, "verdict") or time.time() > run.deadline:
                return JOIN_EXIT_CODE
            time.sleep(POLL_SECONDS)
        stage = "init_process_group"
        store.set(f"{KEY}stage/{rank}", stage)
        device = torch.device("cpu")
        if run.backend == "nccl":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        dist.init_process_group(
            run.backend,
            store=dist.PrefixStore("pg/", store),
            rank=rank,
            world_size=run.world,
            timeout=timedelta(seconds=run.remaining()),
            device_id=device if run.backend == "nccl" else None,
        )
        medians = {}
        for size in run.sizes:
            stage = f"all_reduce {size.label}"
            store.set(f"{KEY}stage/{rank}", stage)
            tensor = torch.empty(size.nbytes // 4, dtype=torch.float32, device=device)
            medians[size.label] = time_all_reduce(tensor, size, run, rank)
            del tensor
        result = {"rank": rank, "node": run.node, "seconds": medians}
        store.set(f"{KEY}result/{rank}", json.dumps(result))
        store.add(KEY + "results", 1)
        dist.destroy_process_group()
        return 0
    except Exception as error:  # any backend failure becomes the verdict, named by node
        text = describe_failure(str(error), run.backend, run.node, rank, stage)
        print(f"preflight: rank {rank}: {text}\n{str(error)[:2000]}", file=sys.stderr)
        try:
            store.set(f"{KEY}error/{rank}", text)
            store.add(KEY + "errors", 1)
        except Exception:  # the store is gone too: the node launcher reports the exit code
            pass
        sys.stderr.flush()
        os._exit(1)  # a broken communicator can hang in teardown: leave at once


# ---------------------------------------------------------------- node (one per node)


def local_problem(run: Run) -> str | None:
    """What on this node makes the check pointless: a missing interface, too few GPUs."""
    torch, _ = import_torch()
    interfaces = sorted(name for _, name in socket.if_nameindex())
    checked = ["GLOO_SOCKET_IFNAME"]
    if not run.options.no_interface_check:
        checked.append("NCCL_SOCKET_IFNAME")
    for variable in checked:
        problem = interface_problem(variable, os.environ.get(variable, ""), interfaces, run.node)
        if problem:
            return problem
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if run.backend == "nccl" and visible < run.procs:
        return f"{run.node} sees {visible} GPU(s), the check needs {run.procs} (one per rank)"
    return None


def choose_layout(options: argparse.Namespace) -> tuple[str, int]:
    """The backend and the number of processes on this node."""
    torch, dist = import_torch()

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = options.backend
    if backend == "auto":
        backend = "nccl" if gpus and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        return backend, options.gpus_per_node or options.procs_per_node or gpus or 1
    return backend, options.procs_per_node or options.gpus_per_node or 1


def start_workers(run: Run, environment: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """Start one worker process per local rank, running this same file."""
    base = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    extra = [
        "--worker-procs",
        str(run.procs),
        "--worker-backend",
        run.backend,
        "--worker-deadline",
        repr(run.deadline),
    ]
    return [
        subprocess.Popen([*base, *extra, "--worker-local-rank", str(local_rank)], env=environment)
        for local_rank in range(run.procs)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """End workers still running (one hung in a collective, say), by their ids."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def crashed_worker(run: Run, store: Any, workers: list[subprocess.Popen[bytes]]) -> str | None:
    """A local worker that died without saying why, as a message."""
    for local_rank, worker in enumerate(workers):
        code = worker.poll()
        rank = run.options.node_rank * run.procs + local_rank
        if code not in (None, 0, JOIN_EXIT_CODE) and not has_key(store, f"error/{rank}"):
            return f"rank {rank} on {run.node} exited with code {code} (its stderr is above)"
    return None


def first_message(store: Any, prefix: str, count: int) -> str | None:
    """The first of the messages stored under prefix/0..count-1."""
    for index in range(count):
        if has_key(store, f"{prefix}/{index}"):
            return read_key(store, f"{prefix}/{index}")
    return None


def missing_ranks(run: Run, store: Any) -> str:
    """Which ranks never wrote their join key, grouped by node name."""
    by_node: dict[str, list[int]] = {}
    for rank in range(run.world):
        if not has_key(store, f"rank/{rank}"):
            by_node.setdefault(run.node_label(rank // run.procs), []).append(rank)
    parts = [f"{node} (ranks {', '.join(map(str, ranks))})" for node, ranks in by_node.items()]
    return "; ".join(parts)


def unfinished_ranks(run: Run, store: Any) -> str:
    """Ranks without a result at the deadline, with the stage each was stuck in."""
    stuck = []
    for rank in range(run.world):
        if not has_key(store, f"result/{rank}"):
            stage = read_key(store, f"stage/{rank}") if has_key(store, f"stage/{rank}") else "join"
            stuck.append(f"rank {rank} on {run.node_label(rank // run.procs)} in {stage}")
    return ", ".join(stuck[:8]) + (" ..." if len(stuck) > 8 else "")


def summarize(run: Run, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the slowest rank's median, algbw and busbw; per node: its time at the largest."""
    factor = bus_bandwidth_factor(run.world)
    rows = []
    for size in run.sizes:
        seconds = max(result["seconds"][size.label] for result in results)
        algbw = size.nbytes / seconds / 1e9
        rows.append(
            {
                "size": size.label,
                "bytes": size.nbytes,
                "seconds": seconds,
                "algbw_gbps": algbw,
                "busbw_gbps": algbw * factor,
            }
        )
    largest = run.sizes[-1].label
    per_node: dict[str, float] = {}
    for result in results:
        node = result["node"]
        per_node[node] = max(per_node.get(node, 0.0), result["seconds"][largest])
    slowest = max(per_node, key=lambda node: per_node[node])
    return {
        "backend": run.backend,
        "world_size": run.world,
        "nnodes": run.options.nnodes,
        "procs_per_node": run.procs,
        "iters": run.options.iters,
        "sizes": rows,
        "per_node_seconds_at_largest": per_node,
        "slowest": slowest,
    }


def print_table(report: dict[str, Any]) -> None:
    """The human-readable report the head prints."""
    print(
        f"preflight: {report['backend']} all-reduce of float32, {report['world_size']} ranks "
        f"on {report['nnodes']} node(s), {report['procs_per_node']} per node, "
        f"median of {report['iters']} iterations"
    )
    print(f"{'size':>8} {'time_us':>12} {'algbw_GB/s':>12} {'busbw_GB/s':>12}")
    for row in report["sizes"]:
        print(
            f"{row['size']:>8} {row['seconds'] * 1e6:>12.1f} "
            f"{row['algbw_gbps']:>12.2f} {row['busbw_gbps']:>12.2f}"
        )
    largest = report["sizes"][-1]["size"]
    print(f"per node at {largest}:")
    for node, seconds in report["per_node_seconds_at_largest"].items():
        print(f"  {node:<24} {seconds * 1e6:>12.1f} us")
    print(f"slowest node: {report['slowest']}")
    if report["world_size"] == 1:
        print("note: one rank moves no data over any link, so its bus bandwidth is 0 by definition")


def judge(run: Run, report: dict[str, Any]) -> str:
    """The verdict line for a finished measurement, with the bandwidth floor applied."""
    last = report["sizes"][-1]
    busbw_max = max(row["busbw_gbps"] for row in report["sizes"])
    floor = run.options.min_busbw_gbps
    if floor > 0 and run.world > 1 and last["busbw_gbps"] < floor:
        return (
            f"preflight: FAILED busbw {last['busbw_gbps']:.2f} GB/s at {last['size']} is under "
            f"the floor of {floor:.2f} GB/s (slowest node: {report['slowest']})"
        )
    return f"preflight: ok busbw_max={busbw_max:.2f} slowest={report['slowest']}"


def supervise_as_head(run: Run, store: Any, workers: list[subprocess.Popen[bytes]]) -> str:
    """Watch every rank until all report, one fails, or a deadline passes; return the verdict."""
    # The join clock starts once the head's own ranks are up, so that a slow import of torch
    # here is not blamed on the other nodes, nor on the head itself.
    head_ready = False
    while True:
        failure = (
            first_message(store, "fail", run.options.nnodes)
            if store.add(KEY + "failures", 0)
            else None
        )
        if failure is None and store.add(KEY + "errors", 0):
            failure = first_message(store, "error", run.world)
        failure = failure or crashed_worker(run, store, workers)
        if failure:
            return f"preflight: FAILED {failure}"
        for node_rank in range(run.options.nnodes):
            if has_key(store, f"node/{node_rank}"):
                procs = int(json.loads(read_key(store, f"node/{node_rank}"))["procs"])
                if procs != run.procs:
                    return (
                        f"preflight: FAILED {run.node_label(node_rank)} starts {procs} ranks, "
                        f"the head {run.procs}: give every node the same --gpus-per-node"
                    )
        if store.add(KEY + "results", 0) >= run.world:
            results = [json.loads(read_key(store, f"result/{rank}")) for rank in range(run.world)]
            report = summarize(run, results)
            if run.options.json:
                print(json.dumps(report))
            else:
                print_table(report)
            return judge(run, report)
        now = time.time()
        if not head_ready and all(has_key(store, f"rank/{rank}") for rank in range(run.procs)):
            head_ready = True
            run.join_deadline = now + run.options.join_timeout
        if head_ready and now > run.join_deadline and store.add(KEY + "joined", 0) < run.world:
            return (
                f"preflight: FAILED did not join within {run.options.join_timeout:g} s: "
                f"{missing_ranks(run, store)}"
            )
        if now > run.deadline:
            return (
                f"preflight: FAILED no result within {run.options.timeout:g} s: "
                f"{unfinished_ranks(run, store)}"
            )
        time.sleep(POLL_SECONDS)


def await_verdict(run: Run, store: Any, workers: list[subprocess.Popen[bytes]]) -> str:
    """On a node other than the head: report local crashes, then wait for the head's verdict."""
    reported = False
    while time.time() < run.deadline + ACK_SECONDS:
        if has_key(store, "verdict"):
            return read_key(store, "verdict")
        crash = None if reported else crashed_worker(run, store, workers)
        if crash:
            store.set(f"{KEY}fail/{run.options.node_rank}", crash)
            store.add(KEY + "failures", 1)
            reported = True
        time.sleep(POLL_SECONDS)
    return (
        f"preflight: FAILED {run.node} got no verdict from the head "
        f"{run.options.master_addr}:{run.options.master_port} in time"
    )


def run_node(run: Run) -> int:
    """One node: check locally, rendezvous, start the workers, print the verdict."""
    options = run.options
    is_head = options.node_rank == 0
    print(
        f"preflight: node {run.node} (node rank {options.node_rank} of {options.nnodes}), "
        f"head {options.master_addr}:{options.master_port}"
    )
    for line in shown_environment():
        print(f"preflight: env {line}")
    sys.stdout.flush()
    worker_environment = dict(os.environ)
    # The store client logs a C++ stack for every refused connection; the verdict says it better.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    try:
        run.backend, run.procs = choose_layout(options)
    except ImportError as error:
        print(
            f"preflight: FAILED torch is not importable on {run.node} ({sys.executable}): {error}"
        )
        return 1
    problem = local_problem(run)
    if problem:
        print(f"preflight: {problem}", flush=True)
    try:
        socket.getaddrinfo(options.master_addr, options.master_port)
        timeout = run.remaining() if is_head else run.join_deadline - time.time()
        store = run.connect(is_head, timeout)
    except Exception as error:  # the store's own errors say little: name both ends
        role = "serve the rendezvous at" if is_head else "reach the head at"
        print(
            f"preflight: FAILED {problem or ''}{'; ' if problem else ''}{run.node} could not "
            f"{role} {options.master_addr}:{options.master_port}: {one_line(str(error))[:300]}"
        )
        return 1
    workers: list[subprocess.Popen[bytes]] = []
    if problem:
        store.set(f"{KEY}fail/{options.node_rank}", problem)
        store.add(KEY + "failures", 1)
    else:
        store.set(
            f"{KEY}node/{options.node_rank}",
            json.dumps({"name": run.node, "procs": run.procs, "backend": run.backend}),
        )
        workers = start_workers(run, worker_environment)
    try:
        if is_head:
            verdict = one_line(supervise_as_head(run, store, workers))
            store.set(KEY + "verdict", verdict)
            wait_for_acknowledgements(run, store)
        else:
            verdict = one_line(await_verdict(run, store, workers))
            store.set(f"{KEY}ack/{options.node_rank}", "1")
    except Exception as error:  # the head went away under us
        verdict = f"preflight: FAILED {run.node} lost the rendezvous: {one_line(str(error))[:300]}"
    finally:
        stop_workers(workers)
    print(verdict, flush=True)
    return 0 if verdict.startswith("preflight: ok") else 1


def wait_for_acknowledgements(run: Run, store: Any) -> None:
    """Keep the store up, briefly, until every node that joined or may still join has read it."""
    give_up = time.time() + ACK_SECONDS
    for node_rank in range(1, run.options.nnodes):
        while time.time() < give_up and not has_key(store, f"ack/{node_rank}"):
            joined = has_key(store, f"node/{node_rank}") or has_key(store, f"fail/{node_rank}")
            if not joined and time.time() > run.join_deadline:
                break
            time.sleep(POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a node launcher, or (hidden flags) one worker rank."""
    started = time.time()
    options = build_parser().parse_args(argv)
    try:
        run = Run(options, started)
    except ValueError as error:
        print(f"preflight: FAILED {error}")
        return 1
    if options.worker_local_rank >= 0:
        return run_worker(run)
    return run_node(run)


if __name__ == "__main__":
    sys.exit(main())
