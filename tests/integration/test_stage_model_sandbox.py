"""Model staging on the sandbox: the model copied once to each node's own /tmp and found there by
the next job, a node without room named in the pre-flight table, and a hub id downloaded once
from a stand-in hub at HF_ENDPOINT (and the line a user gets when the hub is out of reach)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_standin import HubStandin
from serving import salloc_serve, serve_env, shared_workspace

from slurm_sglang.profile import ClusterProfile, load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec

pytestmark = pytest.mark.cluster

# A python with huggingface_hub where the script starts (tests/sglang_bench/install.sh makes it).
HUB_PYTHON = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "slurm-sglang/sglang-0.5.23-bench/bin/python")
WEIGHTS = os.urandom(2 << 20)


@pytest.fixture
def workspace(sandbox: SandboxInfo) -> Iterator[Path]:
    with shared_workspace(sandbox, "stage") as path:
        yield path


@pytest.fixture
def local_dir(sandbox: SandboxInfo) -> Iterator[str]:
    """A directory under each node's own /tmp (the sandbox's node-local disk), removed after."""
    path = f"/tmp/slurm-sglang-stage-test-{uuid.uuid4().hex[:8]}"
    yield path
    for node in sandbox.nodes:
        node_exec(node, ["rm", "-rf", path])


def _script(sandbox: SandboxInfo, workspace: Path, profile: ClusterProfile | None = None
            ) -> Path:
    path = workspace / "run.sbatch"
    write_script(render_script(profile or load_profile(str(sandbox.profile_path))), path)
    return path


def _model(workspace: Path) -> Path:
    model = workspace / "models" / "tiny"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "model.safetensors").write_bytes(WEIGHTS)
    (model / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return model


def _kinds(events: list[str], kind: str) -> list[str]:
    return [line for line in events if line.split()[1:2] == [kind]]


def test_the_model_is_copied_once_and_the_next_job_copies_nothing(
        sandbox: SandboxInfo, workspace: Path, local_dir: str, tmp_path: Path) -> None:
    script, model = _script(sandbox, workspace), _model(workspace)
    args = ["--stage-model", local_dir, "--model-path", str(model), "--tp", "2"]
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=serve_env()) as first:
        served = first.get_json("/get_server_info")["model_path"]
        events = first.events()
    size = sum(path.stat().st_size for path in model.rglob("*") if path.is_file())
    assert served.startswith(f"{local_dir}/root/tiny-")
    assert [line.split()[4] for line in _kinds(events, "stage")] == ["status=missing"] * 2
    staged = _kinds(events, "staged")
    assert len(staged) == 2 and all(f" bytes={size} " in line for line in staged)
    assert f" bytes={size} total={size} " in _kinds(events, "stage-progress")[-1]
    for line in staged:
        node = line.split()[2].removeprefix("node=")
        copy = node_exec(node, ["cat", f"{served}/tokenizer/vocab.txt"])
        assert copy.stdout == "a\nb\n"
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=serve_env()) as second:
        assert second.get_json("/get_server_info")["model_path"] == served
        events = second.events()
    assert [line.split()[4] for line in _kinds(events, "stage")] == ["status=present"] * 2
    assert not _kinds(events, "stage-progress") and not _kinds(events, "staged")


def test_a_node_without_room_is_named_in_the_preflight_table(
        sandbox: SandboxInfo, workspace: Path, local_dir: str) -> None:
    profile = load_profile(str(sandbox.profile_path))
    paths = profile.paths.model_copy(update={"local_model_dir": local_dir,
                                             "local_model_margin_gb": 1e6})
    script = _script(sandbox, workspace, profile.model_copy(update={"paths": paths}))
    done = subprocess.run(
        ["salloc", "-N", "2", "-p", "sandbox", "bash", str(script), "--quiet",
         "--model-path", str(_model(workspace)), "--tp", "2"],
        cwd=sandbox.shared_dir, capture_output=True, text=True, env=serve_env(), timeout=180)
    assert done.returncode == 1, done.stderr
    rows = [line.split(None, 2) for line in done.stderr.splitlines() if "  stage  " in line]
    assert len(rows) == 2, done.stderr
    assert all(row[0].startswith("sbn") and "GiB needed (model 0.0 + margin" in row[2]
               for row in rows), done.stderr


@pytest.mark.skipif(not HUB_PYTHON.exists(), reason="no python with huggingface_hub: run "
                    "tests/sglang_bench/install.sh")
def test_a_hub_id_is_downloaded_once_and_staged(
        sandbox: SandboxInfo, workspace: Path, local_dir: str, tmp_path: Path) -> None:
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
             "model.safetensors": WEIGHTS}
    env = serve_env(HF_HOME=str(workspace / "hf"), SLURM_SGLANG_HUB_PYTHON=str(HUB_PYTHON))
    args = ["--stage-model", local_dir, "--model-path", "tiny/model", "--tp", "2"]
    with HubStandin("tiny/model", files) as hub:
        env["HF_ENDPOINT"] = hub.url
        with salloc_serve(sandbox, _script(sandbox, workspace), 2, args, tmp_path,
                          env=env) as run:
            served = run.get_json("/get_server_info")["model_path"]
            events = run.events()
    assert served.startswith(f"{local_dir}/root/model-")
    downloads = {path: count for path, count in hub.requests.items()
                 if path.startswith("GET /tiny/model/resolve/")}
    assert sorted(downloads.values()) == [1, 1], hub.requests
    assert len(_kinds(events, "staged")) == 2


@pytest.mark.skipif(not HUB_PYTHON.exists(), reason="no python with huggingface_hub: run "
                    "tests/sglang_bench/install.sh")
def test_an_unreachable_hub_says_where_to_download(sandbox: SandboxInfo,
                                                   workspace: Path) -> None:
    env = serve_env(HF_HOME=str(workspace / "hf"), SLURM_SGLANG_HUB_PYTHON=str(HUB_PYTHON),
                    HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run(
        ["salloc", "-N", "2", "-p", "sandbox", "bash", str(_script(sandbox, workspace)),
         "--quiet", "--model-path", "tiny/absent", "--tp", "2"],
        cwd=sandbox.shared_dir, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 1, done.stderr
    line = next(line for line in done.stderr.splitlines() if "could not be downloaded" in line)
    assert "http://127.0.0.1:9" in line
    assert f"HF_HOME={workspace / 'hf'} hf download tiny/absent" in line


def test_a_hub_id_without_huggingface_hub_here_is_left_to_the_ranks(
        sandbox: SandboxInfo, workspace: Path, tmp_path: Path) -> None:
    # The seed's own example: no staging, no huggingface_hub where the script starts (Debian's
    # /usr/bin/python3 here has none), no cached copy: the job serves as before, and says so.
    env = serve_env(HF_HOME=str(workspace / "hf"), SLURM_SGLANG_HUB_PYTHON="/usr/bin/python3")
    args = ["--model-path", "Qwen/Qwen2.5-72B-Instruct", "--tp", "2"]
    with salloc_serve(sandbox, _script(sandbox, workspace), 2, args, tmp_path, env=env) as run:
        assert run.get_json("/get_server_info")["model_path"] == "Qwen/Qwen2.5-72B-Instruct"
        text = run.output.read_text()
    assert "huggingface_hub is not importable" in text
    assert "each rank fetches Qwen/Qwen2.5-72B-Instruct itself" in text
