"""--dp N across nodes on the sandbox: N stand-in servers behind the real sglang-router 0.3.2.

Each test starts a real job (salloc or sbatch), talks to the router with the OpenAI client and
reads every replica's /get_server_info, which reports the GPUs and node it was given.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from serving import (
    Serving,
    job_containers,
    profile_script,
    salloc_serve,
    sbatch_serve,
    serve_env,
    tiny_model,
)

from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec
from slurm_sglang.sandbox.router import ensure_router_venv

pytestmark = pytest.mark.cluster
MODEL = "tiny"


@pytest.fixture(scope="module")
def replicas_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile with the router from a venv on the shared dir."""
    venv = ensure_router_venv(sandbox.shared_dir)
    return profile_script(sandbox, "replicas",
                          router={"source": "venv", "venv": str(venv), "policy": "round_robin"})


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    path: Path = tiny_model(sandbox.shared_dir / "models" / "replicas")
    return path


def _args(model_dir: Path, sizes: str, *extra: str) -> list[str]:
    return ["--model-path", str(model_dir), "--served-model-name", MODEL, *sizes.split(), *extra]


def _endpoint(run: Serving) -> dict[str, Any]:
    endpoint: dict[str, Any] = json.loads((run.log_dir / "endpoint.json").read_text())
    return endpoint


def _server_info(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/get_server_info", timeout=10) as response:
        info: dict[str, Any] = json.load(response)
    return info


def _serve_through_router(run: Serving, replicas: int) -> set[str]:
    """Completions and a streamed chat through the router; returns the servers that answered."""
    client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0)
    servers = set()
    for _ in range(2 * replicas):
        raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hi", max_tokens=4)
        assert raw.parse().choices[0].text
        servers.add(raw.headers["x-standin-server"])
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) >= 2
    return servers


def _check_replicas(run: Serving, replicas: int, span: int) -> list[dict[str, Any]]:
    endpoint = _endpoint(run)
    listed = endpoint["replicas"]
    assert len(listed) == replicas and all(item["state"] == "up" for item in listed)
    assert endpoint["url"] == run.url
    workers = run.get_json("/workers")
    assert sorted(worker["url"] for worker in workers["workers"]) == sorted(
        item["url"] for item in listed)
    # Without the job's key nobody lists, adds or removes the router's workers (issue 23).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{run.url}/workers", timeout=10)
    assert refused.value.code == 401
    infos = []
    for item in listed:
        info = _server_info(item["url"])
        assert info["nnodes"] == span and info.get("dp_size", 1) == 1
        ranks = info["ranks"]
        assert sorted(rank["hostname"] for rank in ranks) == sorted(item["nodes"])
        for rank in ranks:
            assert rank["gpus"]["cuda_visible_devices"] == ",".join(map(str, item["gpus"]))
        infos.append(info)
    servers = _serve_through_router(run, replicas)
    assert servers == {
        f"{item['nodes'][0]}:{item['url'].rsplit(':', 1)[1]}" for item in listed}
    return infos


def _kill_replica(sandbox: SandboxInfo, job_id: str, replica: int, rank: int = 0) -> str:
    """Remove one rank's container at once, as a crash would; returns its node."""
    for node, names in job_containers(sandbox, job_id).items():
        name = f"slurm-sglang-{job_id}-rep{replica}-r{rank}"
        if name in names:
            node_exec(node, ["podman", "rm", "-f", "-t", "0", name])
            return node
    raise AssertionError(f"no container of replica {replica} rank {rank} in job {job_id}")


