"""`check` and `run.sbatch --dry-run` give the same verdict and plan over a grid of layouts.

One allocation a (nodes, GPUs a node) pair, 1-4 nodes of 2, 4 and 8 GPUs; inside it every
layout of the grid (tp 1-16, pp 1-2, dp 1-8, ep, attention DP) runs as `bash run.sbatch
--dry-run`, with the environment a script sees under that allocation, and through
`api.check(..., nodes, gpus_per_node)` with the same profile. Both must accept or refuse
alike; an accepted layout prints the same plan table, a refused one the same reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from serving import GRANTED, QUEUED_OR_GRANTED, wait_job_gone

from slurm_sglang import api
from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
GRANT_TIMEOUT = 600
NOTE = "slurm-sglang: note: "


def _layouts() -> list[str]:
    """About 130 layouts, in the spellings users write (the seed's --pp, --dp-size=)."""
    layouts = [f"--tp {tp} --dp {dp}" for tp in range(1, 17) for dp in (1, 2, 4, 8)]
    layouts += [f"--tp {tp} --dp {dp}" for tp in (1, 2, 3, 4, 8) for dp in (3, 5, 6, 7)]
    layouts += [f"--tp-size {tp} --pp {pp} --dp-size={dp}" for tp in (1, 2, 3, 4, 8)
                for pp in (2,) for dp in (1, 2, 4)]
    layouts += ["--tp 16 --pp-size 2", "--tp 6 --pp-size 2 --dp 2"]
    layouts += [f"--tp {tp} --ep {ep}{dp}" for tp, ep in
                ((4, 2), (8, 2), (8, 4), (8, 8), (16, 4), (6, 4), (8, 3))
                for dp in ("", " --dp 2")]
    layouts += [f"--tp {tp} --dp {dp} --enable-dp-attention" for tp in (2, 4, 6, 8, 16)
                for dp in (2, 4, 8)]
    layouts += ["--tp 8 --attn-dp-size 4", "--tp 4 --pp 2 --dp 2 --enable-dp-attention",
                "--tp 8 --ep 8 --dp 8 --enable-dp-attention"]
    return layouts


LAYOUTS = _layouts()
PAIRS = [(nodes, gpus) for nodes in (1, 2, 3, 4) for gpus in (2, 4, 8)]
# The dry-runs are one bash and one python start each, mostly waiting on exec: a few at once.
WORKERS = 3


class Verdict(NamedTuple):
    """What one side said about a layout: accepted with its table, or refused with a reason."""

    ok: bool
    text: str
    notes: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile, its support directory beside it."""
    path = sandbox.shared_dir / "scripts" / "plan-grid.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, int]]:
    counts = {"layouts": 0, "ok": 0, "refused": 0}
    yield counts
    print(f"\nplan grid: {counts['layouts']} layouts compared, {counts['ok']} ok, "
          f"{counts['refused']} refused")


@contextmanager
def _allocation(nodes: int, gpus: int, tmp_path: Path) -> Iterator[str]:
    """`salloc --no-shell` for this pair; the job goes on the way out, granted or still queued
    (others share the sandbox, so the grant may wait for their jobs to end)."""
    output = tmp_path / "salloc.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["salloc", "--no-shell", "-N", str(nodes), "-p", "sandbox",
             f"--gpus-per-node={gpus}", "-J", "plan-grid"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        # Without a shell, salloc returns as soon as the allocation is granted.
        process.wait(timeout=GRANT_TIMEOUT)
        text = output.read_text()
        granted = GRANTED.search(text)
        assert granted, text
        yield granted.group(1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        queued = QUEUED_OR_GRANTED.search(output.read_text())
        if queued:
            subprocess.run(["scancel", queued.group(1)], check=False)
            wait_job_gone(queued.group(1))


def _allocation_env(job_id: str, nodes: int) -> dict[str, str]:
    """The variables salloc would give a shell for this allocation (salloc --no-shell gives
    none), read back from SLURM: the job, its nodes and its GPUs a node."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                           text=True, check=True).stdout
    node_list = re.search(r"\bNodeList=(\S+)", shown)
    gpus = re.search(r"\bTresPerNode=\S*gpu:(?:\w+:)?(\d+)", shown)
    assert node_list and gpus, shown
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM")}
    env.update(SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST=node_list.group(1),
               SLURM_NNODES=str(nodes), SLURM_GPUS_PER_NODE=gpus.group(1),
               SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env",
               # The interpreter itself rather than a python3 found on PATH, which may be a
               # version manager's shell shim that costs more than the plan.
               SLURM_SGLANG_PYTHON=sys.executable)
    return env


def _dry_run(script: Path, env: dict[str, str], cwd: Path, layout: str) -> Verdict:
    result = subprocess.run(["bash", str(script), "--dry-run", "--model-path", "m",
                             *layout.split()], capture_output=True, text=True, env=env,
                            cwd=cwd, timeout=60, check=False)
    notes = tuple(line[len(NOTE):] for line in result.stderr.splitlines()
                  if line.startswith(NOTE))
    errors = [line for line in result.stderr.splitlines() if not line.startswith(NOTE)]
    if result.returncode == 0:
        assert not errors, f"{layout}: {result.stderr}"
        return Verdict(True, result.stdout, notes)
    assert result.returncode == 2 and len(errors) == 1, (
        f"{layout}: exit {result.returncode}, not 2 with one line:\n{result.stderr}")
    return Verdict(False, errors[0].removeprefix("slurm-sglang: "))


def _check(profile: Path, nodes: int, gpus: int, layout: str) -> Verdict:
    report = api.check(["--model-path", "m", *layout.split()], str(profile), nodes,
                       gpus_per_node=gpus, sglang_parser=False)
    if report.ok:
        assert report.plan is not None
        return Verdict(True, report.plan.table() + "\n", tuple(report.notes))
    return Verdict(False, report.problems[0])


def _differences(layout: str, checked: Verdict, dry: Verdict) -> list[str]:
    if checked.ok != dry.ok:
        return [f"{layout}: check says {'ok' if checked.ok else 'refused'} "
                f"({checked.text.strip()!r}), --dry-run says {'ok' if dry.ok else 'refused'} "
                f"({dry.text.strip()!r})"]
    if checked.text != dry.text:
        return [f"{layout}: check\n{checked.text}\n--dry-run\n{dry.text}"]
    # The script's notes (rewrites) are check's too; check may add the known-flags table's.
    missing = set(dry.notes) - set(checked.notes)
    return [f"{layout}: notes only the script gives: {sorted(missing)}"] if missing else []


@pytest.mark.parametrize(("nodes", "gpus"), PAIRS, ids=[f"{n}x{g}" for n, g in PAIRS])
def test_check_and_dry_run_agree(sandbox: SandboxInfo, script: Path, summary: dict[str, int],
                                 tmp_path: Path, nodes: int, gpus: int) -> None:
    if len(sandbox.nodes) < nodes:
        pytest.skip(f"sandbox has {len(sandbox.nodes)} nodes; run sandbox up --nodes {nodes}")
    with _allocation(nodes, gpus, tmp_path) as job_id:
        env = _allocation_env(job_id, nodes)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            dry_runs = list(pool.map(lambda layout: _dry_run(script, env, tmp_path, layout),
                                     LAYOUTS))
    differences = []
    for layout, dry in zip(LAYOUTS, dry_runs, strict=True):
        checked = _check(sandbox.profile_path, nodes, gpus, layout)
        differences += _differences(layout, checked, dry)
        summary["layouts"] += 1
        summary["ok" if dry.ok else "refused"] += 1
    assert not differences, (f"{len(differences)} of {len(LAYOUTS)} layouts differ on "
                             f"{nodes} node(s) x {gpus} GPUs:\n" + "\n".join(differences[:15]))
