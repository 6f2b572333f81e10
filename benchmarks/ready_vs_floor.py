"""Time to ready of run.sbatch against the floor launcher, side by side on the sandbox.

Time to ready is the allocation's grant (salloc's "Granted job allocation N" line reaching
this script) to the `ready: URL` line. Two launchers are timed, N runs each per node count:

- script: slurm-sglang's run.sbatch, rendered from the sandbox's profile with the package and
  templates of git revision --revision (HEAD; `python -m slurm_sglang render --cluster
  PROFILE -o DIR/run.sbatch` in a `git archive` of it), or the rendering given with --script,
  run as a user runs it:
  `salloc -N n -p sandbox --gpus-per-node=G bash run.sbatch --image TARBALL --model-path M
  --tp n --port P --dist-port Q`, with SLURM_SGLANG_CONTAINER_CLI=podman and
  SLURM_SGLANG_GPUS_MODE=env;
- floor: benchmarks/floor_launcher.sh in the same salloc: one srun, one container per node
  (the same image, mounts, sglang arguments and environment), the head polling its own
  /health (see that file).

Both get the same stand-in settings (SGLANG_STANDIN_LOAD_SECONDS=D, warm-up W) and fresh
random ports per run. Runs go in pairs, one of each launcher, in random order within each pair
(--seed), so that a change of the machine's load hits both alike. The table gives, per node
count, each launcher's median and max and the ratio of the medians (script / floor); issue 24
asks for 1.1x or less. Before the timed runs, --warmup N untimed runs of each launcher at the
largest node count load the image where it is missing (the floor does not load images).

Run: python benchmarks/ready_vs_floor.py [--nodes 1,2,4] [--repeat 4] [--load-seconds 0]
     [--revision REV | --script DIR/run.sbatch] [--warmup 1] [--seed 1] [--json]
     [--json-file FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_common import (
    REPO,
    UP_HINT,
    describe,
    fresh_ports,
    machine,
    median,
    node_counts,
    require_sandbox,
    table,
    wait_job_gone,
)
from time_to_ready import GRANTED, JOB_ID, QUEUE_TIMEOUT_S, READY, LineClock

from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import containers_on, node_exec

FLOOR = Path(__file__).resolve().parent / "floor_launcher.sh"
FLOOR_LABEL = "slurm-sglang-floor.job"
LAUNCHERS = ("floor", "script")
TARGET_RATIO = 1.1
MAX_FAILURES = 3
# Floor containers found after their job was gone, for the report (there should be none).
LEFTOVERS: list[str] = []


@dataclass
class Run:
    """One launcher's run from the allocation's grant to its ready line (epoch seconds)."""

    launcher: str
    nodes: int
    pair: int
    job_id: str
    granted: float
    ready: float
    url: str

    @property
    def seconds(self) -> float:
        """Time to ready: grant -> ready line."""
        return self.ready - self.granted


@dataclass
class Bench:
    """What every run needs: the sandbox, both launchers' argv tails and the environment."""

    sandbox: SandboxInfo
    script: Path
    image_ref: str
    model: Path
    env: dict[str, str]
    timeout: float

    def argv(self, launcher: str, nodes: int) -> list[str]:
        """salloc's argv for one run; the same allocation request for both launchers."""
        port, dist_port = fresh_ports()
        salloc = ["salloc", "-N", str(nodes), "-p", "sandbox",
                  f"--gpus-per-node={self.sandbox.gpus_per_node}"]
        sglang = ["--model-path", str(self.model), "--tp", str(nodes)]
        if launcher == "script":
            return [*salloc, "bash", str(self.script), "--image", str(self.sandbox.image_tarball),
                    *sglang, "--port", str(port), "--dist-port", str(dist_port)]
        return [*salloc, "bash", str(FLOOR), "--image", self.image_ref,
                "--mount", str(self.sandbox.shared_dir), "--port", str(port),
                "--dist-port", str(dist_port),
                "--log-dir", str(self.sandbox.shared_dir / "logs" / "floor"), "--", *sglang]