def _wait_event(run: Serving, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in run.events():
            if re.search(pattern, line):
                return line
        time.sleep(0.3)
    raise AssertionError(f"no event {pattern} within {timeout} s:\n" + "\n".join(run.events()))


def test_tp2_dp8_two_nodes_survives_a_killed_replica(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path, tmp_path: Path) -> None:
    env = serve_env(SGLANG_STANDIN_TOKEN_SECONDS="0.1")
    with salloc_serve(sandbox, replicas_script, 2, _args(model_dir, "--tp 2 --dp 8"), tmp_path,
                      salloc_args=["--gpus-per-node=8"], env=env) as run:
        infos = _check_replicas(run, replicas=8, span=1)
        endpoint = _endpoint(run)
        for node in ("sbn1", "sbn2"):
            on_node = [item for item in endpoint["replicas"] if item["nodes"] == [node]]
            assert len(on_node) == 4
            gpus = [gpu for item in on_node for gpu in item["gpus"]]
            assert sorted(gpus) == list(range(8))
        ports = {info["port"] for info in infos}
        assert len(ports) == 8 and int(run.url.rsplit(":", 1)[1]) not in ports

        client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0, timeout=60)

        def one(index: int) -> str:
            answer = client.completions.create(model=MODEL, prompt=f"q{index}", max_tokens=20)
            return answer.choices[0].text

        with ThreadPoolExecutor(max_workers=50) as pool:
            futures = [pool.submit(one, index) for index in range(50)]
            time.sleep(1.0)
            node = _kill_replica(sandbox, run.job_id, replica=5)
            answers = [future.result() for future in futures]
        assert all(answers)
        down = _wait_event(run, r"replica-down .*replica=5 ")
        assert f"node={node}" in down
        _wait_event(run, r"replica-up .*replica=5 .*start=1")
        time.sleep(0.5)
        assert (run.log_dir / "state").read_text().strip() == "ready"
        restarted = next(item for item in _endpoint(run)["replicas"] if item["replica"] == 5)
        assert restarted["state"] == "up"
        assert _server_info(restarted["url"])["port"] == int(restarted["url"].rsplit(":", 1)[1])
        assert len(run.get_json("/workers")["workers"]) == 8
        output = run.output.read_text()
        assert f"replica 5 failed on {node}" in output and "replica 5 is serving again" in output
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
    assert not [line for line in _processes() if "sglang_router" in line and job_id in line]


def _processes() -> list[str]:
    result = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_tp8_dp2_two_nodes_one_replica_a_node(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path) -> None:
    with sbatch_serve(sandbox, replicas_script, 2, _args(model_dir, "--tp 8 --dp 2")) as run:
        infos = _check_replicas(run, replicas=2, span=1)
        assert sorted(info["ranks"][0]["hostname"] for info in infos) == ["sbn1", "sbn2"]
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}


def test_tp16_dp2_four_nodes_each_replica_spans_two(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path) -> None:
    if len(sandbox.nodes) < 4:
        pytest.skip("needs a sandbox of 4 nodes")
    with sbatch_serve(sandbox, replicas_script, 4, _args(model_dir, "--tp 16 --dp 2")) as run:
        infos = _check_replicas(run, replicas=2, span=2)
        heads = [info["dist_init_addr"] for info in infos]
        assert len(set(heads)) == 2
        # A worker rank's end fails its whole replica: both of its nodes restart together.
        _kill_replica(sandbox, run.job_id, replica=1, rank=1)
        _wait_event(run, r"replica-down .*replica=1 ")
        _wait_event(run, r"replica-up .*replica=1 .*start=1")
        restarted = _server_info(_endpoint(run)["replicas"][1]["url"])
        assert sorted(rank["hostname"] for rank in restarted["ranks"]) == ["sbn3", "sbn4"]
        assert len(run.get_json("/workers")["workers"]) == 2
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}


def test_attention_dp_is_one_server_without_router(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path) -> None:
    args = _args(model_dir, "--tp 8 --dp 2 --enable-dp-attention")
    with sbatch_serve(sandbox, replicas_script, 2, args) as run:
        info = run.get_json("/get_server_info")
        assert info["nnodes"] == 2
        assert "replicas" not in _endpoint(run)
        assert not [line for line in run.events() if "router-up" in line]
        client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0)
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=4).choices[0].text


def test_exit_on_replica_failure_ends_the_job_naming_it(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path, tmp_path: Path) -> None:
    args = _args(model_dir, "--tp 8 --dp 2", "--exit-on-replica-failure")
    with salloc_serve(sandbox, replicas_script, 2, args, tmp_path,
                      salloc_args=["--gpus-per-node=8"]) as run:
        node = _kill_replica(sandbox, run.job_id, replica=1)
        assert run.process is not None
        run.process.wait(timeout=60)
        output = run.output.read_text()
        assert f"replica 1 failed on {node}" in output
        assert "--exit-on-replica-failure ends the job" in output
        assert (run.log_dir / "state").read_text().strip() == "failed"
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}


def test_dp_that_does_not_fit_is_refused_before_launch(
        sandbox: SandboxInfo, replicas_script: Path, model_dir: Path) -> None:
    # The refusal comes before any step: the allocation's variables are all it reads.
    env = serve_env(SLURM_JOB_ID="999999", SLURM_JOB_NODELIST="sbn[1-2]", SLURM_GPUS_PER_NODE="8")
    result = subprocess.run(
        ["bash", str(replicas_script), *_args(model_dir, "--tp 4 --dp 8")],
        cwd=sandbox.shared_dir, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "need 8*4 = 32 GPUs, but 2 node(s) x 8 GPUs hold 2 replica(s) each = 4" in result.stderr
    assert not (sandbox.shared_dir / "logs" / "999999").exists()
