"""bench on the sandbox: sglang 0.5.23's real client against stand-in jobs, on both paths.

In the job's image on its head node (`srun --overlap`, the client's venvs mounted into the
stand-in image, which has no sglang of its own), from this machine and over SSH; where the CLI
runs, through a tunnel to a remote job and through sglang-router in front of replicas; always
behind an API key that never appears on a command line. Needs tests/sglang_bench/install.sh's
venv. Jobs run in a workspace of their own (the support files beside the script are per
workspace).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench_client import (
    BENCH_PYTHON,
    MISSING,
    OUTPUT_LEN,
    PROMPTS,
    SIZES,
    assert_every_request_counted,
    cli,
    client_in_image_options,
    model_dir,
    report_of,
)
from serving import salloc_serve, serve_env, shared_workspace, wait_job_gone
from sshd import SSHServer, sshd_available, start_sshd

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.image import build_standin_record
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.router import ensure_router_venv

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(not BENCH_PYTHON.is_file(), reason=MISSING)]
API_KEY = "bench-sandbox-key-5c1d"
# 2 ms a token, 20 ms before the first: the stand-in's pace (benchmarks/bench_accuracy.py
# checks that the client measures it).
PACE = {"SGLANG_STANDIN_TOKEN_SECONDS": "0.002", "SGLANG_STANDIN_FIRST_TOKEN_SECONDS": "0.02"}
# A job submitted over SSH is named HOST:JOB; the number alone is accepted while unambiguous.
SUBMITTED = re.compile(r"^submitted job (?:\S+:)?(\d+)", re.M)


def _image() -> Path:
    # This checkout's stand-in (its fault and pace knobs), never the shared latest image.
    return build_standin_record().tarball


def _submit_argv(sandbox: SandboxInfo, workspace: Path, *extra: str) -> list[str]:
    model = model_dir(sandbox.shared_dir)
    return ["submit", "--cluster", str(sandbox.profile_path), "--nodes", "2", "--workspace",
            str(workspace), "--image", str(_image()), "--timeout", "150", *extra, "--",
            "--model-path", str(model), "--tp", "2", "--served-model-name", "bench-tiny"]


def _saved_files_hold_no_key(report: dict[str, Any]) -> None:
    for path in report["files"]:
        assert API_KEY not in Path(path).read_text(), path


def test_bench_in_the_jobs_image_on_its_head_node_with_the_api_key(
        sandbox: SandboxInfo, tmp_path: Path) -> None:
    env = {"SLURM_SGLANG_STATE_DIR": str(tmp_path / "state"), "SLURM_SGLANG_API_KEY": API_KEY,
           **PACE}
    model = model_dir(sandbox.shared_dir)
    with shared_workspace(sandbox, "bench") as workspace:
        submitted = cli(_submit_argv(sandbox, workspace), env)
        match = SUBMITTED.search(submitted.stdout + submitted.stderr)
        job = match.group(1) if match else ""
        try:
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            # Two types, two client starts in the image (each about 20 s here); a list of
            # concurrencies is the local client's case (test_bench_gate).
            bench = cli(["bench", job, *SIZES, "--type", "throughput,concurrency",
                         "--concurrency", "4", "--tokenizer", str(model), "--json",
                         *client_in_image_options()], env)
            without_key = cli(["bench", job, *SIZES, "--tokenizer", str(model), "--json",
                               *client_in_image_options()],
                              {**env, "SLURM_SGLANG_API_KEY": ""})
            # The stand-in image's sglang is the stand-in, without the client: one line, before
            # any run.
            bare = cli(["bench", job, *SIZES, "--tokenizer", str(model), "--client", "job"], env)
        finally:
            if job:
                cli(["cancel", job], env)
        assert bench.returncode == 0, bench.stdout + bench.stderr
        report = report_of(bench)
        assert_every_request_counted(report, ["in 32 out 16 rate inf", "concurrency 4"])
        served = report["served"]
        endpoint = json.loads((workspace / "logs" / job / "endpoint.json").read_text())
        # The client ran in the image (Debian's python3, not the venv's) on the head node.
        assert served["client_python"] == "/usr/bin/python3"
        assert served["client_host"] == served["head"] == endpoint["head"]
        assert (served["nodes"], served["replicas"], served["profile"]) == (
            endpoint["nodes"], 1, "sandbox")
        assert served["parallelism"] == {"tp": 2, "pp": 1, "dp": 1, "ep": 1,
                                         "dp_attention": False}
        assert served["image_id"] == build_standin_record().image_id
        assert served["client_sglang_version"] == served["server_sglang_version"] == "0.5.23"
        assert served["server_model"] == "bench-tiny"
        bench_dir = workspace / "logs" / job / "bench"
        assert all(Path(path).parent == bench_dir for path in report["files"])
        assert len(list(bench_dir.glob("*.jsonl"))) == 2
        _saved_files_hold_no_key(report)
        assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr
        assert bare.stderr.startswith(
            "slurm-sglang: error: --client: sglang is not importable: No module named "
            "'sglang.benchmark' (/usr/bin/python3 on ")
        # 2 runs with the key, none without it (the server refused the probe), none for the
        # bare image.
        assert len(list(bench_dir.glob("*.log"))) == 2
        assert without_key.returncode == 2 and without_key.stderr.count("\n") == 1, (
            without_key.stdout + without_key.stderr)
        assert without_key.stderr.startswith("slurm-sglang: error: --api-key-file: http://")
        assert "needs an API key (401 Unauthorized)" in without_key.stderr


@pytest.fixture(scope="module")
def replicas_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile with sglang-router from a venv on the shared dir."""
    venv = ensure_router_venv(sandbox.shared_dir)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    profile["router"] = {"source": "venv", "venv": str(venv), "policy": "round_robin"}
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    profile_path = scripts / "bench-replicas-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    path = scripts / "bench-run-replicas.sbatch"
    write_script(render_script(load_profile(str(profile_path))), path)
    return path


