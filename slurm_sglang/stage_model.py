"""Model weights to node-local disk: the manifest, each node's copy, eviction, the hub download.

Shipped beside the script (docs/staging.md) and run by it: `manifest` and `send` where the
script starts, `node` and `finish` on every node, `download` once before the ranks. Stdlib only
and Python 3.6, like launch_plan.py (the download alone imports huggingface_hub).
A manifest line is `SIZE MTIME SHA256-or-- PATH`; a node's copy holds the source's manifest
as .slurm-sglang-manifest, written last, so a copy without it is no copy.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Iterator, List, Optional, Set, Tuple

MANIFEST = ".slurm-sglang-manifest"
GIB = 1 << 30


class Refused(Exception):
    """What stops staging, as one line for the pre-flight table or the terminal."""


class NoHubLibrary(Refused):
    """huggingface_hub is missing here and the model is not in the cache (exit 3)."""


def _files(source: str) -> Iterator[Tuple[str, str]]:
    for folder, dirs, names in os.walk(source, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not name.startswith(".") and os.path.isfile(path):
                yield os.path.relpath(path, source), path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(source: str, out: str, checksum: bool, cache: str) -> None:
    """Write the source's manifest (names, sizes, mtimes; sha256 with checksum) to out, print
    its bytes. Sums are read from the shared copy once per change and kept in cache."""
    if not os.path.isdir(source):
        raise Refused("--stage-model: {} is not a directory readable here".format(source))
    rows = [(os.stat(path), rel, path) for rel, path in _files(source)]
    if not rows:
        raise Refused("--stage-model: {} holds no files".format(source))
    lines = ["{} {} - {}".format(st.st_size, int(st.st_mtime), rel) for st, rel, _ in rows]
    if checksum:
        key = hashlib.sha256("\n".join([source] + lines).encode("utf-8")).hexdigest()
        kept = os.path.join(cache, key)
        if os.path.isfile(kept):
            lines = [" ".join(row) for row in _read(kept)]
        else:
            lines = ["{} {} {} {}".format(st.st_size, int(st.st_mtime), _sha256(path), rel)
                     for st, rel, path in rows]
            os.makedirs(cache, exist_ok=True)
            _write(kept, lines)
    _write(out, lines)
    print(sum(st.st_size for st, _, _ in rows))


def _write(path: str, lines: List[str]) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def _read(path: str) -> List[List[str]]:
    with open(path) as handle:
        return [line.split(" ", 3) for line in handle.read().splitlines() if line]


def _live_jobs() -> Optional[Set[str]]:
    """Job ids SLURM knows for this user; None when squeue cannot say (then nothing is stale)."""
    try:
        out = subprocess.check_output(["squeue", "-h", "-u", str(os.getuid()), "-o", "%A"],
                                      stderr=subprocess.DEVNULL, universal_newlines=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.split())


def _matches(target: str, expected: List[List[str]]) -> bool:
    """The copy at target is whole: its recorded manifest is the source's, sizes agree."""
    try:
        if _read(os.path.join(target, MANIFEST)) != expected:
            return False
        return all(os.path.getsize(os.path.join(target, row[3])) == int(row[0])
                   for row in expected)
    except OSError:
        return False


def _copies(root: str) -> List[Tuple[float, int, str]]:
    """The user's staged copies under root: (last use, bytes, path)."""
    found = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        mark = os.path.join(path, MANIFEST)
        if (not name.startswith(".") and os.path.isfile(mark)
                and os.stat(mark).st_uid == os.getuid()):
            found.append((os.stat(mark).st_mtime, sum(int(r[0]) for r in _read(mark)), path))
    return sorted(found)


def _in_use(root: str, job: str, live: Optional[Set[str]]) -> Set[str]:
    """Copies that another job SLURM still knows recorded as its own (.jobs/ID); the records
    of jobs gone from SLURM go."""
    used = set()  # type: Set[str]
    jobs = os.path.join(root, ".jobs")
    for name in os.listdir(jobs):
        if name == job:
            continue
        if live is None or name in live:
            with open(os.path.join(jobs, name)) as record:
                used.update(record.read().splitlines())
        else:
            os.remove(os.path.join(jobs, name))
    for name in os.listdir(root):
        # A job that ended between the broadcast and its finish step left its incoming copy.
        if name.startswith(".incoming-") and live is not None and name.split("-")[1] not in live:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return used


