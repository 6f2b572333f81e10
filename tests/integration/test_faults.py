"""Faults on the sandbox: each has a defined outcome, a message that names the culprit, a bound.

Bounds are generous (the issue's 15 s for a lost rank); the figures measured on the sandbox
are in docs/troubleshooting.md. Every test also checks that nothing of the job is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serving import (
    GRANTED,
    Serving,
    job_containers,
    job_processes,
    salloc_serve,
    serve_env,
    tiny_model,
    wait_job_gone,
)

from slurm_sglang.launch_plan import derived_dist_port
from slurm_sglang.profile import load_profile, merge_profile_data
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import Layout, SandboxInfo
from slurm_sglang.sandbox.nodes import (
    containers_on,
    namespace_id,
    netns_id,
    node_command,
    node_exec,
    pids_in_namespaces,
    read_pid,
)

pytestmark = pytest.mark.cluster
RANK_LOST_BOUND_SECONDS = 15
# A node is lost only on SLURM's word: srun complains of a dead slurmd once its MessageTimeout
# (10 s) ran out, after the 2 s of silence that made the driver ask.
NODE_LOST_BOUND_SECONDS = 20
KILL_WAIT_SECONDS = 10  # the sandbox's slurm.conf KillWait


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    """A model directory on the shared storage, readable on every node."""
    path = tiny_model(sandbox.shared_dir / "models" / "faults model")
    return path


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo) -> Path:
    """run.sbatch rendered with the sandbox's own profile."""
    path = sandbox.shared_dir / "scripts" / "faults.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


def _ended(run: Serving, since: float, timeout: float = 90) -> tuple[int, float, str]:
    """Wait for the salloc to end: its exit code, seconds since `since`, its output."""
    assert run.process is not None
    code = run.process.wait(timeout=timeout)
    return code, time.monotonic() - since, run.output.read_text(errors="replace")


def _measured(what: str, seconds: float) -> None:
    """Print a measured figure (pytest -s shows it; docs/troubleshooting.md lists them)."""
    print(f"\nmeasured: {what}: {seconds:.1f} s")


def _leftovers(sandbox: SandboxInfo, job_id: str, nodes: list[str] | None = None) -> list[str]:
    found = [f"{node}: {container['Names'][0]}" for node in nodes or sandbox.nodes
             for container in containers_on(node, f"slurm-sglang.job={job_id}")]
    return found + job_processes(job_id)


def _endpoint_nodes(run: Serving) -> list[str]:
    import json

    nodes: list[str] = json.loads((run.log_dir / "endpoint.json").read_text())["nodes"]
    return nodes