def _requests_served(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    found = re.findall(r"^sglang:num_requests_total\{[^}]*\} (\S+)$", text, re.M)
    return int(sum(float(value) for value in found))


def test_bench_through_sglang_router_in_front_of_two_replicas(
        sandbox: SandboxInfo, replicas_script: Path, tmp_path: Path) -> None:
    model = model_dir(sandbox.shared_dir)
    args = ["--image", str(_image()), "--", "--model-path", str(model), "--tp", "1", "--dp", "2",
            "--served-model-name", "bench-tiny", "--enable-metrics"]
    env = serve_env(SLURM_SGLANG_API_KEY=API_KEY)
    env.update(PACE)
    with salloc_serve(sandbox, replicas_script, 2, args, tmp_path, env=env) as run:
        endpoint = json.loads((run.log_dir / "endpoint.json").read_text())
        bench = cli(["bench", run.url, *SIZES, "--tokenizer", str(model), "--python",
                     str(BENCH_PYTHON), "--output-dir", str(tmp_path / "bench"), "--json"],
                    {"SLURM_SGLANG_API_KEY": API_KEY})
        served = {item["replica"]: _requests_served(item["url"])
                  for item in endpoint["metrics"] if item["role"] == "server"}
    assert bench.returncode == 0, bench.stdout + bench.stderr
    report = report_of(bench)
    assert_every_request_counted(report, ["in 32 out 16 rate inf"])
    # The router spread them over both replicas (round robin): the 12 and the client's warm-up.
    assert len(endpoint["replicas"]) == 2 and len(served) == 2
    assert sum(served.values()) == PROMPTS + 1 and min(served.values()) >= PROMPTS // 2 - 1
    assert report["runs"][0]["output_tokens"] == PROMPTS * OUTPUT_LEN
    _saved_files_hold_no_key(report)


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SSHServer]]:
    """A HOME whose ~/.ssh/config reaches this machine's sshd as `login`."""
    if sshd_available() is not None:
        pytest.skip(str(sshd_available()))
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    home = tmp_path_factory.mktemp("laptop")
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "config").write_text(
        f"Host login\n    HostName 127.0.0.1\n    Port {server.port}\n    User {server.user}\n"
        f"    IdentityFile {server.client_key}\n")
    yield home, server
    server.stop()


def _laptop_cli(home: Path, *argv: str, key: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI as the user runs it on their laptop: its own HOME, state, and cwd (HOME)."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("SSH_AUTH_SOCK", "SLURM_SGLANG_API_KEY")}
    # Run from HOME (bench-results/ lands there), with this checkout's package first.
    env.update(HOME=str(home), SLURM_SGLANG_STATE_DIR=str(home / "state"),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]), **PACE)
    if key:
        env["SLURM_SGLANG_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "slurm_sglang", *argv], env=env, cwd=home,
                          capture_output=True, text=True, timeout=300)


def test_bench_a_remote_job_in_its_image_and_through_the_tunnel(
        sandbox: SandboxInfo, laptop: tuple[Path, SSHServer]) -> None:
    home, _ = laptop
    model = model_dir(sandbox.shared_dir)
    with shared_workspace(sandbox, "bench-ssh") as workspace:
        # The server's key on the cluster's storage (mode 0600), the client's in the env.
        key_file = workspace / "api.key"
        key_file.write_text(API_KEY + "\n")
        key_file.chmod(0o600)
        argv = _submit_argv(sandbox, workspace, "--ssh", "login", "--trust-new-host",
                            "--api-key-file", str(key_file))
        submitted = _laptop_cli(home, *argv)
        match = SUBMITTED.search(submitted.stdout + submitted.stderr)
        job = match.group(1) if match else ""
        try:
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            in_job = _laptop_cli(home, "bench", job, *SIZES, "--tokenizer", str(model),
                                 "--json", *client_in_image_options(), key=API_KEY)
            tunnelled = _laptop_cli(home, "bench", job, *SIZES, "--tokenizer", str(model),
                                    "--client", "local", "--python", str(BENCH_PYTHON),
                                    "--json", key=API_KEY)
            through = report_of(tunnelled)
            # Here under ./bench-results/<job>/, and a copy beside the job's logs over SSH.
            here = [Path(path) for path in through["files"] if not path.startswith("/")]
            there = [Path(path) for path in through["files"] if path.startswith("/")]
            assert [path.parent for path in here] == [Path("bench-results") / job] * 2
            assert [path.name for path in there] == [path.name for path in here]
            assert all(path.parent == workspace / "logs" / job / "bench" and path.is_file()
                       for path in there)
            assert (there[1].with_suffix(".log")).is_file()
        finally:
            if job:
                subprocess.run(["scancel", job], check=False)
                wait_job_gone(job)
    assert in_job.returncode == 0, in_job.stdout + in_job.stderr
    report = report_of(in_job)
    assert_every_request_counted(report, ["in 32 out 16 rate inf"])
    assert report["served"]["host"] == "login"
    assert report["served"]["client_python"] == "/usr/bin/python3"
    assert report["served"]["client_host"] == report["served"]["head"]
    assert report["files"][0].startswith(f"{workspace}/logs/{job}/bench/")

    assert tunnelled.returncode == 0, tunnelled.stdout + tunnelled.stderr
    assert_every_request_counted(through, ["in 32 out 16 rate inf"])
    assert through["url"].startswith("http://127.0.0.1:")
    assert through["served"]["tunnel"] == through["url"]
    assert through["served"]["client_python"] == str(BENCH_PYTHON)
