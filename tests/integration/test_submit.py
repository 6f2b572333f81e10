"""`python -m slurm_sglang submit` and the job's life on the real sandbox cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import job_containers, tiny_model

from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slurm_sglang", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """A private job-record directory and a short stand-in load time."""
    return dict(os.environ, SLURM_SGLANG_STATE_DIR=str(tmp_path / "state"),
                SGLANG_STANDIN_LOAD_SECONDS="1")


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    path = tiny_model(sandbox.shared_dir / "models" / "submit-model")
    return path


def _queued_jobs() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_submit_follow_status_logs_cancel(sandbox: SandboxInfo, cli_env: dict[str, str],
                                          model_dir: Path) -> None:
    profile = str(sandbox.profile_path)
    done = _cli("submit", "--cluster", profile, "--nodes", "2", "--time", "00:10:00", "--json",
                "--", "--model-path", str(model_dir), "--tp", "2", "--served-model-name", "m",
                env=cli_env)
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    job_id, url = submitted["job_id"], submitted["url"]
    try:
        assert submitted["status"] == "ready"
        head = submitted["endpoint"]["head"]
        assert url.split("//")[1].split(":")[0] == sandbox.addresses[head]

        status = _cli("status", "--json", env=cli_env)
        assert json.loads(status.stdout)["status"] == "ready"
        endpoint = _cli("endpoint", job_id, env=cli_env)
        assert (endpoint.returncode, endpoint.stdout.strip()) == (0, url)

        smoke = _cli("smoke", job_id, "--json", env=cli_env)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        checks = json.loads(smoke.stdout)["checks"]
        assert len(checks) >= 10 and all(check["passed"] for check in checks)

        worker_log = _cli("logs", job_id, "--rank", "1", env=cli_env)
        assert worker_log.returncode == 0
        assert "Init parallel" in worker_log.stdout  # the stand-in worker's own log lines
        driver_log = _cli("logs", env=cli_env)
        assert f"ready: {url}" in driver_log.stdout

        listing = json.loads(_cli("list", "--json", env=cli_env).stdout)
        assert [row["job_id"] for row in listing] == [job_id]
    finally:
        cancelled = _cli("cancel", job_id, env=cli_env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "2 node(s) confirmed their ranks ended" in cancelled.stdout
    assert job_id not in _queued_jobs()
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
    after = _cli("endpoint", job_id, env=cli_env)
    assert after.returncode == 1


def test_submit_human_output_has_phases_and_snippets(sandbox: SandboxInfo,
                                                     cli_env: dict[str, str],
                                                     model_dir: Path) -> None:
    done = _cli("submit", "--cluster", str(sandbox.profile_path), "--nodes", "2", "--",
                "--model-path", str(model_dir), "--tp", "2", env=cli_env)
    job_id = json.loads(_cli("list", "--json", env=cli_env).stdout)[0]["job_id"]
    try:
        assert done.returncode == 0, done.stderr
        assert "queued" in done.stderr or "starting" in done.stderr
        assert "loading the model" in done.stderr
        assert done.stdout.startswith("ready: http://")
        assert "from openai import OpenAI" in done.stdout
        assert f"python -m slurm_sglang cancel {job_id}" in done.stdout
    finally:
        _cli("cancel", job_id, env=cli_env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "2", "--", "--model-path", "m", "--tp", "3"], "(tp*pp) % nnodes == 0"),
        (["--", "--tp", "2"], "--model-path is required"),
        (["--nodes", "1", "--", "--model-path", "m", "--tp", "16"], "tp*pp*dp = 16*1*1 = 16 GPUs"),
        (["--", "--model-path", "m", "--tp-szie", "2"], "did you mean --tp-size?"),
        (["--time", "soon", "--", "--model-path", "m"], "--time: 'soon' is not a SLURM time"),
        (["--image", "/no/such.tar.gz", "--", "--model-path", "m"], "--image: /no/such.tar.gz"),
    ],
)
def test_invalid_submit_submits_nothing(sandbox: SandboxInfo, cli_env: dict[str, str],
                                        args: list[str], message: str) -> None:
    before = _queued_jobs()
    done = _cli("submit", "--cluster", str(sandbox.profile_path), *args, env=cli_env)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _queued_jobs() <= before


def test_invalid_profile_submits_nothing(sandbox: SandboxInfo, cli_env: dict[str, str],
                                         tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: sandbox\nslurm:\n  partiton: gpu\n")
    before = _queued_jobs()
    done = _cli("submit", "--cluster", str(bad), "--", "--model-path", "m", env=cli_env)
    assert done.returncode == 2
    assert f"{bad}:3: unknown key 'slurm.partiton'" in done.stderr
    assert _queued_jobs() <= before


def _wait(predicate: object, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout} s")


def _restarts(job_id: str) -> int:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    for word in shown.stdout.split():
        if word.startswith("Restarts="):
            return int(word.split("=")[1])
    return -1


def test_requeue_on_time_limit_and_endpoint_follows(sandbox: SandboxInfo,
                                                    cli_env: dict[str, str], model_dir: Path,
                                                    tmp_path: Path) -> None:
    profile = tmp_path / "requeue.yaml"
    profile.write_text(f"extends: {sandbox.profile_path}\nslurm:\n  requeue: true\n")
    # A 4-minute limit: submitit asks for its warning 120 s before the end, which sbatch(1) says
    # may come up to 60 s early: 60 to 120 s in, once the server is up, and still two minutes
    # before the limit for a slurmctld running late on a loaded machine.
    done = _cli("submit", "--cluster", str(profile), "--nodes", "2", "--time", "4", "--json", "--",
                "--model-path", str(model_dir), "--tp", "2", env=cli_env)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    job_id = first["job_id"]
    try:
        _wait(lambda: _restarts(job_id) == 1, 270, "the requeue")
        log_dir = Path(first["log_dir"])
        driver_log = (log_dir / "submitit" / f"{job_id}_0_log.out").read_text()
        assert "Requeued job" in driver_log
        assert "received SIGTERM: stopping every rank" in driver_log
        # The first run's driver stopped its ranks and said so before the requeue.
        assert (log_dir / "state").read_text().strip() == "stopped"
        status = json.loads(_cli("status", job_id, "--json", env=cli_env).stdout)
        assert status["status"] in ("pending", "starting", "preparing", "launching", "loading")
        # SLURM holds a requeued job for two minutes; an admin may release it at once.
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        _wait(lambda: _cli("endpoint", job_id, env=cli_env).returncode == 0, 120,
              "the requeued job's endpoint")
        second = json.loads((log_dir / "endpoint.json").read_text())
        assert second["job_id"] == job_id and second["ready_at"] != first["endpoint"]["ready_at"]
    finally:
        _cli("cancel", job_id, env=cli_env)
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}


def test_a_job_whose_python_the_nodes_lack_ends_the_follow_with_why(
        sandbox: SandboxInfo, cli_env: dict[str, str], model_dir: Path, tmp_path: Path) -> None:
    from slurm_sglang.sandbox.layout import NODE_PRIVATE_DIRS

    # The submitting venv reached through a path under /tmp, which each node has its own of:
    # submitit's batch shell cannot exec that python there (exit 127), and no state file, no
    # accounting (the sandbox keeps none): only slurmctld's record says what happened.
    assert str(tmp_path).startswith("/tmp/") and "/tmp" in NODE_PRIVATE_DIRS
    venv = tmp_path / "venv"
    venv.symlink_to(sys.prefix)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "slurm_sglang", "submit", "--cluster",
         str(sandbox.profile_path), "--nodes", "1", "--timeout", "120", "--",
         "--model-path", str(model_dir)],
        capture_output=True, text=True, env=cli_env, timeout=180, check=False)
    job_id = json.loads(_cli("list", "--json", env=cli_env).stdout)[0]["job_id"]
    try:
        why = "FAILED, exit 127 before the script ran: see the driver log "
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.startswith(f"job {job_id} failed: {why}"), done.stdout
        assert len(done.stdout.splitlines()) == 1, done.stdout
        status = _cli("status", job_id, env=cli_env)
        assert status.stdout.startswith(f"job {job_id}: failed ({why}"), status.stdout
        assert "SLURM: FAILED exit 127:0" in status.stdout
    finally:
        _cli("cancel", job_id, env=cli_env)


def test_gpus_the_node_refuses_are_the_failure_submit_and_status_show(
        sandbox: SandboxInfo, cli_env: dict[str, str], model_dir: Path) -> None:
    done = _cli("submit", "--cluster", str(sandbox.profile_path), "--nodes", "1", "--env",
                "GPUS=9", "--", "--model-path", str(model_dir), env=cli_env)
    job_id = json.loads(_cli("list", "--json", env=cli_env).stdout)[0]["job_id"]
    try:
        refused = "GPUS refused: GPUS=9 names GPU 9, which SLURM did not grant"
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.startswith(f"job {job_id} failed: "), done.stdout
        assert refused in done.stdout.splitlines()[0]
        status = _cli("status", job_id, env=cli_env)
        assert refused in status.stdout.splitlines()[0], status.stdout
        assert json.loads(_cli("status", job_id, "--json", env=cli_env).stdout)["why"].endswith(
            done.stdout.splitlines()[0].split(": ", 1)[1])
    finally:
        _cli("cancel", job_id, env=cli_env)


def test_a_pending_job_shows_why_it_waits_then_why_it_ended(
        sandbox: SandboxInfo, cli_env: dict[str, str], model_dir: Path) -> None:
    # One node more than the partition has: SLURM takes the job but will never start it.
    nodes = str(len(sandbox.nodes) + 1)
    done = _cli("submit", "--cluster", str(sandbox.profile_path), "--nodes", nodes,
                "--no-wait", "--", "--model-path", str(model_dir), "--tp", nodes, env=cli_env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    try:
        _wait(lambda: "PartitionNodeLimit" in _cli("status", job_id, env=cli_env).stdout, 60,
              "squeue's PartitionNodeLimit in status")
        assert _cli("status", job_id, env=cli_env).stdout.strip() == (
            f"job {job_id}: pending (queued (PENDING: PartitionNodeLimit))")
    finally:
        cancelled = _cli("cancel", job_id, env=cli_env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    status = _cli("status", job_id, env=cli_env).stdout
    assert status.startswith(f"job {job_id}: stopped (CANCELLED before the script ran, reason "
                             "PartitionNodeLimit: see the driver log "), status
