"""run.sbatch on the real sandbox: salloc and sbatch, 2 and 4 nodes, cleanup, image reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI
from serving import (
    job_containers,
    job_processes,
    salloc_serve,
    sbatch_serve,
    tiny_model,
)

from slurm_sglang.profile import ClusterProfile, load_profile, merge_profile_data
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
JSON_ARG = '{"rope_scaling": {"type": "yarn", "factor": 4.0}, "note": "a b $HOME; `x`"}'


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    """A model directory with a space in its name, on the shared storage."""
    path = tiny_model(sandbox.shared_dir / "models" / "tiny model")
    return path


@pytest.fixture(scope="module")
def sandbox_script(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run.sbatch rendered with the sandbox's own profile."""
    path = sandbox.shared_dir / "scripts" / "run-sandbox.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


def _head_address(sandbox: SandboxInfo, url: str) -> str:
    return url.split("//")[1].split(":")[0]


def test_salloc_two_nodes_committed_script(sandbox: SandboxInfo, model_dir: Path,
                                            tmp_path: Path) -> None:
    args = ["--image", str(sandbox.image_tarball), "--model-path", str(model_dir), "--tp", "2",
            "--json-model-override-args", JSON_ARG]
    with salloc_serve(sandbox, REPO / "sbatch" / "run.sbatch", 2, args, tmp_path,
                      salloc_args=["--gpus-per-node=8", "--exclusive"]) as run:
        info = run.get_json("/get_server_info")
        head = _head_address(sandbox, run.url)
        assert head in sandbox.addresses.values()
        ranks = sorted(info["ranks"], key=lambda rank: rank["node_rank"])
        assert [rank["node_rank"] for rank in ranks] == [0, 1]
        assert info["nnodes"] == 2
        assert ranks[0]["ip"] == head
        for rank in ranks:
            argv = rank["argv"]
            assert argv[argv.index("--json-model-override-args") + 1] == JSON_ARG
            assert argv[argv.index("--model-path") + 1] == str(model_dir)
            assert argv[argv.index("--nnodes") + 1] == "2"
            assert argv[argv.index("--node-rank") + 1] == str(rank["node_rank"])
            assert argv[argv.index("--dist-init-addr") + 1].startswith(f"{head}:")
            # Fake GPUs: the rank got every GPU SLURM gave the job on its node.
            assert rank["gpus"]["cuda_visible_devices"] == "0,1,2,3,4,5,6,7"
        endpoint = json.loads((run.log_dir / "endpoint.json").read_text())
        assert endpoint["url"] == run.url and endpoint["job_id"] == run.job_id
        assert endpoint["nodes"] == [rank["hostname"] for rank in ranks]
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
    assert job_processes(job_id) == []


@pytest.mark.parametrize("nodes", [2, 4])
def test_sbatch_serves_openai_clients(sandbox: SandboxInfo, sandbox_script: Path,
                                      model_dir: Path, nodes: int) -> None:
    if len(sandbox.nodes) < nodes:
        pytest.skip(f"sandbox has {len(sandbox.nodes)} nodes; run sandbox up --nodes {nodes}")
    args = ["--model-path", str(model_dir), "--tp", str(nodes), "--served-model-name", "tiny"]
    with sbatch_serve(sandbox, sandbox_script, nodes, args) as run:
        client = OpenAI(base_url=f"{run.url}/v1", api_key="none")
        chat = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
        assert chat.choices[0].message.content
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Count"}], max_tokens=8,
            stream=True)
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        assert len([p for p in pieces if p]) >= 2
        info = run.get_json("/get_server_info")
        assert sorted(rank["node_rank"] for rank in info["ranks"]) == list(range(nodes))
        assert len({rank["ip"] for rank in info["ranks"]}) == nodes
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}


def test_image_loaded_once_then_skipped(sandbox: SandboxInfo, sandbox_script: Path,
                                        model_dir: Path, tmp_path: Path) -> None:
    args = ["--model-path", str(model_dir), "--tp", "2"]
    with salloc_serve(sandbox, sandbox_script, 2, ["--force", *args], tmp_path) as first:
        loaded = [line for line in first.events() if " image " in line]
        logs = {node: first.log_dir / f"prepare-{node}.log" for node in sandbox.nodes}
        output = "".join(log.read_text(errors="replace") for log in logs.values() if log.exists())
    with salloc_serve(sandbox, sandbox_script, 2, args, tmp_path) as second:
        again = [line for line in second.events() if " image " in line]
    # --force reloads the image, except on a node where a container (another job's) uses it:
    # there it stays, and the node's prepare log says so (issue 23, item 5).
    kept = {node for node in sandbox.nodes if f"kept on {node}," in output}
    assert len(loaded) == 2
    for line in loaded:
        node = line.split(" node=")[1].split()[0]
        assert "status=loaded" in line or (node in kept and "status=present" in line), output
    assert len(again) == 2 and all("status=present" in line for line in again)


def test_image_broadcast_loads_within_the_jobs_one_step(sandbox: SandboxInfo,
                                                        sandbox_script: Path, model_dir: Path,
                                                        tmp_path: Path) -> None:
    """With broadcast on, nodes without the image get it by sbcast and load it in a phase of
    the job's one step: one srun for preparation, the load and the ranks."""
    args = ["--force", "--quiet", "--model-path", str(model_dir), "--tp", "2"]
    data = merge_profile_data(load_profile(str(sandbox.profile_path)).model_dump(),
                              {"container": {"broadcast": "sbcast"}})
    script = sandbox.shared_dir / "scripts" / "broadcast.sbatch"
    write_script(render_script(ClusterProfile.model_validate(data)), script)
    with salloc_serve(sandbox, script, 2, args, tmp_path) as run:
        events = run.events()
        job_id = run.job_id
        steps = (run.log_dir / "nodes.srun.log").exists(), (run.log_dir / "image.srun.log").exists()
    missing = [line for line in events if " image " in line and "status=missing" in line]
    loaded = [line for line in events if " image " in line and "status=loaded" in line]
    phases = [line.split(" name=")[1].split()[0] for line in events if " phase-end " in line]
    # --force leaves the image where another job's container uses it; elsewhere it is sent.
    assert len(missing) == len(loaded) >= 1, events
    assert phases.count("prepare") == 2 and phases.count("image") == 2, events
    assert steps == (True, False)
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
