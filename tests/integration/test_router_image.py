"""router.source: image, the built-in profiles' default: sglang-router runs from the serving image.

The stand-in image carries no router, so this test publishes a second image, the stand-in with
the real sglang-router 0.3.2 wheels added for the image's own python3, and runs a --dp 2 job
across 2 nodes with it as the profile's image.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI
from serving import job_containers, profile_script, salloc_serve, tiny_model

from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import containers_on
from slurm_sglang.sandbox.router import ensure_router_image

pytestmark = pytest.mark.cluster
MODEL = "tiny"


@pytest.fixture(scope="module")
def image_router_script(sandbox: SandboxInfo) -> Path:
    """run.sbatch for the sandbox profile as it is (router.source left at image), its image the
    stand-in with sglang-router."""
    assert "router" not in sandbox.profile_path.read_text(), (
        "the sandbox profile should leave router.source at its default")
    return profile_script(sandbox, "router-image",
                          container={"image": str(ensure_router_image(sandbox.shared_dir))})


def test_router_from_the_image_serves_two_replicas_and_leaves_nothing(
        sandbox: SandboxInfo, image_router_script: Path, tmp_path: Path) -> None:
    model = tiny_model(sandbox.shared_dir / "models" / "router-image")
    args = ["--model-path", str(model), "--served-model-name", MODEL, "--tp", "8", "--dp", "2"]
    with salloc_serve(sandbox, image_router_script, 2, args, tmp_path, timeout=120) as run:
        endpoint = json.loads((run.log_dir / "endpoint.json").read_text())
        assert [item["state"] for item in endpoint["replicas"]] == ["up", "up"]
        # The router is a container of the job on the head node, from the job's image.
        router = [c for c in containers_on(endpoint["head"], f"slurm-sglang.job={run.job_id}")
                  if c["Names"][0] == f"slurm-sglang-{run.job_id}-router"]
        assert len(router) == 1 and router[0]["Labels"]["slurm-sglang.role"] == "router"
        assert router[0]["Image"].startswith("localhost/sglang-standin-router:")
        workers = run.get_json("/workers")["workers"]
        assert sorted(worker["url"] for worker in workers) == sorted(
            item["url"] for item in endpoint["replicas"])
        client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0)
        servers = set()
        for _ in range(6):
            raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hi",
                                                              max_tokens=4)
            assert raw.parse().choices[0].text
            servers.add(raw.headers["x-standin-server"])
        assert servers <= {f"{item['nodes'][0]}:{item['url'].rsplit(':', 1)[1]}"
                           for item in endpoint["replicas"]}
        # Its metrics on the plan's port, as from the venv.
        url = f"http://{endpoint['head_ip']}:{endpoint['router_metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert "# TYPE" in response.read().decode()
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