def node(manifest_path: str, target: str, job: str, margin: int, limit: int) -> None:
    """On a node before the ranks: record the use, keep a matching copy (status=present), or
    make room (least recently used first, never a copy in use) for the broadcast."""
    expected = _read(manifest_path)
    size = sum(int(row[0]) for row in expected)
    root = os.path.dirname(target)
    os.makedirs(root, mode=0o700, exist_ok=True)
    # Another user's folder, or a link to one, would receive (or serve) the weights.
    if os.path.islink(root) or os.lstat(root).st_uid != os.getuid():
        raise Refused("{} is a link or belongs to another user: remove it, or choose another "
                      "--stage-model".format(root))
    os.chmod(root, 0o700)
    os.makedirs(os.path.join(root, ".jobs"), exist_ok=True)
    _write(os.path.join(root, ".jobs", job), [target])
    used = _in_use(root, job, _live_jobs())
    incoming = os.path.join(root, ".incoming-{}-{}".format(job, os.path.basename(target)))
    # sbcast writes to every node of the job: each needs the folders, present or not (a later
    # job removes them once this one is gone from SLURM).
    for folder in sorted({os.path.dirname(row[3]) for row in expected}):
        os.makedirs(os.path.join(incoming, folder), exist_ok=True)
    if _matches(target, expected):
        os.utime(os.path.join(target, MANIFEST))
        print("status=present bytes={}".format(size))
        return
    if os.path.isdir(target):
        if target in used:
            raise Refused("{} differs from the source and another running job uses it".format(
                target))
        shutil.rmtree(target)
    copies = [c for c in _copies(root) if c[2] not in used]
    total = sum(c[1] for c in _copies(root))
    evicted = []
    while copies and (_free(root) < size + margin or (limit and total + size > limit)):
        _, bytes_, path = copies.pop(0)
        shutil.rmtree(path)
        total -= bytes_
        evicted.append(os.path.basename(path))
    if _free(root) < size + margin:
        raise Refused("{:.1f} GiB free in {}, {:.1f} GiB needed (model {:.1f} + margin {:.1f})"
                      .format(_free(root) / GIB, root, (size + margin) / GIB, size / GIB,
                              margin / GIB))
    print("status=missing bytes={} evicted={}".format(size, ",".join(evicted) or "none"))


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def send(manifest_path: str, source: str, target: str, job: str, fanout: int) -> None:
    """Where the script starts: one sbcast per file (SLURM's tree fan-out) into every node's
    incoming folder, printing progress as `bytes=N total=N rate=BYTES_PER_S`."""
    rows = _read(manifest_path)
    total = sum(int(row[0]) for row in rows)
    incoming = os.path.join(os.path.dirname(target), ".incoming-{}-{}".format(
        job, os.path.basename(target)))
    options = ["--force"] + (["--fanout={}".format(fanout)] if fanout else [])
    started, done = time.time(), 0
    for size, _, _, rel in rows:
        # sbcast refuses nothing but warns on an empty file; finish makes those.
        if int(size):
            subprocess.check_call(["sbcast"] + options + [os.path.join(source, rel),
                                                          os.path.join(incoming, rel)])
        done += int(size)
        print("bytes={} total={} rate={}".format(done, total, int(done / max(
            time.time() - started, 1e-3))), flush=True)


