"""Placement: which sglang servers run where, on which GPUs and ports, and why.

sglang refuses plain data parallelism across nodes (``--dp N`` with ``--nnodes > 1``), so a
multi-node ``--dp N`` becomes N independent servers (replicas) behind sglang-router. This
module decides that placement; ``templates/partials/replicas.sh.j2`` mirrors it in bash, and
``tests/unit/test_plan.py`` holds both to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from slurm_sglang.errors import UserInputError
from slurm_sglang.spec import Parallelism


class PlanError(UserInputError):
    """A request that does not fit the allocation; the message carries the arithmetic."""


@dataclass(frozen=True)
class Replica:
    """One sglang server: the nodes it spans, the GPUs it takes on each, its HTTP port."""

    index: int
    nodes: tuple[int, ...]
    gpus: tuple[int, ...]
    port: int

    @property
    def head(self) -> int:
        """The node whose rank 0 serves HTTP and holds the dist-init address."""
        return self.nodes[0]


@dataclass(frozen=True)
class Plan:
    """The whole placement: replicas, whether a router fronts them, and the reasons."""

    replicas: tuple[Replica, ...]
    router: bool
    router_port: int
    nodes: int
    gpus_per_node: int
    reasons: tuple[str, ...]

    @property
    def idle_nodes(self) -> tuple[int, ...]:
        """Nodes of the allocation no replica uses."""
        used = {node for replica in self.replicas for node in replica.nodes}
        return tuple(node for node in range(self.nodes) if node not in used)

    def table(self) -> str:
        """The plan as a text table: replica, nodes, GPUs per node, port."""
        rows = [("replica", "nodes", "GPUs (each node)", "port")]
        for replica in self.replicas:
            rows.append((
                str(replica.index),
                ",".join(str(node) for node in replica.nodes),
                ",".join(str(gpu) for gpu in replica.gpus) or "-",
                str(replica.port),
            ))
        if self.router:
            rows.append(("router", str(self.replicas[0].head), "-", str(self.router_port)))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                 .rstrip()
                 for row in rows]
        return "\n".join([*lines, *(f"- {reason}" for reason in self.reasons)])

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly form for `check --json`."""
        return {
            "router": self.router,
            "router_port": self.router_port if self.router else None,
            "replicas": [
                {"replica": r.index, "nodes": list(r.nodes), "gpus": list(r.gpus), "port": r.port}
                for r in self.replicas
            ],
            "reasons": list(self.reasons),
        }


def uses_replicas(par: Parallelism, nodes: int) -> bool:
    """Plain --dp N over several nodes runs as N servers; attention DP stays one server."""
    return par.dp > 1 and not par.dp_attention and nodes > 1


def plan(par: Parallelism, nodes: int, gpus_per_node: int, port: int = 30000) -> Plan:
    """Place the servers on the allocation, or raise PlanError with the arithmetic."""
    if nodes < 1:
        raise PlanError(f"an allocation needs at least one node, got {nodes}")
    gpus = list(range(gpus_per_node))
    if not uses_replicas(par, nodes):
        reason = (
            "attention DP: one server spans every node (--dp becomes --attn-dp-size)"
            if par.dp_attention else
            f"--dp {par.dp} on one node: sglang runs data parallelism inside one server"
            if par.dp > 1 else "one server spans every node of the allocation"
        )
        per_node = par.total_gpus // nodes if par.total_gpus % nodes == 0 else 0
        used = gpus[:per_node] if 0 < per_node <= gpus_per_node else gpus
        single = Replica(0, tuple(range(nodes)), tuple(used), port)
        return Plan((single,), False, port, nodes, gpus_per_node, (reason,))
    per_server = par.gpus_per_server
    if gpus_per_node < 1:
        raise PlanError(
            f"--dp {par.dp} across {nodes} nodes needs the GPUs per node (profile "
            "slurm.gpus_per_node) to place replicas"
        )
    if per_server <= gpus_per_node:
        return _pack(par, nodes, gpus_per_node, port)
    return _span(par, nodes, gpus_per_node, port)


def _pack(par: Parallelism, nodes: int, gpus_per_node: int, port: int) -> Plan:
    """Replicas that fit one node: spread evenly, each on its own GPUs and HTTP port."""
    per_server = par.gpus_per_server
    fit = gpus_per_node // per_server
    per_node = ceil(par.dp / nodes)
    if per_node > fit:
        raise PlanError(
            f"--dp {par.dp} replicas of tp*pp = {per_server} GPUs need {par.dp}*{per_server} = "
            f"{par.dp * per_server} GPUs, but {nodes} node(s) x {gpus_per_node} GPUs hold "
            f"{fit} replica(s) each = {fit * nodes}: ask for {ceil(par.dp / fit)} node(s) or "
            "lower --dp"
        )
    replicas = []
    for index in range(par.dp):
        node, slot = divmod(index, per_node)
        first = slot * per_server
        replicas.append(Replica(index, (node,), tuple(range(first, first + per_server)),
                                port + 1 + index))
    reasons = [
        f"sglang refuses --dp > 1 with --nnodes > 1: {par.dp} servers of dp 1 behind "
        f"sglang-router on port {port}",
        f"tp*pp = {per_server} GPUs fit one node of {gpus_per_node}: up to {per_node} "
        f"replica(s) a node on disjoint GPUs, HTTP ports {port + 1}..{port + par.dp}",
    ]
    plan_ = Plan(tuple(replicas), True, port, nodes, gpus_per_node, tuple(reasons))
    return _with_idle_reason(plan_)


def _span(par: Parallelism, nodes: int, gpus_per_node: int, port: int) -> Plan:
    """Replicas larger than a node: each spans whole nodes with its own head and ports."""
    per_server = par.gpus_per_server
    span = ceil(per_server / gpus_per_node)
    if per_server % span:
        raise PlanError(
            f"tp*pp = {per_server} needs {span} nodes of {gpus_per_node} GPUs, but "
            f"{per_server} is not divisible by {span} (sglang needs (tp*pp) % nnodes == 0)"
        )
    if span * par.dp > nodes:
        raise PlanError(
            f"--dp {par.dp} replicas of tp*pp = {per_server} GPUs span {span} node(s) each: "
            f"{par.dp}*{span} = {par.dp * span} nodes needed, the allocation has {nodes}"
        )
    per_rank = per_server // span
    replicas = tuple(
        Replica(index, tuple(range(index * span, (index + 1) * span)), tuple(range(per_rank)),
                port + 1 + index)
        for index in range(par.dp)
    )
    reasons = (
        f"sglang refuses --dp > 1 with --nnodes > 1: {par.dp} servers of dp 1 behind "
        f"sglang-router on port {port}",
        f"tp*pp = {per_server} GPUs exceed a node of {gpus_per_node}: each replica spans "
        f"{span} nodes ({per_rank} GPUs on each) with its own head and dist-init port",
    )
    return _with_idle_reason(Plan(replicas, True, port, nodes, gpus_per_node, reasons))


def _with_idle_reason(plan_: Plan) -> Plan:
    idle = plan_.idle_nodes
    if not idle:
        return plan_
    note = f"node(s) {','.join(map(str, idle))} of the allocation run no replica"
    return Plan(plan_.replicas, plan_.router, plan_.router_port, plan_.nodes,
                plan_.gpus_per_node, (*plan_.reasons, note))
