"""CLI start-up latency: wall time of `python -m slurm_sglang render` and `check`, run after run.

Each command runs as a fresh process (subprocess), a few warm-up runs first so the page cache
and Python's bytecode caches are warm, then --runs timed runs; the table gives the wall time's mean,
standard deviation, min, median and max, and the median CPU time (user + system; on a busy
machine closer to what an idle one would show), in milliseconds, with the bare interpreter
as the floor.
`--importtime` adds, per command, the imports that cost most (python -X importtime,
cumulative microseconds).

Run: python benchmarks/cli_latency.py [--runs 20] [--warmup 3] [--importtime]
     [--compare-pythonpath DIR] [--skip-sglang-parser] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import REPO, describe, machine, table

TARGET_S = 0.3
CHECK_ARGS = ["--", "--model-path", "Qwen/Qwen2.5-72B-Instruct", "--tp", "16"]
# `check` runs sglang's own parser too where it is installed (a separate Python that imports
# sglang: seconds); --no-sglang-parser is the toolkit's own start-up.
COMMANDS: dict[str, list[str]] = {
    "python -c pass (floor)": ["-c", "pass"],
    "render": ["-m", "slurm_sglang", "render", "--cluster", "default"],
    "check --no-sglang-parser": ["-m", "slurm_sglang", "check", "--no-sglang-parser",
                                 *CHECK_ARGS],
    "check --json --no-sglang-parser": ["-m", "slurm_sglang", "check", "--json",
                                        "--no-sglang-parser", *CHECK_ARGS],
    "check (sglang parser where installed)": ["-m", "slurm_sglang", "check", *CHECK_ARGS],
}
PARSER_ROW = "check (sglang parser where installed)"


def run_timed(argv: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run; a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(argv)} exited {result.returncode}:\n"
                         f"{result.stderr}")
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def time_variants(argv: list[str], runs: int, warmup: int,
                  variants: dict[str, dict[str, str] | None]
                  ) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds per variant; runs alternate so a change of load hits all alike."""
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    for index in range(warmup + runs):
        for name, env in variants.items():
            wall, cpu = run_timed(argv, env)
            if index >= warmup:
                samples[name][0].append(wall)
                samples[name][1].append(cpu)
    return samples


def import_costs(argv: list[str], top: int) -> list[tuple[int, str]]:
    """The `top` imports by cumulative microseconds, from one run with -X importtime."""
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    costs = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        try:
            costs.append((int(cumulative), name.rstrip()))
        except ValueError:
            continue
    return sorted(costs, reverse=True)[:top]


def summary(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    """Wall mean, standard deviation, min, median and max, and the CPU median, in ms."""
    milliseconds = [sample * 1000 for sample in wall]
    return {
        "mean_ms": statistics.fmean(milliseconds),
        "stdev_ms": statistics.stdev(milliseconds) if len(milliseconds) > 1 else 0.0,
        "min_ms": min(milliseconds),
        "median_ms": statistics.median(milliseconds),
        "max_ms": max(milliseconds),
        "cpu_median_ms": statistics.median(cpu) * 1000,
    }


def main() -> int:
    """Time every command and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--importtime", action="store_true", help="list the costliest imports")
    parser.add_argument("--top", type=int, default=12, help="imports listed per command (12)")
    parser.add_argument("--compare-pythonpath", metavar="DIR",
                        help="also time each command with PYTHONPATH=DIR (a changed copy of "
                             "the package), run for run alternating with the installed one")
    parser.add_argument("--skip-sglang-parser", action="store_true",
                        help=f"leave out the row '{PARSER_ROW}' (seconds per run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    variants: dict[str, dict[str, str] | None] = {"": None}
    if args.compare_pythonpath:
        variants = {" (installed)": None,
                    f" ({Path(args.compare_pythonpath).name})":
                        {**os.environ, "PYTHONPATH": args.compare_pythonpath}}
    results: dict[str, Any] = {}
    for name, command in COMMANDS.items():
        if args.skip_sglang_parser and name == PARSER_ROW:
            continue
        argv = [sys.executable, *command]
        timed = time_variants(argv, args.runs, args.warmup, variants)
        for label, env in variants.items():
            results[name + label] = summary(*timed[label])
            if args.importtime and env is None:
                results[name + label]["imports_us"] = import_costs(argv, args.top)
    about = machine()
    if args.json:
        print(json.dumps({"machine": about, "runs": args.runs, "target_s": TARGET_S,
                          "commands": {name: " ".join(cmd) for name, cmd in COMMANDS.items()},
                          "results": results}, indent=2))
        return 0
    rows = [[name, f"{r['mean_ms']:.0f} ± {r['stdev_ms']:.0f}", f"{r['min_ms']:.0f}",
             f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}", f"{r['cpu_median_ms']:.0f}"]
            for name, r in results.items()]
    print(f"CLI start-up, {args.runs} runs each after {args.warmup} warm-up runs, "
          f"milliseconds (target: under {TARGET_S * 1000:.0f})")
    print(table(["command", "mean ± sd", "min", "median", "max", "CPU median"], rows))
    if args.importtime:
        for name, result in results.items():
            if "imports_us" not in result:
                continue
            print(f"\n{name}: costliest imports (cumulative us)")
            for cumulative, module in result["imports_us"]:
                print(f"  {cumulative:>9}  {module}")
    print(describe(about))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