def finish(manifest_path: str, target: str, job: str, started: str) -> None:
    """On a node after the broadcast: check the incoming copy (sizes; sums in the manifest) and
    move it into place, or drop it where the node held a copy already."""
    expected = _read(manifest_path)
    incoming = os.path.join(os.path.dirname(target), ".incoming-{}-{}".format(
        job, os.path.basename(target)))
    if _matches(target, expected):
        shutil.rmtree(incoming, ignore_errors=True)
        print("bytes=0 seconds=0 rate=0")
        return
    for size, _, digest, rel in expected:
        path = os.path.join(incoming, rel)
        if size == "0" and not os.path.exists(path):
            open(path, "w").close()
        if not os.path.isfile(path) or os.path.getsize(path) != int(size):
            raise Refused("{} did not arrive whole in {}".format(rel, incoming))
        if digest != "-" and _sha256(path) != digest:
            raise Refused("{} arrived with another sha256 than the source's".format(rel))
    _write(os.path.join(incoming, MANIFEST), [" ".join(row) for row in expected])
    os.rename(incoming, target)
    total = sum(int(row[0]) for row in expected)
    seconds = max(time.time() - float(started), 1e-3)
    print("bytes={} seconds={:.1f} rate={}".format(total, seconds, int(total / seconds)))


def download(model: str) -> None:
    """Once per job, before the ranks: the hub id into the shared cache; prints the snapshot.
    Stale .lock files are cleared first when their job (ours, recorded) is gone from SLURM."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        cached = _cached_snapshot(model)
        if cached:
            print(cached)
            return
        raise NoHubLibrary("huggingface_hub is not importable by {} here (pip install --user "
                           "huggingface_hub)".format(sys.executable)) from None
    locks = os.path.join(constants.HF_HUB_CACHE, ".locks", "models--" + model.replace("/", "--"))
    os.makedirs(locks, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID", "0")
    marker = os.path.join(locks, "slurm-sglang-job-" + job)
    _clear_stale_locks(locks)
    open(marker, "w").close()
    try:
        path = snapshot_download(model)
    except Exception as error:  # the hub's errors vary by version: name it, then say what to do
        raise Refused("{} could not be downloaded from {} on {} ({}: {})".format(
            model, constants.ENDPOINT, socket.gethostname(), type(error).__name__,
            str(error).splitlines()[0] if str(error) else "")) from None
    finally:
        os.remove(marker)
    print(path)


def _cached_snapshot(model: str) -> str:
    """The main revision's snapshot in the hub cache (huggingface_hub's layout), or ''."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "huggingface")
    repo = os.path.join(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
                        "models--" + model.replace("/", "--"))
    try:
        with open(os.path.join(repo, "refs", "main")) as ref:
            snapshot = os.path.join(repo, "snapshots", ref.read().strip())
    except OSError:
        return ""
    return snapshot if os.path.isdir(snapshot) else ""


def _clear_stale_locks(locks: str) -> None:
    live = _live_jobs()
    markers = [n for n in os.listdir(locks) if n.startswith("slurm-sglang-job-")]
    gone = [n for n in markers if live is not None and n.rsplit("-", 1)[1] not in live]
    if not gone or len(gone) < len(markers):
        return  # no crashed job of ours, or one still downloading: its locks are live
    for name in os.listdir(locks):
        path = os.path.join(locks, name)
        if (name.endswith(".lock") or name in gone) and os.stat(path).st_uid == os.getuid():
            os.remove(path)
    sys.stderr.write("slurm-sglang: cleared the locks of ended job(s) {} in {}\n".format(
        ",".join(n.rsplit("-", 1)[1] for n in gone), locks))


def main(argv: List[str]) -> int:
    """`stage_model.py manifest|node|send|finish|download ARGS` (docs/staging.md)."""
    command, args = argv[0], argv[1:]
    try:
        if command == "manifest":
            manifest(args[0], args[1], args[2] == "1", args[3])
        elif command == "node":
            node(args[0], args[1], args[2], int(args[3]), int(args[4]))
        elif command == "send":
            send(args[0], args[1], args[2], args[3], int(args[4]))
        elif command == "finish":
            finish(args[0], args[1], args[2], args[3])
        elif command == "download":
            download(args[0])
    except (Refused, OSError, subprocess.CalledProcessError) as error:
        print(error)
        return 3 if isinstance(error, NoHubLibrary) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