@contextmanager
def listener(node: str, port: int) -> Iterator[None]:
    """Something else listening on node's port while the block runs."""
    code = ("import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('0.0.0.0', {port})); s.listen(); print('up', flush=True); time.sleep(600)")
    process = subprocess.Popen(node_command(node, ["python3", "-c", code]),
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "up"
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


def _salloc_until_end(sandbox: SandboxInfo, script: Path, args: list[str], tmp_path: Path,
                      salloc_args: tuple[str, ...] = (),
                      env: dict[str, str] | None = None) -> tuple[int, float, str, str]:
    """salloc a run to its end: exit code, seconds from the grant (not the queue), output, job."""
    output_path = tmp_path / f"salloc-{time.monotonic_ns()}.out"
    with output_path.open("wb") as sink:
        process = subprocess.Popen(
            ["salloc", "-N", "2", "-p", "sandbox", *salloc_args, "bash", str(script), *args],
            cwd=sandbox.shared_dir, stdout=sink, stderr=subprocess.STDOUT,
            env=env or serve_env(), start_new_session=True)
    granted = None
    try:
        while process.poll() is None and granted is None:
            match = GRANTED.search(output_path.read_text(errors="replace"))
            granted = time.monotonic() if match else None
            time.sleep(0.1)
        code = process.wait(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    seconds = time.monotonic() - (granted or time.monotonic())
    output = output_path.read_text(errors="replace")
    match = GRANTED.search(output)
    assert match, output
    wait_job_gone(match.group(1))
    return code, seconds, output, match.group(1)


@pytest.mark.parametrize("rank", [1, 0], ids=["worker", "head"])
def test_rank_killed_while_serving_ends_the_job(sandbox: SandboxInfo, script: Path,
                                                model_dir: Path, tmp_path: Path,
                                                rank: int) -> None:
    args = ["--model-path", str(model_dir), "--tp", "2"]
    with salloc_serve(sandbox, script, 2, args, tmp_path) as run:
        node = _endpoint_nodes(run)[rank]
        killed = time.monotonic()
        node_exec(node, ["podman", "kill", "--signal", "KILL",
                         f"slurm-sglang-{run.job_id}-r{rank}"])
        code, seconds, output = _ended(run, killed)
    _measured(f"rank {rank} killed -> job ended", seconds)
    assert code != 0
    assert seconds < RANK_LOST_BOUND_SECONDS, output
    assert f"rank {rank} on {node} exited with code 137" in output
    assert _leftovers(sandbox, run.job_id) == []


def _slow_podman_rm_env(sandbox: SandboxInfo, seconds: float = 6.0) -> dict[str, str]:
    """serve_env with a podman that takes `seconds` to remove a running container.

    Stopping a real sglang container (GPU hooks, unmounts, a loaded node) takes seconds: no
    cleanup may depend on finishing before SLURM's or the driver's patience runs out.
    """
    wrappers = sandbox.shared_dir / "slow-podman-rm"
    wrappers.mkdir(exist_ok=True)
    podman = wrappers / "podman"
    podman.write_text(
        "#!/bin/bash\n"
        'if [[ $1 == rm ]]; then\n'
        '  for name in "$@"; do\n'
        '    [[ $(/usr/bin/podman inspect -f "{{.State.Running}}" "$name" 2>/dev/null) ==\\\n'
        '      true ]] &&\n'
        f'      sleep {seconds} && break\n'
        "  done\n"
        "fi\n"
        'exec /usr/bin/podman "$@"\n')
    podman.chmod(0o755)
    return serve_env(PATH=f"{wrappers}:{os.environ['PATH']}")


def test_worker_killed_while_serving_leaves_no_survivor_on_any_node(
        sandbox: SandboxInfo, script: Path, model_dir: Path, tmp_path: Path) -> None:
    # The stand-in's head, like sglang's, never learns that a tensor-parallel peer died and
    # ignores SIGTERM once it has: only the launcher can end it, on a node that is healthy.
    args = ["--model-path", str(model_dir), "--tp", "16"]
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=_slow_podman_rm_env(sandbox)) as run:
        worker = _endpoint_nodes(run)[1]
        killed = time.monotonic()
        node_exec(worker, ["podman", "kill", "--signal", "KILL", f"slurm-sglang-{run.job_id}-r1"])
        code, seconds, output = _ended(run, killed)
        left_at_end = _leftovers(sandbox, run.job_id)
    _measured("worker rank killed (--tp 16, 2 nodes) -> job ended", seconds)
    assert code != 0
    assert seconds < RANK_LOST_BOUND_SECONDS, output
    failures = [line for line in output.splitlines()
                if line.startswith("slurm-sglang: ") and " exited with code " in line]
    first = f"slurm-sglang: rank 1 on {worker} exited with code 137"
    assert failures and failures[0] == first, output
    assert ": lost" not in output, output
    assert left_at_end == [], output
    wait_job_gone(run.job_id)
    assert _leftovers(sandbox, run.job_id) == []


def test_rank_failing_at_start_ends_before_health_timeout_with_its_log(
        sandbox: SandboxInfo, script: Path, model_dir: Path, tmp_path: Path) -> None:
    # The worker's port is taken (pre-flight skipped): it loads, then cannot bind, as sglang's
    # dummy health server would fail.
    worker = sandbox.nodes[1]
    args = ["--skip-preflight", "--port", "30777", "--health-timeout", "300",
            "--model-path", str(model_dir), "--tp", "2"]
    with listener(worker, 30777):
        code, seconds, output, job_id = _salloc_until_end(
            sandbox, script, args, tmp_path, ("-w", ",".join(sandbox.nodes[:2])))
    _measured("start -> job ended, worker failing at start", seconds)
    assert code != 0 and seconds < 60, output
    assert f"rank 1 on {worker} exited with code 1" in output
    assert f"{worker}| " in output and "error while attempting to bind" in output
    wait_job_gone(job_id)
    assert _leftovers(sandbox, job_id) == []


def _late_rank_end_env(sandbox: SandboxInfo, node: str, seconds: float = 2.0) -> dict[str, str]:
    """serve_env with a podman that, on `node`, reports its container's end `seconds` late.

    On a loaded machine the head's peers may exit, and srun signal the head's node task,
    before the head's own podman returns: this makes that order certain.
    """
    wrappers = sandbox.shared_dir / "late-rank-end"
    wrappers.mkdir(exist_ok=True)
    podman = wrappers / "podman"
    podman.write_text(
        "#!/bin/bash\n"
        f'if [[ $1 == run && $(hostname) == {node} ]]; then\n'
        f'  /usr/bin/podman "$@"; code=$?; sleep {seconds}; exit "$code"\n'
        "fi\n"
        'exec /usr/bin/podman "$@"\n')
    podman.chmod(0o755)
    return serve_env(load_seconds=120, PATH=f"{wrappers}:{os.environ['PATH']}")


def test_health_timeout_ends_with_the_heads_log(sandbox: SandboxInfo, script: Path,
                                                model_dir: Path, tmp_path: Path) -> None:
    # The worker exits as soon as the head is removed, and srun then stops the head's node
    # task: the head's log must still be shown, as that of the rank that failed.
    head = sandbox.nodes[0]
    args = ["--health-timeout", "3", "--model-path", str(model_dir), "--tp", "2"]
    code, seconds, output, job_id = _salloc_until_end(
        sandbox, script, args, tmp_path, ("-w", ",".join(sandbox.nodes[:2])),
        env=_late_rank_end_env(sandbox, head))
    _measured("start -> job ended, --health-timeout 3", seconds)
    assert code != 0 and seconds < 60, output
    assert f"{head} (rank 0): /health not 200 after 3 s" in output
    assert f"  {head}| " in output and "Load weight begin" in output
    assert _leftovers(sandbox, job_id) == []


def _sbatch(sandbox: SandboxInfo, script: Path, args: list[str], *options: str) -> str:
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-p", "sandbox", f"--output={sandbox.shared_dir}/slurm-%j.out",
         *options, str(script), *args],
        cwd=sandbox.shared_dir, capture_output=True, text=True, check=True, env=serve_env())
    return submitted.stdout.strip().split(";")[0]


