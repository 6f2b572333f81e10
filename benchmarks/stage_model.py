"""Model staging on the sandbox: bytes read from the shared copy per job, plain vs staged.

A model directory of random bytes (4 safetensors shards and small files; 256 MiB by default)
lies in the shared directory. Per node count, in turn (alternating, runs in one order):
- plain: every node reads every file of the shared copy, as each rank's load does;
- staged (cold): the stage partial's own steps (templates/partials/stage.sh.j2 with
  stage_model.py) copy it to each node's own /tmp (the sandbox's node-local disk): one sbcast per
  file, then each node reads its local copy;
- staged (warm): the same again, on nodes that now hold the copy.

Bytes read from the shared copy are counted as benchmarks/image_broadcast.py counts them, from
Linux's per-process I/O accounting (/proc/PID/io) read in a subshell around each reader: `rchar`
of each node's reader in plain mode; `read_bytes` of the staging driver (sbcast maps the file
into memory, page faults do not count in rchar), with the model's pages dropped from the page
cache (POSIX_FADV_DONTNEED) just before, so every page it reads is fetched from storage. Bytes
copied come from the job's own `staged` events. The staged copies are removed at the end.

Run: python benchmarks/stage_model.py [--nodes 2,4,8] [--size-mib 256] [--repeat 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    REPO,
    UP_HINT,
    describe,
    drop_from_page_cache,
    machine,
    median,
    node_counts,
    read_counters,
    require_sandbox,
    table,
    wait_job_gone,
)

from slurm_sglang.render import make_environment, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec

JOB_TEMPLATE = "stage_model_job.sh.j2"
LOCAL_DIR = "/tmp/slurm-sglang-stage-bench"
MODES = ("plain", "staged-cold", "staged-warm")
SHARDS = 4


def shared_model(sandbox: SandboxInfo, size_mib: int) -> Path:
    """The model in the shared directory (made once per size), flushed to disk."""
    model = sandbox.shared_dir / "bench" / f"stage-model-{size_mib}m"
    if not (model / ".complete").exists():
        shutil.rmtree(model, ignore_errors=True)
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
        (model / "tokenizer.json").write_text('{"model": {"vocab": {}}}\n')
        for shard in range(SHARDS):
            with (model / f"model-{shard:05d}-of-{SHARDS:05d}.safetensors").open("wb") as out:
                for _ in range(size_mib // SHARDS):
                    out.write(os.urandom(1 << 20))
                os.fsync(out.fileno())
        (model / ".complete").touch()
    return model


def render_job(sandbox: SandboxInfo) -> Path:
    """The job script, rendered with the stage partial, into the shared directory."""
    env = make_environment([REPO / "templates", REPO / "benchmarks" / "templates"])
    path = sandbox.shared_dir / "scripts" / "bench-stage-model.sh"
    write_script(env.get_template(JOB_TEMPLATE).render(), path)
    return path


def run_once(sandbox: SandboxInfo, job: Path, model: Path, nodes: int, mode: str,
             timeout: float) -> dict[str, Any]:
    """One allocation, one mode: seconds, bytes read from the shared copy, bytes copied."""
    results = Path(tempfile.mkdtemp(prefix=f"stage-{nodes}-{mode}-",
                                    dir=sandbox.shared_dir / "bench"))
    for path in model.iterdir():
        drop_from_page_cache(path)
    argv = ["salloc", "-N", str(nodes), "-p", "sandbox", "--exclusive", "bash", str(job),
            mode.split("-")[0], str(model), LOCAL_DIR, str(results), str(REPO / "slurm_sglang")]
    try:
        finished = subprocess.run(argv, cwd=sandbox.shared_dir, capture_output=True, text=True,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmark: {nodes} nodes, {mode}: no result in {timeout:.0f} s"
                         ) from None
    if finished.returncode != 0:
        raise SystemExit(f"benchmark: {nodes} nodes, {mode}: exited {finished.returncode}\n"
                         f"{finished.stdout}{finished.stderr}")
    for line in finished.stderr.splitlines():
        if "Granted job allocation" in line:
            wait_job_gone(line.split()[-1])
    timing = read_counters(results / "timing")
    readers = {path.name[len("reader-"):-len(".io")]: read_counters(path)
               for path in results.glob("reader-*.io")}
    node_readers = {name: value for name, value in readers.items() if name != "driver"}
    events = (results / "events.log").read_text().splitlines()
    copied = sum(int(word[len("bytes="):]) for line in events if " staged " in line
                 for word in line.split() if word.startswith("bytes="))
    size = sum(path.stat().st_size for path in model.iterdir() if not path.name.startswith("."))
    if mode == "plain":
        shared_bytes = sum(value["rchar"] for value in node_readers.values())
    else:
        shared_bytes = readers.get("driver", {}).get("read_bytes", 0.0)
    shutil.rmtree(results, ignore_errors=True)
    return {
        "nodes": nodes,
        "mode": mode,
        "wall_s": timing["end"] - timing["start"],
        "stage_s": timing["staged"] - timing["start"],
        "shared_bytes": shared_bytes,
        "shared_reads": shared_bytes / size,
        "copied_bytes": copied,
        "nodes_reported": len(node_readers),
        "model_bytes": size,
    }


def remove_copies(sandbox: SandboxInfo) -> None:
    """No staged copy left on any node (each run of staged-cold starts from none)."""
    for node in sandbox.nodes:
        node_exec(node, ["rm", "-rf", LOCAL_DIR])


def main() -> int:
    """Run every node count in each mode and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=node_counts("2,4,8"),
                        help="node counts, comma-separated (default 2,4,8)")
    parser.add_argument("--size-mib", type=int, default=256, help="model size (default 256)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per node count and mode")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    sandbox = require_sandbox()
    model = shared_model(sandbox, args.size_mib)
    job = render_job(sandbox)
    about = machine()
    runs: list[dict[str, Any]] = []
    skipped = []
    try:
        for nodes in args.nodes:
            if nodes > len(sandbox.nodes):
                skipped.append(f"{nodes} nodes: the sandbox has {len(sandbox.nodes)} "
                               f"({UP_HINT.format(nodes=nodes)})")
                continue
            for _ in range(args.repeat):
                remove_copies(sandbox)
                for mode in MODES:
                    started = time.monotonic()
                    runs.append(run_once(sandbox, job, model, nodes, mode, args.timeout))
                    print(f"  {nodes} nodes, {mode}: {runs[-1]['wall_s']:.1f} s "
                          f"(run took {time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        remove_copies(sandbox)
    rows = []
    for nodes in sorted({run["nodes"] for run in runs}):
        for mode in MODES:
            mine = [run for run in runs if run["nodes"] == nodes and run["mode"] == mode]
            rows.append([nodes, mode, len(mine), median([r["wall_s"] for r in mine]),
                         median([r["stage_s"] for r in mine]),
                         f"{median([r['shared_bytes'] for r in mine]) / 2**20:.1f}",
                         f"{median([r['shared_reads'] for r in mine]):.2f}",
                         f"{median([r['copied_bytes'] for r in mine]) / 2**20:.1f}"])
    if args.json:
        print(json.dumps({"machine": about, "model": str(model), "runs": runs,
                          "skipped": skipped}, indent=2))
        return 0
    print(f"model staging on the sandbox: {args.size_mib} MiB model ({SHARDS} shards), "
          "seconds; medians")
    print(table(["nodes", "mode", "runs", "wall", "staging", "shared MiB read", "shared reads",
                 "MiB copied (all nodes)"], rows))
    for line in skipped:
        print(f"skipped {line}")
    print(describe(about))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
