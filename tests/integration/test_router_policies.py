"""Every --router-policy the script offers serves: a --dp 2 job across 2 nodes per policy.

sglang-router 0.3.2 refuses power_of_two at start with fewer than two workers, and its metrics
server takes 29000 unless told; these jobs hold the script to both, with the real router (the
venv on the shared directory) in front of the stand-in servers.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI
from serving import job_containers, profile_script, sbatch_serve, tiny_model

from slurm_sglang.launch_plan import ROUTER_POLICIES
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.router import ensure_router_venv

pytestmark = pytest.mark.cluster
MODEL = "tiny"


@pytest.fixture(scope="module")
def policies_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile with the router from a venv on the shared dir."""
    venv = ensure_router_venv(sandbox.shared_dir)
    return profile_script(sandbox, "policies", router={"source": "venv", "venv": str(venv)})


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    path: Path = tiny_model(sandbox.shared_dir / "models" / "policies")
    return path


def _metrics(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


@pytest.mark.parametrize("policy", ROUTER_POLICIES)
def test_policy_serves_two_replicas_across_two_nodes(
        sandbox: SandboxInfo, policies_script: Path, model_dir: Path, policy: str) -> None:
    args = ["--router-policy", policy, "--model-path", str(model_dir), "--served-model-name",
            MODEL, "--tp", "8", "--dp", "2"]
    with sbatch_serve(sandbox, policies_script, 2, args) as run:
        endpoint = json.loads((run.log_dir / "endpoint.json").read_text())
        assert [item["state"] for item in endpoint["replicas"]] == ["up", "up"]
        workers = run.get_json("/workers")["workers"]
        # One worker a replica, power_of_two's --worker-urls and the replicas' POSTs together.
        assert sorted(worker["url"] for worker in workers) == sorted(
            item["url"] for item in endpoint["replicas"])
        assert any(f"policy={policy}" in line for line in run.events() if "router-up" in line)

        client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0)
        servers = set()
        for _ in range(8):
            raw = client.completions.with_raw_response.create(
                model=MODEL, prompt="Hi", max_tokens=4)
            assert raw.parse().choices[0].text
            servers.add(raw.headers["x-standin-server"])
        assert servers <= {f"{item['nodes'][0]}:{item['url'].rsplit(':', 1)[1]}"
                           for item in endpoint["replicas"]}

        # The metrics port is the plan's, published, free of the default 29000.
        metrics_port = endpoint["router_metrics_port"]
        assert metrics_port not in (29000, endpoint["port"])
        assert metrics_port not in {int(item["url"].rsplit(":", 1)[1])
                                    for item in endpoint["replicas"]}
        assert "# TYPE" in _metrics(endpoint["head_ip"], metrics_port)
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