def _wait_ready(sandbox: SandboxInfo, job_id: str, timeout: float = 300) -> str:
    output = sandbox.shared_dir / f"slurm-{job_id}.out"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace") if output.exists() else ""
        match = re.search(r"^ready: (http://\S+)(?: \([^)\n]*\))?$", text, re.M)
        if match:
            return match.group(1)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not ready within {timeout} s (queued behind others?)")


def _seconds_until_no_containers(sandbox: SandboxInfo, job_id: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not any(job_containers(sandbox, job_id).values()):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"containers of job {job_id} left after {timeout} s")


@pytest.mark.parametrize("how", ["scancel", "time-limit"])
def test_scancel_and_time_limit_leave_no_container(sandbox: SandboxInfo, script: Path,
                                                   model_dir: Path, how: str) -> None:
    job_id = _sbatch(sandbox, script, ["--model-path", str(model_dir), "--tp", "2"], "-N", "2")
    try:
        _wait_ready(sandbox, job_id)
        if how == "scancel":
            subprocess.run(["scancel", job_id], check=True)
        else:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=00:00:01"],
                           check=True)
            _wait_state_gone_running(job_id)
        seconds = _seconds_until_no_containers(sandbox, job_id, 60)
        _measured(f"{how} -> no container on any node", seconds)
        assert seconds <= KILL_WAIT_SECONDS + 5
        wait_job_gone(job_id)
    finally:
        subprocess.run(["scancel", job_id], check=False)
    assert _leftovers(sandbox, job_id) == []
    output = (sandbox.shared_dir / f"slurm-{job_id}.out").read_text()
    assert "stopping every rank" in output or "stopped:" in output, output


