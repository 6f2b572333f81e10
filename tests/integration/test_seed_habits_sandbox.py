"""The seed's habits on the sandbox: bare --profile, GPUS against SLURM's grant, the head's log
in the terminal beside a ready line of its own, Ctrl-C, and the user's socket interface."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from serving import READY, job_containers, salloc_serve, serve_env, stop, tiny_model

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    path = tiny_model(sandbox.shared_dir / "models" / "tiny-seed")
    return path


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo) -> Path:
    path = sandbox.shared_dir / "scripts" / "run-seed-habits.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


def _driver_pid(salloc_pid: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(salloc_pid), "-x", "bash"],
                              capture_output=True, text=True, check=False).stdout.split()
    assert children, "no driver under salloc"
    return int(children[0])


def test_seed_command_line_with_gpus_follows_the_log_and_stops_on_ctrl_c(
        sandbox: SandboxInfo, script: Path, model_dir: Path, tmp_path: Path) -> None:
    # The seed's own example: a bare --profile before --model-path.
    args = ["--profile", "--model-path", str(model_dir), "--tp", "2"]
    env = serve_env(load_seconds=2, GPUS="2,3")
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=env,
                      salloc_args=["--gpus-per-node=8"]) as run:
        assert run.process is not None
        info = run.get_json("/get_server_info")
        assert [rank["gpus"]["cuda_visible_devices"] for rank in info["ranks"]] == ["2,3", "2,3"]
        assert (sandbox.shared_dir / "sglang_profile").is_dir()
        time.sleep(1.5)
        text = run.output.read_text(errors="replace")
        assert ", yours: GPUS=2,3" in text
        lines = text.splitlines()
        assert sum(line.split(" (no API key")[0] == f"ready: {run.url}" for line in lines) == 1
        assert any(re.match(r"rank-0-sbn\d+\| ", line) for line in lines), text
        assert not any("ready:" in line and not line.startswith("ready:") for line in lines)
        job_id = run.job_id
        # Ctrl-C in the terminal: SIGINT reaches the driver.
        started = time.monotonic()
        subprocess.run(["kill", "-INT", str(_driver_pid(run.process.pid))], check=True)
        code = run.process.wait(timeout=60)
        stopped_in = time.monotonic() - started
        text = run.output.read_text(errors="replace")
        assert "received SIGINT: stopping every rank" in text, text
        assert code != 0
        assert (run.log_dir / "state").read_text().strip() == "stopped"
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
    print(f"Ctrl-C to salloc's exit: {stopped_in:.1f} s")


def test_gpus_outside_the_grant_is_refused_in_one_line(sandbox: SandboxInfo, script: Path,
                                                       model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "refused.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["salloc", "-N", "1", "-p", "sandbox", "--gpus-per-node=2", "bash", str(script),
             "--model-path", str(model_dir)],
            cwd=sandbox.shared_dir, stdout=sink, stderr=subprocess.STDOUT,
            # Three GPUs cannot all be within a grant of two, whichever two SLURM picks.
            env=serve_env(GPUS="0,1,2"), start_new_session=True)
    try:
        process.wait(timeout=120)
    finally:
        stop(process, output)
    text = output.read_text()
    refusals = [line for line in text.splitlines() if line.startswith("slurm-sglang: GPUS=0,1,2")]
    assert len(refusals) == 1, text
    assert re.search(r"names GPU \d, which SLURM did not grant on sbn\d \(granted: \d,\d\)",
                     refusals[0]), refusals[0]
    assert "unset it" in refusals[0]
    assert "exited with exit code 2" in text or process.returncode == 2, text
    assert "starting 1 rank(s)" not in text


def test_the_users_socket_interface_moves_the_address(sandbox: SandboxInfo, script: Path,
                                                      model_dir: Path, tmp_path: Path) -> None:
    # The sandbox's nodes have eth0 and lo: lo moves the head's address to 127.0.0.1.
    env = serve_env(NCCL_SOCKET_IFNAME="lo")
    with salloc_serve(sandbox, script, 1, ["--quiet", "--model-path", str(model_dir)],
                      tmp_path, env=env) as run:
        assert run.url.startswith("http://127.0.0.1:")
        text = run.output.read_text(errors="replace")
        assert ", yours: NCCL_SOCKET_IFNAME=lo" in text
        assert "(127.0.0.1)" in text
        assert not re.search(r"^rank-0-\S+\| ", text, re.M), "--quiet followed the log"
        assert any("iface=lo" in line for line in run.events() if " node " in line)
        assert READY.search(text)
