"""The public Python API: what the CLI wraps, usable from notebooks and scripts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slurm_sglang.profile import ClusterProfile, load_profile
from slurm_sglang.spec import (
    Parallelism,
    ServeSpec,
    SpecError,
    build_spec,
    check_parallelism,
    nodes_needed,
)


@dataclass(frozen=True)
class CheckReport:
    """What `check` found: the rewritten argv, notes, problems, and sglang's own verdicts."""

    spec: ServeSpec
    profile: ClusterProfile
    nodes: int
    parallelism: Parallelism
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parser_verdicts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing would stop the job."""
        return not self.problems


def render(cluster: str = "default", nodes: int | None = None) -> str:
    """Render run.sbatch for a cluster profile (built-in name or YAML path)."""
    from slurm_sglang.render import render_script

    return render_script(load_profile(cluster), nodes)


def render_to(path: Path, cluster: str = "default", nodes: int | None = None) -> Path:
    """Render run.sbatch and write it to ``path``; returns the path."""
    from slurm_sglang.render import write_script

    write_script(render(cluster, nodes), path)
    return path


def check(
    sglang_args: Sequence[str],
    cluster: str = "default",
    nodes: int | None = None,
    **settings: object,
) -> CheckReport:
    """Validate a serve request against a profile without touching SLURM."""
    profile = load_profile(cluster)
    spec = build_spec(sglang_args, nodes=nodes, **settings)
    parallelism = spec.parallelism
    gpus_per_node = profile.slurm.gpus_per_node
    implied = nodes_needed(parallelism, gpus_per_node)
    chosen = nodes or implied
    problems = check_parallelism(parallelism, chosen, gpus_per_node)
    if nodes and nodes < implied:
        problems.insert(0, f"--nodes {nodes} is fewer than the {implied} the sizes need")
    notes = []
    if parallelism.replicas > 1 and chosen > 1 and not parallelism.dp_attention:
        notes.append(
            f"--dp {parallelism.dp} on {chosen} nodes: sglang refuses multi-node data-parallel "
            "replicas; add --enable-dp-attention for attention DP"
        )
        problems.append(notes[-1])
    return CheckReport(spec, profile, chosen, parallelism, problems, notes)


__all__ = ["CheckReport", "SpecError", "check", "render", "render_to"]