def run_once(bench: Bench, launcher: str, nodes: int, pair: int) -> Run:
    """One salloc up to the ready line; the job is cancelled and waited for afterwards."""
    process = subprocess.Popen(bench.argv(launcher, nodes), cwd=bench.sandbox.shared_dir,
                               env=bench.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    clock = LineClock(process)
    job_id = ""
    try:
        _, match = clock.wait_for(JOB_ID, 60, process)
        job_id = match.group(1)
        granted, _ = clock.wait_for(GRANTED, QUEUE_TIMEOUT_S, process)
        ready, match = clock.wait_for(READY, bench.timeout, process)
        return Run(launcher, nodes, pair, job_id, granted, ready, match.group(1))
    finally:
        if job_id:
            subprocess.run(["scancel", job_id], check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if job_id:
            wait_job_gone(job_id)
            if launcher == "floor":
                floor_leftovers(bench.sandbox, job_id)



def floor_leftovers(sandbox: SandboxInfo, job_id: str) -> None:
    """Remove (and note) any container of this floor job still on a node once the job is gone.

    The floor's tasks remove their own containers; this is the check that they did, and it
    touches nothing but containers labelled with this floor job's id.
    """
    for node in sandbox.nodes:
        names = [name for container in containers_on(node, label=f"{FLOOR_LABEL}={job_id}")
                 for name in container.get("Names", [])]
        if names:
            LEFTOVERS.append(f"job {job_id} on {node}: {', '.join(names)}")
            node_exec(node, ["podman", "rm", "-f", "-t", "0", *names], check=False)


def image_ref(sandbox: SandboxInfo) -> str:
    """The image run.sbatch runs from the tarball: its cached name when current, else its ID."""
    cache = Path(f"{sandbox.image_tarball}.slurm-sglang-id")
    try:
        stamp, image_id, ref = cache.read_text().split()[:3]
        info = Path(sandbox.image_tarball).stat()
        if stamp == f"{info.st_size}:{int(info.st_mtime)}" and image_id == sandbox.image_id:
            return ref
    except (OSError, ValueError):
        pass
    return sandbox.image_id


def render_script(sandbox: SandboxInfo, revision: str) -> Path:
    """run.sbatch from the sandbox's profile at a git revision, its support files beside it.

    The package and templates come from `git archive REV`, not the working tree, so that
    someone's edits in progress there do not change what is timed (use --script for those).
    """
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision],
                            capture_output=True, text=True, check=True).stdout.strip()
    path = sandbox.shared_dir / "scripts" / f"ready-vs-floor-{commit}" / "run.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ready-vs-floor-") as tree:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "slurm_sglang",
                                  "templates"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        # The archived package first on the path; its templates ahead of the installed ones.
        env = {**os.environ, "PYTHONPATH": tree,
               "SLURM_SGLANG_TEMPLATE_DIR": str(Path(tree) / "templates")}
        subprocess.run([sys.executable, "-m", "slurm_sglang", "render", "--cluster",
                        str(sandbox.profile_path), "-o", str(path)], cwd=tree, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def summarise(runs: list[Run], nodes: int) -> dict[str, Any]:
    """Both launchers' median and max, the ratio of medians and the per-pair ratios."""
    seconds = {name: [r.seconds for r in runs if r.launcher == name] for name in LAUNCHERS}
    by_pair: dict[int, dict[str, float]] = {}
    for run in runs:
        by_pair.setdefault(run.pair, {})[run.launcher] = run.seconds
    pair_ratios = [p["script"] / p["floor"] for p in by_pair.values() if len(p) == 2]
    floor_med, script_med = median(seconds["floor"]), median(seconds["script"])
    return {
        "nodes": nodes,
        "runs": {name: len(values) for name, values in seconds.items()},
        "floor_median_s": floor_med,
        "floor_max_s": max(seconds["floor"], default=float("nan")),
        "script_median_s": script_med,
        "script_max_s": max(seconds["script"], default=float("nan")),
        "ratio": script_med / floor_med,
        "pair_ratio_median": median(pair_ratios),
        "pair_ratio_max": max(pair_ratios, default=float("nan")),
        "difference_s": script_med - floor_med,
    }


def main() -> int:
    """Parse options, run the pairs at every node count, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=node_counts("1,2,4"),
                        help="node counts, comma-separated (default 1,2,4)")
    parser.add_argument("--repeat", type=int, default=4,
                        help="runs of each launcher per node count (default 4)")
    parser.add_argument("--load-seconds", type=float, default=0.0,
                        help="D: the stand-in's model load time, the same for both (default 0: "
                             "the ratio is launcher against launcher)")
    parser.add_argument("--warmup-seconds", type=float, default=0.0,
                        help="the stand-in's warm-up after loading (default 0)")
    parser.add_argument("--script", type=Path, metavar="PATH",
                        help="time this run.sbatch instead of a fresh rendering of the sandbox "
                             "profile (render it with `python -m slurm_sglang render --cluster "
                             "PROFILE -o DIR/run.sbatch`, in a directory every node sees)")
    parser.add_argument("--revision", default="HEAD", metavar="REV",
                        help="without --script: render the sandbox profile from this git "
                             "revision's package and templates (default HEAD)")
    parser.add_argument("--warmup", type=int, default=1, metavar="N",
                        help="N untimed runs of each launcher at the largest node count first "
                             "(default 1)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of each pair's order (default 1)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for ready")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with every run's time stamps")
    parser.add_argument("--json-file", type=Path, metavar="FILE",
                        help="also write that JSON object to FILE (and print the table)")
    args = parser.parse_args()

    sandbox = require_sandbox()
    # Its own generator: the order is repeatable, the ports (the global one) are not.
    orders = random.Random(args.seed)
    script = args.script.resolve() if args.script else render_script(sandbox, args.revision)
    if not script.is_file():
        raise SystemExit(f"--script: {script} is not a file")
    model = sandbox.shared_dir / "models" / "bench-tiny"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    env = {
        **os.environ,
        "SLURM_SGLANG_CONTAINER_CLI": "podman",
        "SLURM_SGLANG_GPUS_MODE": "env",
        "SGLANG_STANDIN_LOAD_SECONDS": str(args.load_seconds),
        "SGLANG_STANDIN_WARMUP_SECONDS": str(args.warmup_seconds),
    }
    bench = Bench(sandbox, script, image_ref(sandbox), model, env, args.timeout)
    about = machine()
    fitting = [nodes for nodes in args.nodes if nodes <= len(sandbox.nodes)]
    skipped = [f"{nodes} nodes: the sandbox has {len(sandbox.nodes)} "
               f"({UP_HINT.format(nodes=nodes)})" for nodes in args.nodes
               if nodes > len(sandbox.nodes)]
    # The script first: it loads the image on nodes that lack it; the floor only runs it.
    for _ in range(args.warmup if fitting else 0):
        for launcher in ("script", "floor"):
            warm = run_once(bench, launcher, max(fitting), -1)
            print(f"  warm-up, {launcher} at {warm.nodes} nodes: job {warm.job_id}, "
                  f"{warm.seconds:.3f} s", file=sys.stderr)

    runs: list[Run] = []
    failures: list[str] = []
    results: list[dict[str, Any]] = []
    for nodes in fitting:
        done: list[Run] = []
        for pair in range(args.repeat):
            order = list(LAUNCHERS)
            orders.shuffle(order)
            for launcher in order:
                while True:
                    try:
                        run = run_once(bench, launcher, nodes, pair)
                        break
                    except RuntimeError as error:
                        failures.append(f"{nodes} nodes, {launcher}: "
                                        f"{str(error).splitlines()[0]}")
                        print(f"  {nodes} nodes, {launcher}: a run failed: {error}",
                              file=sys.stderr)
                        if len(failures) > MAX_FAILURES:
                            raise SystemExit(
                                f"benchmark: more than {MAX_FAILURES} failed runs") from None
                done.append(run)
                print(f"  {nodes} nodes, pair {pair + 1}/{args.repeat}, {launcher}: "
                      f"job {run.job_id}, {run.seconds:.3f} s", file=sys.stderr)
        runs.extend(done)
        results.append(summarise(done, nodes))

    source = (f"--script {script}" if args.script else
              f"{args.revision} ({script.parent.name.removeprefix('ready-vs-floor-')}) rendered: "
              f"{script}")
    settings = {"script_source": source, "load_seconds": args.load_seconds,
                "warmup_seconds": args.warmup_seconds,
                "repeat": args.repeat, "seed": args.seed, "script": str(script),
                "floor": str(FLOOR), "image": bench.image_ref,
                "target_ratio": TARGET_RATIO}
    report = json.dumps({"machine": about, "settings": settings, "results": results,
                         "runs": [{**asdict(run), "seconds": run.seconds} for run in runs],
                         "skipped": skipped, "failures": failures,
                         "floor_leftovers": LEFTOVERS}, indent=2)
    if args.json_file:
        args.json_file.write_text(report + "\n")
    if args.json:
        print(report)
        return 0
    header = ["nodes", "runs", "floor med", "floor max", "script med", "script max", "ratio",
              "pair ratio max", "script - floor"]
    rows = [[r["nodes"], f"{r['runs']['floor']}+{r['runs']['script']}", r["floor_median_s"],
             r["floor_max_s"], r["script_median_s"], r["script_max_s"], f"{r['ratio']:.2f}x",
             f"{r['pair_ratio_max']:.2f}x", r["difference_s"]] for r in results]
    print(f"time to ready (salloc grant -> ready line), seconds; D = {args.load_seconds:g} s, "
          f"warm-up {args.warmup_seconds:g} s; pairs in random order (seed {args.seed}); "
          f"ratio = script med / floor med (target {TARGET_RATIO:g}x)")
    print(f"script: {source}")
    print(table(header, rows))
    for line in skipped:
        print(f"skipped {line}")
    for line in failures:
        print(f"failed and repeated: {line}")
    for line in LEFTOVERS:
        print(f"floor container left behind (removed): {line}")
    print(describe(about))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
