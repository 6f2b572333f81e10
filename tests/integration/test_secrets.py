"""A planted HF_TOKEN and API key reach the servers but no command line, log or script.

While the job serves, `ps -eo args` on this machine (the sandbox nodes share its process
table) is searched; after it ends, every file of the job's log directory, the run's output
and the rendered script are.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving import job_containers, salloc_serve, serve_env

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import node_exec

pytestmark = pytest.mark.cluster
API_KEY = "sk-planted-4f1d9c2e7a"
HF_TOKEN = "hf_planted_93be01c7d5"


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo) -> Path:
    """run.sbatch rendered with the sandbox's own profile."""
    path = sandbox.shared_dir / "scripts" / "secrets.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), path)
    return path


def _status(url: str, key: str | None) -> int:
    request = urllib.request.Request(f"{url}/v1/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _found_in(path: Path) -> list[str]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [str(p) for p in files
            if API_KEY.encode() in p.read_bytes() or HF_TOKEN.encode() in p.read_bytes()]


@pytest.mark.parametrize("route", ["key-file", "environment"])
def test_secrets_stay_out_of_argv_logs_and_scripts(sandbox: SandboxInfo, script: Path,
                                                   tmp_path: Path, route: str) -> None:
    model = sandbox.shared_dir / "models" / "secrets model"
    model.mkdir(parents=True, exist_ok=True)
    args = ["--model-path", str(model), "--tp", "2"]
    env = serve_env(HF_TOKEN=HF_TOKEN)
    if route == "key-file":
        key_file = tmp_path / "api-key"
        key_file.write_text(API_KEY + "\n")
        key_file.chmod(0o600)
        args = ["--api-key-file", str(key_file), *args]
    else:
        env["SLURM_SGLANG_API_KEY"] = API_KEY
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=env) as run:
        assert _status(run.url, None) == 401
        assert _status(run.url, API_KEY) == 200
        command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                       check=True).stdout
        containers = job_containers(sandbox, run.job_id)
        worker = next(node for node, names in containers.items() if names
                      and names[0].endswith("-r1"))
        token_inside = node_exec(worker, ["podman", "exec", containers[worker][0], "printenv",
                                          "HF_TOKEN"]).stdout.strip()
        job_id, log_dir, output = run.job_id, run.log_dir, run.output
    assert API_KEY not in command_lines and HF_TOKEN not in command_lines
    assert f"slurm-sglang-{job_id}-r0" in command_lines  # the search covered the job's processes
    assert token_inside == HF_TOKEN
    assert sorted(p.name for p in log_dir.iterdir()) >= ["endpoint.json", "events.log"]
    assert _found_in(log_dir) == []
    assert _found_in(output) == []
    assert _found_in(script) == []
