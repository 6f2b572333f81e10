"""The script's first plan call, before and after its flags moved into launch_plan.py.

Times, inside bash, what the rendered script runs from its flags to the evaluated plan, and
nothing else (the script is sourced first, outside the timing):

- a script that still parses its flags in bash (parse_flags, a `flags.sh.j2` rendering):
  `parse_flags "$@"; find_support_dir; plan_launch NNODES GPUS_PER_NODE`
- a script whose flags are launch_plan.py's:
  `find_support_dir; requested_gpus; plan_launch "$@"` (one python start)

Runs alternate between the two scripts; prints the median and quartiles of each, and the ratio.
Usage: python benchmarks/flags_plan_call.py BEFORE/run.sbatch AFTER/run.sbatch [--runs 20]
(render BEFORE from the older checkout with `render -o`, so its support directory is beside it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

ARGS = ["--quiet", "--port", "31000", "--model-path", "/models/m", "--tp", "8", "--dp", "2",
        "--served-model-name", "a model", "--chat-template", "$(x) 'q'"]

TIMED = r"""
source <(sed '$d' "$1")
set +e
script=$1 workspace=$2
shift 2
NNODES=2 GPUS_PER_NODE=8
if declare -F parse_flags >/dev/null; then
  start=${EPOCHREALTIME}
  parse_flags -w "${workspace}" "$@"
  find_support_dir "${script}"
  plan_launch "${NNODES}" "${GPUS_PER_NODE}"
else
  start=${EPOCHREALTIME}
  find_support_dir "${script}"
  requested_gpus || exit 2
  plan_launch -w "${workspace}" "$@"
fi
end=${EPOCHREALTIME}
[[ ${REPLICAS} == 2 && ${SGLANG_ARGS[*]} == *"a model"* ]] || exit 3
echo "${start} ${end}"
"""


def _one(script: Path, workspace: str) -> float:
    done = subprocess.run(["bash", "-c", TIMED, "timed", str(script), workspace, *ARGS],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SLURM_SGLANG_CONTAINER_CLI": "podman"})
    if done.returncode != 0:
        raise SystemExit(f"{script}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    start, end = (float(value.replace(",", ".")) for value in done.stdout.split())
    return (end - start) * 1000


def main() -> None:
    """Alternate the two scripts, print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as workspace:
        for run in range(options.runs):
            order = ("before", "after") if run % 2 == 0 else ("after", "before")
            for name in order:
                times[name].append(_one(getattr(options, name), workspace))
    print(f"first plan call, {options.runs} alternating runs each, ms")
    print(f"{'script':<8} {'median':>8} {'q1':>8} {'q3':>8} {'min':>8}")
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(f"{name:<8} {statistics.median(values):8.1f} {q1:8.1f} {q3:8.1f} {min(values):8.1f}")
    ratio = statistics.median(times["after"]) / statistics.median(times["before"])
    print(f"after/before (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