def _wait_state_gone_running(job_id: str, timeout: float = 90) -> None:
    """Wait until SLURM takes the job out of RUNNING (the time limit is checked periodically)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state != "RUNNING":
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still RUNNING {timeout} s after its time limit")


def test_stale_container_of_same_name_is_replaced_and_dist_port_moves(
        sandbox: SandboxInfo, script: Path, model_dir: Path) -> None:
    nodes = sandbox.nodes[:2]
    # The job loads the image itself; the stale container needs it first (an earlier test
    # may have left it there, or not).
    assert sandbox.image_id is not None and sandbox.image_tarball is not None
    if node_exec(nodes[0], ["podman", "image", "exists", sandbox.image_id], check=False).returncode:
        node_exec(nodes[0], ["sh", "-c", 'gzip -dc "$1" | podman load -q', "load",
                             str(sandbox.image_tarball)])
    # The lowest start of the job's nodes' ephemeral ranges, as the driver passes it on.
    ephemeral_from = min(int(node_exec(node, ["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
                             .stdout.split()[0]) for node in nodes)
    job_id = _sbatch(sandbox, script, ["--model-path", str(model_dir), "--tp", "2"],
                     "-N", "2", "-w", ",".join(nodes), "--hold")
    stale = f"slurm-sglang-{job_id}-r0"
    dist_port = derived_dist_port(int(job_id), ephemeral_from)
    try:
        stale_id = node_exec(nodes[0], ["podman", "create", "--name", stale, "--label",
                                        "slurm-sglang.test=stale", sandbox.image_id,
                                        "true"]).stdout.strip()
        with listener(nodes[0], dist_port):
            subprocess.run(["scontrol", "release", job_id], check=True)
            url = _wait_ready(sandbox, job_id)
            running = node_exec(nodes[0], ["podman", "ps", "-a", "--format", "{{.ID}} {{.Names}}",
                                           "--filter", f"name={stale}"]).stdout.split()
            dist = (sandbox.shared_dir / "logs" / job_id / "events.log").read_text()
        assert url.startswith("http://")
        assert len(running) == 2 and not stale_id.startswith(running[0])
        assert node_exec(nodes[0], ["podman", "ps", "-a", "-q", "--filter",
                                    "label=slurm-sglang.test=stale"]).stdout.strip() == ""
        chosen = int(re.search(r" ports http=\d+ dist=(\d+)", dist).group(1))  # type: ignore[union-attr]
        assert not dist_port <= chosen < dist_port + 14
    finally:
        subprocess.run(["scancel", job_id], check=False)
        node_exec(nodes[0], ["podman", "rm", "-f", "-t", "0", stale], check=False)
        wait_job_gone(job_id)
    assert _leftovers(sandbox, job_id) == []


def test_two_jobs_sharing_a_node_get_different_ports(sandbox: SandboxInfo, script: Path,
                                                     model_dir: Path) -> None:
    # The first job's head listens on the second job's worker node: its HTTP port must move.
    first_nodes, second_nodes = sandbox.nodes[1:3], sandbox.nodes[0:2]
    args = ["--model-path", str(model_dir), "--tp", "2"]
    # Four of a node's eight GPUs each (the script asks for all eight by default).
    sharing = ("--oversubscribe", "--gpus-per-node=4")
    first = _sbatch(sandbox, script, args, "-N", "2", "-w", ",".join(first_nodes), *sharing)
    second = ""
    try:
        first_url = _wait_ready(sandbox, first)
        second = _sbatch(sandbox, script, args, "-N", "2", "-w", ",".join(second_nodes),
                         *sharing)
        second_url = _wait_ready(sandbox, second)
        import urllib.request

        for url in (first_url, second_url):
            with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
                assert response.status == 200
        assert first_url.rsplit(":", 1)[1] != second_url.rsplit(":", 1)[1]
    finally:
        for job_id in (first, second):
            if job_id:
                subprocess.run(["scancel", job_id], check=False)
        for job_id in (first, second):
            if job_id:
                wait_job_gone(job_id)
    assert _leftovers(sandbox, first) == [] and _leftovers(sandbox, second) == []


def _kill_node(node: str, job_id: str) -> int:
    """Kill node's slurmd and every process of the job there at once: a node lost to this job.

    Other jobs' processes on the node are spared (the sandbox is shared); what matters to this
    job is that its node task, containers and the slurmd that would report them are gone.
    """
    slurmd = read_pid(Layout.from_env().slurmd_pid_file(node))
    assert slurmd is not None
    namespaces = [ns for ns in (netns_id(node), namespace_id(slurmd, "mnt")) if ns]
    candidates = set(pids_in_namespaces(namespaces))
    markers = (f"[{job_id}.".encode(), f"slurm-sglang-{job_id}-".encode())
    victims = {slurmd} | {pid for pid in candidates if any(m in _cmdline(pid) for m in markers)}
    children = _children(candidates)
    pending = list(victims)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in victims:
                victims.add(child)
                pending.append(child)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return len(victims)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pids: set[int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in pids:
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(pid)
    return children


def _restore_node(node: str, job_id: str) -> None:
    """Boot the node again (a fresh slurmd) and drop what the crash left in its storage."""
    from slurm_sglang.sandbox.daemons import start_slurmd

    start_slurmd(Layout.from_env(), node)
    node_exec(node, ["podman", "rm", "-f", "-t", "0", "--filter",
                     f"label=slurm-sglang.job={job_id}"], check=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state in {"idle", "mixed", "allocated"}:
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} did not come back idle: {state}")


# With 3 nodes, two survivors' keep-alives, out of phase, leave the driver no quiet second.
@pytest.mark.parametrize("nodes", [2, 3])
def test_lost_node_ends_the_job_naming_it(sandbox: SandboxInfo, script: Path,
                                          model_dir: Path, tmp_path: Path, nodes: int) -> None:
    args = ["--model-path", str(model_dir), "--tp", str(nodes)]
    with salloc_serve(sandbox, script, nodes, args, tmp_path) as run:
        *others, lost = _endpoint_nodes(run)
        try:
            killed = time.monotonic()
            assert _kill_node(lost, run.job_id) > 2
            code, seconds, output = _ended(run, killed)
            _measured(f"node lost -> job ended ({nodes} nodes)", seconds)
            survivors = _leftovers(sandbox, run.job_id, others)
        finally:
            _restore_node(lost, run.job_id)
    assert code != 0
    assert seconds < NODE_LOST_BOUND_SECONDS, output
    assert f"rank {nodes - 1} on {lost}: lost (SLURM" in output, output
    assert survivors == []
    wait_job_gone(run.job_id, timeout=120)
    assert _leftovers(sandbox, run.job_id) == []


@pytest.fixture(scope="module")
def strict_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch of the sandbox profile, asking for far more free disk than any node has."""
    data = merge_profile_data(load_profile(str(sandbox.profile_path)).model_dump(),
                              {"preflight": {"min_free_disk_gb": 100000}})
    from slurm_sglang.profile import ClusterProfile

    path = sandbox.shared_dir / "scripts" / "faults-strict.sbatch"
    write_script(render_script(ClusterProfile.model_validate(data)), path)
    return path


