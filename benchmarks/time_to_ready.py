"""Time to ready on the sandbox: what slurm-sglang adds between the allocation and `ready:`.

Runs `salloc -N N bash run-sandbox.sbatch ...` (the script rendered from the sandbox's own
profile) with the stand-in's load time set to D, several times per node count, and prints
nodes, the median and max of (ready - allocation start - D), and the phases in between.

Clock: every instant is this machine's wall clock (the sandbox's nodes share it).
- allocation start: the moment salloc's "Granted job allocation N" line reaches this
  script (salloc prints it as the allocation starts, before it starts the script);
  `scontrol show job`'s StartTime has one-second resolution, too coarse for this.
- driver start: the driver's first line ("slurm-sglang: job N: ...") reaching this script.
- node events: the driver's time stamps in logs/<job>/events.log (ms resolution), written
  as each node's event line reaches the driver.
- health 200: the first 200 of the head's /health, polled from this machine every 20 ms
  from the moment the head's address and port are in events.log.
- ready: the `ready: URL` line reaching this script.

Run: python benchmarks/time_to_ready.py [--nodes 2,4,8,16,32] [--repeat 5] [--load-seconds 2]
     [--compare-template-dir DIR] [--warmup N] [--exclusive] [--json]
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
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

from slurm_sglang.profile import load_profile
from slurm_sglang.render import (
    MAIN_TEMPLATE,
    build_context,
    make_environment,
    template_search_path,
    write_script,
)
from slurm_sglang.sandbox.layout import SandboxInfo

GRANTED = re.compile(r"Granted job allocation (\d+)")
# salloc names the job as soon as it is queued, so a run that never starts can be cancelled.
JOB_ID = re.compile(r"(?:Pending|Granted) job allocation (\d+)")
QUEUE_TIMEOUT_S = 900
DRIVER_START = re.compile(r"^slurm-sglang: job \d+:")
READY = re.compile(r"^ready: (http://\S+)(?: \([^)\n]*\))?$")
EVENT = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\S+)(.*)$")
HEALTH_POLL_S = 0.02
MAX_FAILURES = 3
PHASES = ("start", "topology", "image check", "rank launch", "sglang start - D", "readiness")
PHASE_HELP = {
    "start": "allocation start -> driver's first line (bash start, flags, image ID)",
    "topology": "driver's first line -> last node's `node` event (prepare srun, addresses)",
    "image check": "last `node` -> last `image` event (ports, pre-flight, image inspect)",
    "rank launch": "last `image` -> last `rank-started` (ranks srun, container run)",
    "sglang start - D": "last `rank-started` -> head /health 200, minus D "
                        "(container and stand-in start, rendezvous)",
    "readiness": "head /health 200 -> `ready:` line (readiness detection)",
}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Event:
    """One events.log line: when the driver got it, its kind and fields."""

    at: float
    kind: str
    fields: dict[str, str]


@dataclass
class Run:
    """One salloc run from allocation to ready, with every time stamp (epoch seconds)."""

    nodes: int
    job_id: str
    granted: float
    driver_start: float
    ready: float
    health_200: float | None
    url: str
    events: list[Event] = field(default_factory=list)

    def _last(self, kind: str) -> float:
        times = [event.at for event in self.events if event.kind == kind]
        if not times:
            raise RuntimeError(f"job {self.job_id}: no `{kind}` event in events.log")
        return max(times)

    def phases(self, load_seconds: float) -> dict[str, float]:
        """Seconds per phase; they add up to the overhead (ready - granted - D)."""
        node = self._last("node")
        image = self._last("image")
        started = self._last("rank-started")
        healthy = self.health_200 if self.health_200 is not None else self.ready
        return {
            "start": self.driver_start - self.granted,
            "topology": node - self.driver_start,
            "image check": image - node,
            "rank launch": started - image,
            "sglang start - D": healthy - started - load_seconds,
            "readiness": self.ready - healthy,
        }

    def overhead(self, load_seconds: float) -> float:
        """ready - allocation start - D."""
        return self.ready - self.granted - load_seconds


def event_epoch(hours: str, minutes: str, seconds: str, millis: str, near: float) -> float:
    """An events.log HH:MM:SS.mmm (UTC) as epoch seconds on the day of `near`."""
    day = time.gmtime(near)
    stamp = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, int(hours), int(minutes),
                             int(seconds), 0, 0, 0)) + int(millis) / 1000
    # Across midnight the stamp belongs to the day before or after.
    if stamp - near > 43200:
        stamp -= 86400
    elif near - stamp > 43200:
        stamp += 86400
    return stamp


def parse_events(text: str, near: float) -> list[Event]:
    """events.log lines as Events; unknown lines are skipped."""
    events = []
    for line in text.splitlines():
        match = EVENT.match(line)
        if not match:
            continue
        fields = dict(word.split("=", 1) for word in match.group(6).split() if "=" in word)
        hours, minutes, seconds, millis = match.group(1, 2, 3, 4)
        events.append(Event(event_epoch(hours, minutes, seconds, millis, near),
                            match.group(5), fields))
    return events


class LineClock:
    """Reads a process's output line by line and stamps each line as it arrives."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            stamp = time.time()
            with self.changed:
                self.lines.append((stamp, raw.decode(errors="replace").rstrip("\n")))
                self.changed.notify_all()
        with self.changed:
            self.lines.append((time.time(), ""))
            self.changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float,
                 process: subprocess.Popen[bytes]) -> tuple[float, re.Match[str]]:
        """The arrival time and match of the first line matching `pattern`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for stamp, line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return stamp, match
                if process.poll() is not None and not self.thread.is_alive():
                    break
                if time.monotonic() > deadline:
                    break
                self.changed.wait(0.1)
        output = "\n".join(line for _, line in self.lines)
        raise RuntimeError(f"no line matching {pattern.pattern!r} in {timeout:.0f} s:\n{output}")


class HealthWatch:
    """Polls the head's /health from this machine once events.log names its address."""

    def __init__(self, events_log: Path) -> None:
        self.events_log = events_log
        self.first_200: float | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _head_url(self) -> str | None:
        try:
            events = parse_events(self.events_log.read_text(errors="replace"), time.time())
        except OSError:
            return None
        ip = next((e.fields.get("ip") for e in events if e.kind == "node"
                   and e.fields.get("rank") == "0"), None)
        port = next((e.fields.get("http") for e in events if e.kind == "ports"), None)
        return f"http://{ip}:{port}/health" if ip and port else None

    def _watch(self) -> None:
        url = None
        while not self.stopped.is_set() and url is None:
            url = self._head_url()
            if url is None:
                time.sleep(HEALTH_POLL_S)
        while url is not None and not self.stopped.is_set():
            try:
                with _OPENER.open(url, timeout=1) as response:
                    if response.status == 200:
                        self.first_200 = time.time()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(HEALTH_POLL_S)

    def stop(self) -> None:
        """Stop polling."""
        self.stopped.set()
        self.thread.join(timeout=5)


