"""The smoke checker against a real two-node job on the sandbox, behind an API key."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import salloc_serve, serve_env, tiny_model

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.smoke import run_smoke

pytestmark = pytest.mark.cluster
API_KEY = "smoke-test-key"


def test_smoke_passes_on_a_two_node_job_and_needs_its_api_key(sandbox: SandboxInfo,
                                                             tmp_path: Path) -> None:
    script = sandbox.shared_dir / "scripts" / "smoke-run-sandbox.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), script)
    model = tiny_model(sandbox.shared_dir / "models" / "smoke-tiny")
    args = ["--model-path", str(model), "--tp", "2", "--served-model-name", "smoke-tiny"]
    # The key reaches sglang from the environment, never on a command line ps would show.
    env = serve_env(SLURM_SGLANG_API_KEY=API_KEY)
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=env) as run:
        report = run_smoke(run.url, api_key=API_KEY)
        refused = run_smoke(run.url)
    assert report.ok, report.format_table()
    assert report.model == "smoke-tiny"
    assert len(report.checks) == 11
    assert report.format_table().splitlines()[-1] == (
        f"smoke: ok, 11/11 checks passed against {run.url} (model smoke-tiny)")
    assert not refused.ok
    assert refused.checks[1].name == "models" and refused.checks[1].detail.startswith("HTTP 401")