def test_preflight_reports_one_table_and_starts_nothing(sandbox: SandboxInfo,
                                                        strict_script: Path,
                                                        tmp_path: Path) -> None:
    head, worker = sandbox.nodes[:2]
    # /tmp is private to each sandbox node: this model directory exists on the head only.
    model = f"/tmp/preflight-model-{time.monotonic_ns()}"
    node_exec(head, ["mkdir", "-p", model])
    args = ["--model-path", model, "--tp", "2", "--port", "30555"]
    try:
        with listener(worker, 30555):
            code, _, output, job_id = _salloc_until_end(
                sandbox, strict_script, args, tmp_path, ("-w", f"{head},{worker}"))
        table = output[output.index("pre-flight failed on"):].splitlines()
        rows = {tuple(line.split()[:2]) for line in table[2:] if line.startswith("  ")}
        assert code == 1, output
        assert table[1].split() == ["NODE", "CHECK", "DETAIL"]
        assert {(head, "disk"), (worker, "disk"), (worker, "model"),
                (worker, "ports")} <= rows, output
        assert (head, "model") not in rows
        assert "rank-started" not in (sandbox.shared_dir / "logs" / job_id / "events.log"
                                      ).read_text()
        assert _leftovers(sandbox, job_id) == []

        skipped = ["--skip-preflight", *args[:-2]]
        with salloc_serve(sandbox, strict_script, 2, skipped, tmp_path,
                          salloc_args=["-w", f"{head},{worker}"]) as run:
            assert run.get_json("/v1/models")["data"]
    finally:
        node_exec(head, ["rmdir", model], check=False)