def run_once(sandbox: SandboxInfo, script: Path, nodes: int, load_seconds: float,
             model: Path, timeout: float, exclusive: bool = False) -> Run:
    """One salloc of `nodes` nodes up to the ready line; the job is cancelled afterwards."""
    env = {
        **os.environ,
        "SLURM_SGLANG_CONTAINER_CLI": "podman",
        "SLURM_SGLANG_GPUS_MODE": "env",
        "SGLANG_STANDIN_LOAD_SECONDS": str(load_seconds),
        "SGLANG_STANDIN_WARMUP_SECONDS": "0",
    }
    # The sandbox shares nodes between jobs (OverSubscribe): ports of our own keep a run clear
    # of other jobs' servers without waiting for whole nodes.
    port, dist_port = fresh_ports()
    argv = ["salloc", "-N", str(nodes), "-p", "sandbox", *(["--exclusive"] if exclusive else []),
            "bash", str(script), "--model-path", str(model), "--tp", str(nodes),
            "--port", str(port), "--dist-port", str(dist_port)]
    process = subprocess.Popen(argv, cwd=sandbox.shared_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    clock = LineClock(process)
    job_id = ""
    watch: HealthWatch | None = None
    try:
        _, match = clock.wait_for(JOB_ID, 60, process)
        job_id = match.group(1)
        granted, _ = clock.wait_for(GRANTED, QUEUE_TIMEOUT_S, process)
        log_dir = sandbox.shared_dir / "logs" / job_id
        watch = HealthWatch(log_dir / "events.log")
        driver_start, _ = clock.wait_for(DRIVER_START, timeout, process)
        ready, match = clock.wait_for(READY, timeout, process)
        watch.stop()
        events = parse_events((log_dir / "events.log").read_text(), ready)
        return Run(nodes, job_id, granted, driver_start, ready, watch.first_200,
                   match.group(1), events)
    finally:
        if watch is not None:
            watch.stop()
        if job_id:
            subprocess.run(["scancel", job_id], check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if job_id:
            wait_job_gone(job_id)


def summarise(runs: list[Run], load_seconds: float) -> dict[str, Any]:
    """Median and max overhead and the median of each phase, for one node count."""
    overheads = [run.overhead(load_seconds) for run in runs]
    phases = [run.phases(load_seconds) for run in runs]
    return {
        "nodes": runs[0].nodes,
        "runs": len(runs),
        "overhead_median_s": median(overheads),
        "overhead_max_s": max(overheads),
        "phases_median_s": {name: median([p[name] for p in phases]) for name in PHASES},
        "health_seen": sum(run.health_200 is not None for run in runs),
    }


def render_sandbox_script(sandbox: SandboxInfo, name: str,
                          template_dir: Path | None = None) -> Path:
    """run.sbatch from the sandbox's profile (partials in `template_dir` first), shared."""
    profile = load_profile(str(sandbox.profile_path))
    search = template_search_path(profile)
    if template_dir is not None:
        search.insert(0, template_dir)
    text = make_environment(search).get_template(MAIN_TEMPLATE).render(ctx=build_context(profile))
    path = sandbox.shared_dir / "scripts" / f"bench-{name}.sbatch"
    write_script(text, path)
    return path


def main() -> int:
    """Parse options, run every node count, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=node_counts("2,4,8,16,32"),
                        help="node counts, comma-separated (default 2,4,8,16,32)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per node count (default 5)")
    parser.add_argument("--load-seconds", type=float, default=2.0,
                        help="D: the stand-in's model load time (default 2)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for ready")
    parser.add_argument("--compare-template-dir", type=Path, metavar="DIR",
                        help="also run a script whose partials come from DIR first (an admin "
                             "override directory), alternating runs with the built-in one")
    parser.add_argument("--warmup", type=int, default=0, metavar="N",
                        help="N untimed runs at the largest node count first (loads the image "
                             "on fresh nodes, so no timed run pays for it)")
    parser.add_argument("--exclusive", action="store_true",
                        help="salloc --exclusive: wait for nodes no other job uses")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    sandbox = require_sandbox()
    scripts = {"built-in": render_sandbox_script(sandbox, "run-sandbox")}
    if args.compare_template_dir:
        scripts[f"override {args.compare_template_dir.name}"] = render_sandbox_script(
            sandbox, "run-sandbox-compare", args.compare_template_dir)
    model = sandbox.shared_dir / "models" / "bench-tiny"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    about = machine()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    raw: list[dict[str, Any]] = []
    fitting = [nodes for nodes in args.nodes if nodes <= len(sandbox.nodes)]
    for _ in range(args.warmup if fitting else 0):
        warm = run_once(sandbox, scripts["built-in"], max(fitting), args.load_seconds, model,
                        args.timeout, args.exclusive)
        print(f"  warm-up at {warm.nodes} nodes: job {warm.job_id}", file=sys.stderr)
    for nodes in args.nodes:
        if nodes > len(sandbox.nodes):
            skipped.append(f"{nodes} nodes: the sandbox has {len(sandbox.nodes)} "
                           f"({UP_HINT.format(nodes=nodes)})")
            continue
        runs: dict[str, list[Run]] = {name: [] for name in scripts}
        # Alternate the scripts so that a change in the machine's load hits both alike.
        while min(len(done) for done in runs.values()) < args.repeat:
            for name, script in scripts.items():
                if len(runs[name]) >= args.repeat:
                    continue
                try:
                    run = run_once(sandbox, script, nodes, args.load_seconds, model,
                                   args.timeout, args.exclusive)
                except RuntimeError as error:
                    failures.append(f"{nodes} nodes, {name}: {str(error).splitlines()[0]}")
                    print(f"  {nodes} nodes: a run failed: {error}", file=sys.stderr)
                    if len(failures) > MAX_FAILURES:
                        raise SystemExit(
                            f"benchmark: more than {MAX_FAILURES} failed runs") from None
                    continue
                runs[name].append(run)
                raw.append({**asdict(run), "script": name,
                            "events": [asdict(e) for e in run.events],
                            "phases_s": run.phases(args.load_seconds),
                            "overhead_s": run.overhead(args.load_seconds)})
                print(f"  {nodes} nodes, {name}, run {len(runs[name])}/{args.repeat}: "
                      f"job {run.job_id}, overhead {run.overhead(args.load_seconds):.3f} s",
                      file=sys.stderr)
        for name, done in runs.items():
            results.append({"script": name, **summarise(done, args.load_seconds)})

    if args.json:
        print(json.dumps({"machine": about, "load_seconds": args.load_seconds,
                          "sandbox_nodes": len(sandbox.nodes), "results": results,
                          "skipped": skipped, "failures": failures, "runs": raw,
                          "phases": PHASE_HELP}, indent=2))
        return 0
    compare = len(scripts) > 1
    header = ["nodes", *(["script"] if compare else []), "runs", "overhead med",
              "overhead max", *PHASES]
    rows = [[r["nodes"], *([r["script"]] if compare else []), r["runs"], r["overhead_median_s"],
             r["overhead_max_s"], *(r["phases_median_s"][name] for name in PHASES)]
            for r in results]
    print(f"time to ready on the sandbox, D = {args.load_seconds:g} s; seconds; "
          "overhead = ready - allocation start - D; phases are medians")
    print(table(header, rows))
    for name in PHASES:
        print(f"  {name}: {PHASE_HELP[name]}")
    for line in skipped:
        print(f"skipped {line}")
    for line in failures:
        print(f"failed and repeated: {line}")
    print(describe(about))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
