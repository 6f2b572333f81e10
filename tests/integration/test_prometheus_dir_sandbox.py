"""The Prometheus target file where the profile says (issue 20, item 3), on the sandbox.

A two-node job behind an API key, rendered from a profile with paths.prometheus_targets_dir:
while it serves, the directory holds its target file, mode 0644, the same as the log
directory's copy and without the key; once the job is cancelled the file is gone.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

import pytest
import yaml
from serving import sbatch_serve, serve_env, tiny_model

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
API_KEY = "prometheus-dir-test-key"


def test_the_job_publishes_its_targets_where_the_profile_says_and_removes_them(
        sandbox: SandboxInfo, tmp_path: Path) -> None:
    targets = sandbox.shared_dir / f"prometheus-targets-{os.getpid()}"
    targets.mkdir(mode=0o1777)
    targets.chmod(0o1777)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    profile.setdefault("paths", {})["prometheus_targets_dir"] = str(targets)
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    profile_path = scripts / "prometheus-dir-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    script = scripts / "run-prometheus-dir.sbatch"
    write_script(render_script(load_profile(str(profile_path))), script)
    model = tiny_model(sandbox.shared_dir / "models" / "prometheus-dir")
    args = ["--model-path", str(model), "--tp", "2"]
    with sbatch_serve(sandbox, script, 2, args,
                      env=serve_env(SLURM_SGLANG_API_KEY=API_KEY)) as run:
        # The job runs as whoever submitted it; the file names that user (id -un).
        site = targets / f"slurm-sglang-{pwd.getpwuid(os.getuid()).pw_name}-{run.job_id}.json"
        assert sorted(path.name for path in targets.iterdir()) == [site.name]
        assert stat.S_IMODE(site.stat().st_mode) == 0o644
        text = site.read_text()
        assert text == (run.log_dir / "prometheus-targets.json").read_text()
        assert API_KEY not in text
        endpoint = json.loads((run.log_dir / "endpoint.json").read_text())
        assert [group["targets"][0] for group in json.loads(text)] == [
            item["url"][len("http://"):-len("/metrics")] for item in endpoint["metrics"]]
    # sbatch_serve cancelled the job and waited until squeue no longer lists it.
    assert list(targets.iterdir()) == []
    targets.rmdir()
