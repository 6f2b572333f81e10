"""Image broadcast on the sandbox: plain load from shared storage vs one sbcast, 2 to 16 nodes.

A 1 GiB image (a tiny rootfs plus 1 GiB of random bytes: `podman import`, `podman save`,
`pigz -1`; cached in ~/.cache/slurm-sglang/) lies in the shared directory. Per node count and
mode, one exclusive allocation loads it into podman on every node:
- plain: every node runs `pigz -dc SHARED | podman load` (what run.sbatch does today);
- sbcast: `broadcast_image` from templates/partials/broadcast.sh.j2 sends the file once to
  each node's /tmp with SLURM's tree fan-out; every node then loads its local copy.

Bytes read from the shared copy come from Linux's per-process I/O accounting
(/proc/PID/io), read in a subshell around each reader (a reaped child's counters add to its
parent's): `rchar` of each node's pigz (it read()s the file) in plain mode; `read_bytes` of
sbcast in sbcast mode, since sbcast maps the file into memory (page faults do not count in
rchar), with the file's pages dropped from the page cache (POSIX_FADV_DONTNEED) just before,
so every page it reads is fetched from storage. Wall time: from before the broadcast to the
last node's load, on this machine's clock. `--consumer discard` has the nodes decompress the
image to /dev/null instead of `podman load`, leaving out podman's storage writes (the same
work in both modes, and most of the time on a small machine).

Run: python benchmarks/image_broadcast.py [--nodes 2,4,8,16] [--repeat 1]
     [--consumer podman|discard] [--json]
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

from slurm_sglang.render import builtin_template_dir, make_environment, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

CACHE_DIR = Path.home() / ".cache" / "slurm-sglang"
IMAGE_REF = "localhost/slurm-sglang-bench:1g"
PAYLOAD_BYTES = 1 << 30
CHUNK = 1 << 22
MODES = ("plain", "sbcast")
JOB_TEMPLATE = "image_broadcast_job.sh.j2"


def _pipe(producer: list[str], consumer: list[str], output: Path | None = None) -> None:
    """Run `producer | consumer` (consumer's stdout to `output`), failing on either's error."""
    sink = output.open("wb") if output else subprocess.DEVNULL
    try:
        first = subprocess.Popen(producer, stdout=subprocess.PIPE)
        second = subprocess.Popen(consumer, stdin=first.stdout, stdout=sink)
        assert first.stdout is not None
        first.stdout.close()
        codes = (second.wait(), first.wait())
    finally:
        if output:
            sink.close()  # type: ignore[union-attr]
    if any(codes):
        raise SystemExit(f"benchmark: {' '.join(producer)} | {' '.join(consumer)} "
                         f"exited {codes}")


def build_image(path: Path) -> None:
    """The 1 GiB image tarball: rootfs + random payload, imported, saved, compressed."""
    print(f"building {path} (1 GiB of random bytes; once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        rootfs = Path(work) / "rootfs"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "os-release").write_text('NAME="slurm-sglang benchmark image"\n')
        (rootfs / "payload").mkdir()
        with (rootfs / "payload" / "random.bin").open("wb") as payload:
            for _ in range(PAYLOAD_BYTES // CHUNK):
                payload.write(os.urandom(CHUNK))
        # A throwaway store: the machine's own podman storage never holds the image.
        podman = ["podman", "--root", f"{work}/store", "--runroot", f"{work}/run",
                  "--storage-driver", "vfs"]
        _pipe(["tar", "-C", str(rootfs), "-cf", "-", "."],
              [*podman, "import", "--quiet", "-", IMAGE_REF])
        partial = path.with_name(path.name + ".tmp")
        _pipe([*podman, "save", IMAGE_REF], ["pigz", "-1"], partial)
        partial.replace(path)


def shared_copy(sandbox: SandboxInfo) -> Path:
    """The image in the shared directory (built and cached on first use), flushed to disk."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cached = CACHE_DIR / "bench-image-1g.tar.gz"
    if not cached.exists():
        build_image(cached)
    shared = sandbox.shared_dir / "bench" / cached.name
    shared.parent.mkdir(parents=True, exist_ok=True)
    if not shared.exists() or shared.stat().st_size != cached.stat().st_size:
        shutil.copyfile(cached, shared)
        with shared.open("rb+") as handle:
            os.fsync(handle.fileno())
    return shared


def render_job(sandbox: SandboxInfo) -> Path:
    """The per-run job script, rendered with the broadcast partial, into the shared directory."""
    env = make_environment([builtin_template_dir(), REPO / "benchmarks" / "templates"])
    path = sandbox.shared_dir / "scripts" / "bench-image-broadcast.sh"
    write_script(env.get_template(JOB_TEMPLATE).render(broadcast_dir="/tmp"), path)
    return path


def run_once(sandbox: SandboxInfo, job: Path, image: Path, nodes: int, mode: str,
             consumer: str, timeout: float) -> dict[str, Any]:
    """One allocation, one mode: wall seconds and bytes read, from the job's result files."""
    results = Path(tempfile.mkdtemp(prefix=f"bcast-{nodes}-{mode}-", dir=sandbox.shared_dir /
                                    "bench"))
    drop_from_page_cache(image)
    argv = ["salloc", "-N", str(nodes), "-p", "sandbox", "--exclusive", "bash", str(job), mode,
            str(image), IMAGE_REF, str(results), consumer]
    try:
        finished = subprocess.run(argv, cwd=sandbox.shared_dir, capture_output=True, text=True,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"benchmark: {nodes} nodes, {mode}: no result in {timeout:.0f} s") from None
    if finished.returncode != 0:
        raise SystemExit(f"benchmark: {nodes} nodes, {mode}: exited {finished.returncode}\n"
                         f"{finished.stdout}{finished.stderr}")
    for line in finished.stderr.splitlines():
        if "Granted job allocation" in line:
            wait_job_gone(line.split()[-1])
    timing = read_counters(results / "timing")
    readers = {path.name[len("reader-"):-len(".io")]: read_counters(path)
               for path in results.glob("reader-*.io")}
    node_readers = {name: value for name, value in readers.items() if name != "sbcast"}
    size = image.stat().st_size
    if mode == "plain":
        shared_bytes = sum(value["rchar"] for value in node_readers.values())
        local_bytes = 0.0
    else:
        shared_bytes = readers["sbcast"]["read_bytes"]
        local_bytes = sum(value["rchar"] for value in node_readers.values())
    loads = [value["load_end"] - value["load_start"] for value in node_readers.values()]
    shutil.rmtree(results, ignore_errors=True)
    return {
        "nodes": nodes,
        "mode": mode,
        "consumer": consumer,
        "wall_s": timing["end"] - timing["start"],
        "broadcast_s": timing["broadcast_done"] - timing["start"],
        "load_max_s": max(loads),
        "shared_bytes": shared_bytes,
        "shared_reads": shared_bytes / size,
        "local_bytes": local_bytes,
        "nodes_reported": len(node_readers),
        "image_bytes": size,
    }


def main() -> int:
    """Run every node count in both modes and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=node_counts("2,4,8,16"),
                        help="node counts, comma-separated (default 2,4,8,16)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per node count and mode")
    parser.add_argument("--consumer", choices=["podman", "discard"], default="podman",
                        help="podman: `podman load` on every node (default); discard: read "
                             "and decompress only, without podman's storage writes")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    sandbox = require_sandbox()
    image = shared_copy(sandbox)
    job = render_job(sandbox)
    about = machine()
    runs: list[dict[str, Any]] = []
    skipped = []
    for nodes in args.nodes:
        if nodes > len(sandbox.nodes):
            skipped.append(f"{nodes} nodes: the sandbox has {len(sandbox.nodes)} "
                           f"({UP_HINT.format(nodes=nodes)})")
            continue
        for _ in range(args.repeat):
            for mode in MODES:
                started = time.monotonic()
                runs.append(run_once(sandbox, job, image, nodes, mode, args.consumer,
                                     args.timeout))
                print(f"  {nodes} nodes, {mode}: {runs[-1]['wall_s']:.1f} s "
                      f"(run took {time.monotonic() - started:.0f} s)", file=sys.stderr)
    rows = []
    for nodes in sorted({run["nodes"] for run in runs}):
        for mode in MODES:
            mine = [run for run in runs if run["nodes"] == nodes and run["mode"] == mode]
            rows.append([nodes, mode, len(mine), median([r["wall_s"] for r in mine]),
                         median([r["broadcast_s"] for r in mine]),
                         median([r["load_max_s"] for r in mine]),
                         f"{median([r['shared_bytes'] for r in mine]) / 1e9:.2f}",
                         f"{median([r['shared_reads'] for r in mine]):.2f}"])
    if args.json:
        print(json.dumps({"machine": about, "image": str(image), "consumer": args.consumer,
                          "runs": runs,
                          "skipped": skipped}, indent=2))
        return 0
    size = image.stat().st_size
    print(f"image broadcast on the sandbox: {size / 1e9:.2f} GB image ({image.name}), "
          f"nodes {'load it into podman' if args.consumer == 'podman' else 'read and discard it'};"
          " seconds; medians")
    print(table(["nodes", "mode", "runs", "wall", "broadcast", "slowest load",
                 "shared GB read", "shared reads"], rows))
    for line in skipped:
        print(f"skipped {line}")
    print(describe(about))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
