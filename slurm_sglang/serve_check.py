"""`check`: every rule on a serve request against a profile, without touching SLURM."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slurm_sglang.profile import ClusterProfile, load_profile

# spec and plan build pydantic models at import: `render` needs neither, so they load on use.
if TYPE_CHECKING:
    from slurm_sglang.launch_plan import Plan
    from slurm_sglang.spec import Parallelism, ServeSpec


@dataclass(frozen=True)
class CheckReport:
    """What `check` found: the rewritten argv, notes, problems, and sglang's own verdicts."""

    spec: ServeSpec
    profile: ClusterProfile
    nodes: int
    gpus_per_node: int
    parallelism: Parallelism
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parser_verdicts: list[str] = field(default_factory=list)
    plan: Plan | None = None
    warnings: list[str] = field(default_factory=list)
    # What each server runs (after --dp is split into replicas, --enable-metrics added).
    server_argv: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing would stop the job."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """As `check --json` prints it."""
        par = self.parallelism
        return {
            "ok": self.ok,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "parallelism": {"tp": par.tp, "pp": par.pp, "dp": par.dp, "ep": par.ep,
                            "attention_dp": par.dp_attention, "replicas": par.replicas},
            "sglang_args": list(self.spec.sglang_args),
            "problems": self.problems,
            "notes": self.notes,
            "warnings": self.warnings,
            "sglang_parser": self.parser_verdicts,
            "plan": plan_dict(self.plan) if self.plan else None,
        }

    def text(self) -> str:
        """The lines `check` prints: sizes, notes, warnings, problems, the plan, ok or not."""
        par = self.parallelism
        return "\n".join([
            f"nodes {self.nodes} x {self.gpus_per_node} GPUs; "
            f"tp {par.tp} pp {par.pp} dp {par.dp} ep {par.ep}"
            + (" (attention DP)" if par.dp_attention else "")
            + f"; {par.total_gpus} GPUs in {par.replicas} server(s)",
            *(f"note: {note}" for note in self.notes if note not in self.problems),
            *(f"warning: {warning}" for warning in self.warnings),
            *(f"problem: {problem}" for problem in self.problems),
            *self.parser_verdicts,
            *([self.plan.table()] if self.plan else []),
            "ok" if self.ok else "not ok",
        ])


def plan_dict(placed: Plan) -> dict[str, object]:
    """The plan as `check --json` prints it."""
    return {
        "router": placed.router,
        "router_port": placed.router_port if placed.router else None,
        "router_metrics_port": placed.router_metrics_port if placed.router else None,
        "replicas": [{"replica": r.number, "nodes": list(r.nodes), "gpus": list(r.gpus),
                      "port": r.port} for r in placed.replicas],
        "reasons": list(placed.reasons),
    }


def rank_argv(argv: Sequence[str], nnodes: int, node_rank: int, head_ip: str, dist_port: int,
              port: int) -> tuple[str, ...]:
    """The exact argv of one rank: the server's arguments and what the script's supervise_rank
    adds (test_plan_launch compares the two on the sandbox)."""
    return (*argv, "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--dist-init-addr", f"{head_ip}:{dist_port}", "--host", "0.0.0.0", "--port", str(port))


def _parser_verdicts(argv: Sequence[str], nnodes: int, port: int) -> tuple[list[str], list[str]]:
    """sglang's own parser on the head's and a worker's argv: (verdict lines, problems)."""
    from slurm_sglang.sglang_parser import check_with_sglang

    # The head's address is a placeholder: sglang only parses it here.
    ranks = {"head (rank 0)": list(rank_argv(argv, nnodes, 0, "10.0.0.1", 20000, port))}
    if nnodes > 1:
        ranks["worker (rank 1)"] = list(rank_argv(argv, nnodes, 1, "10.0.0.1", 20000, port))
    lines, problems = [], []
    for verdict in check_with_sglang(ranks):
        lines.append(f"sglang parser, {verdict.label}: {verdict.status}"
                     + (f": {verdict.message}" if verdict.message else ""))
        if verdict.status == "error":
            problems.append(f"sglang's parser refuses the {verdict.label} argv: {verdict.message}")
    return lines, problems


def check(
    sglang_args: Sequence[str],
    cluster: str | ClusterProfile = "default",
    nodes: int | None = None,
    *,
    gpus_per_node: int | None = None,
    sglang_parser: bool = False,
    **settings: object,
) -> CheckReport:
    """Validate a serve request against a profile (a name or path, or one loaded already)
    without touching SLURM; with sglang_parser, sglang's own parser reads every rank's argv."""
    from slurm_sglang.launch_plan import LATEST_KNOWN, LaunchRequest, PlanError, launch, read_argv
    from slurm_sglang.sglang_flags import flag_problems
    from slurm_sglang.spec import build_spec, check_parallelism, nodes_needed

    profile = cluster if isinstance(cluster, ClusterProfile) else load_profile(cluster)
    version = profile.sglang_version or LATEST_KNOWN
    # Read once; the spec, the flag checks and the plan all read this one form.
    read = read_argv(sglang_args, version)
    spec = build_spec(read, nodes=nodes, **settings)
    parallelism = spec.parallelism
    if gpus_per_node is None:
        gpus_per_node = profile.slurm.gpus_per_node
    chosen = nodes or nodes_needed(parallelism, gpus_per_node)
    # Too few nodes is the placement's refusal, with its arithmetic and the nodes to ask for:
    # the reason the script gives, first.
    problems = check_parallelism(parallelism, chosen, gpus_per_node)
    notes = list(read.notes)
    for flag_problem in flag_problems(read):
        if flag_problem.severity == "error":
            problems.append(flag_problem.message)
        else:
            notes.append(flag_problem.message)
    placement: Plan | None = None
    server_argv: tuple[str, ...] = spec.sglang_args
    if not problems:
        request = LaunchRequest(spec.sglang_args, chosen, gpus_per_node, spec.port, version,
                                profile.router.source, profile.router.venv,
                                profile.container.runtime)
        try:
            launched = launch(request, read)
            placement, server_argv = launched.plan, launched.server_argv
        except PlanError as exc:
            problems.append(str(exc))
    report = CheckReport(spec, profile, chosen, gpus_per_node, parallelism, problems, notes,
                         plan=placement, warnings=_open_endpoint_warnings(),
                         server_argv=server_argv)
    return with_parser_verdicts(report) if sglang_parser else report


def with_parser_verdicts(report: CheckReport) -> CheckReport:
    """The report with sglang's own parser's verdicts on the head's and a worker's argv (where
    sglang is importable), when nothing else stopped the job; seconds, so run last."""
    if report.problems or report.plan is None:
        return report
    verdicts, problems = _parser_verdicts(report.server_argv, len(report.plan.replicas[0].nodes),
                                          report.spec.port)
    return dataclasses.replace(report, parser_verdicts=verdicts,
                               problems=[*report.problems, *problems])


NO_API_KEY_WARNING = (
    "no API key (set SLURM_SGLANG_API_KEY, or give submit or the script --api-key-file FILE): "
    "the endpoint (sglang, or the router with replicas) is open to anyone on the cluster network")


def _open_endpoint_warnings() -> list[str]:
    """Without a key, sglang and the router serve anyone who reaches the node (issue 23, item 4);
    check only sees the environment, so a later --api-key-file is named as the way out."""
    import os

    return [] if os.environ.get("SLURM_SGLANG_API_KEY", "").strip() else [NO_API_KEY_WARNING]
