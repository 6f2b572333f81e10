"""Time to ready with replicas on the sandbox: 1, 2 and 8 replicas on 2 nodes behind the router.

Runs `salloc -N 2 --gpus-per-node=8 bash run-replicas.sbatch --tp T --dp R ...` (the sandbox
profile with sglang-router 0.3.2 from a venv on the shared directory) with the stand-in's load
time set to D, several times per shape, and prints the median and max of
(ready - allocation start - D), and of the part after the last replica reported healthy:
the router's registration. One replica is `--tp 16` over both nodes (one server, no router).

Clock: this machine's wall clock. Allocation start: salloc's "Granted job allocation" line
reaching this script; ready: the `ready:` line; replica-up: the driver's time stamps in
logs/<job>/events.log.

Run: python benchmarks/replicas_time_to_ready.py [--repeat 3] [--load-seconds 1] [--json]
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from bench_common import describe, machine, median, require_sandbox, table, wait_job_gone

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.router import ensure_router_venv

GRANTED = re.compile(r"Granted job allocation (\d+)")
READY = re.compile(r"^ready: (http://\S+)(?: \([^)\n]*\))?$", re.M)
EVENT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\S+)")
SHAPES = ((1, "--tp 16"), (2, "--tp 8 --dp 2"), (8, "--tp 2 --dp 8"))


def render_replicas_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile, with the router venv (built once)."""
    venv = ensure_router_venv(sandbox.shared_dir)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    profile["router"] = {"source": "venv", "venv": str(venv), "policy": "round_robin"}
    scripts: Path = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    profile_path = scripts / "bench-replicas-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    path = scripts / "bench-replicas.sbatch"
    write_script(render_script(load_profile(str(profile_path))), path)
    return path


def _event_clock(line: str, day_start: float) -> tuple[float, str] | None:
    match = EVENT_TIME.match(line)
    if not match:
        return None
    hours, minutes, seconds, millis = (int(part) for part in match.groups()[:4])
    return day_start + hours * 3600 + minutes * 60 + seconds + millis / 1000, match.group(5)


def one_run(sandbox: SandboxInfo, script: Path, sizes: str, load_seconds: float) -> dict[str, Any]:
    """One salloc, timed from the allocation to the ready line; the job is cancelled after."""
    model = sandbox.shared_dir / "models" / "bench"
    model.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env",
               SGLANG_STANDIN_LOAD_SECONDS=str(load_seconds))
    command = ["salloc", "-N", "2", "-p", "sandbox", "--gpus-per-node=8", "bash", str(script),
               "--model-path", str(model), *sizes.split()]
    process = subprocess.Popen(command, cwd=sandbox.shared_dir, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    assert process.stdout is not None
    granted = ready = 0.0
    job_id = ""
    output = []
    for line in process.stdout:
        output.append(line)
        if not job_id and (match := GRANTED.search(line)):
            job_id, granted = match.group(1), time.time()
        if READY.match(line):
            ready = time.time()
            break
    if job_id:
        subprocess.run(["scancel", job_id], check=False)
    process.wait(timeout=60)
    if not ready:
        raise SystemExit(f"benchmark: no ready line for {sizes}:\n{''.join(output)}")
    wait_job_gone(job_id)
    day_start = calendar.timegm((*time.gmtime(granted)[:3], 0, 0, 0, 0, 0, 0))
    events = (sandbox.shared_dir / "logs" / job_id / "events.log").read_text().splitlines()
    ups = [clock for clock, kind in filter(None, (_event_clock(line, day_start)
                                                  for line in events)) if kind == "replica-up"]
    last_healthy = max(ups) if ups else ready
    return {"ready_s": ready - granted - load_seconds, "after_last_replica_s": ready - last_healthy}


def main() -> int:
    """Run every shape --repeat times and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sandbox = require_sandbox()
    script = render_replicas_script(sandbox)
    rows = []
    results: dict[str, Any] = {"machine": machine(), "load_seconds": args.load_seconds,
                               "shapes": []}
    for replicas, sizes in SHAPES:
        runs = [one_run(sandbox, script, sizes, args.load_seconds) for _ in range(args.repeat)]
        ready = [run["ready_s"] for run in runs]
        after = [run["after_last_replica_s"] for run in runs]
        rows.append((replicas, sizes, len(runs), median(ready), max(ready), median(after)))
        results["shapes"].append({"replicas": replicas, "sizes": sizes, "runs": runs})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(describe(results["machine"]))
    print(f"2 nodes x 8 fake GPUs; stand-in load D = {args.load_seconds} s; seconds")
    print(table(("replicas", "sizes", "runs", "ready-D median", "ready-D max",
                 "router median"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
