"""The job's Prometheus target file in the profile's paths.prometheus_targets_dir (issue 20, 3).

The rendered script's own functions run in bash against a temporary directory: the file is
written there for the site's Prometheus (mode 0644, no secret, replaced atomically) and removed
when the job ends; the log directory's copy stays the user's only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from slurm_sglang.profile import ClusterProfile, ProfileError, load_profile, merge_profile_data
from slurm_sglang.render import render_script

PRELUDE = 'source <(sed \'$d\' "$1")\nset +e\nshift\n'
SECRET = "sk-not-for-prometheus"
# A ready single-server job: what write_endpoint has when it writes the target file.
READY = (f'WORKSPACE=$WS SLURM_JOB_ID=4711 TORCH_PROFILE_DIR=; prepare_log_dir\n'
         f'SLURM_SGLANG_API_KEY={SECRET} MODEL_PATH=/models/tiny REPLICA_MODE=0 '
         'HEAD_IP=10.0.0.5 PORT=30000\n'
         'write_prometheus_targets\n')


def _script(folder: Path, targets_dir: str) -> Path:
    data = merge_profile_data(load_profile("default").model_dump(), {
        "fabric": {"kind": "tcp"}, "paths": {"prometheus_targets_dir": targets_dir}})
    path = folder / "run.sbatch"
    path.write_text(render_script(ClusterProfile.model_validate(data)))
    return path


def _bash(script: Path, body: str, workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "WS": str(workspace)})


def _site_file(targets: Path) -> Path:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    return targets / f"slurm-sglang-{user.strip()}-4711.json"


def test_the_site_file_is_world_readable_holds_no_secret_and_goes_at_cleanup(
        tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = _script(tmp_path, str(targets))
    # cleanup exits with the job's code; the nodes' containers are not this test's.
    done = _bash(script, READY + 'cp "$(site_targets_file)" "$WS/seen.json"\n'
                 'on_each_node() { :; }\ncleanup\n', workspace)
    assert done.returncode == 0, done.stderr
    seen = workspace / "seen.json"
    log_copy = workspace / "logs" / "4711" / "prometheus-targets.json"
    assert seen.read_text() == log_copy.read_text()
    assert SECRET not in seen.read_text()
    groups = json.loads(seen.read_text())
    assert groups == [{"targets": ["10.0.0.5:30000"], "labels": {
        "slurm_job_id": "4711", "server": "server", "role": "server",
        "model": "/models/tiny"}}]
    # Removed at the end: a later job may take these addresses.
    assert not _site_file(targets).exists()
    assert list(targets.iterdir()) == []
    assert stat.S_IMODE(log_copy.stat().st_mode) == 0o600


def test_the_site_file_is_mode_0644_while_the_job_runs(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    done = _bash(_script(tmp_path, f"{targets}/"), READY, workspace)
    assert done.returncode == 0, done.stderr
    site = _site_file(targets)
    assert stat.S_IMODE(site.stat().st_mode) == 0o644
    # Nothing else: the temporary file became the target by a rename.
    assert [path.name for path in targets.iterdir()] == [site.name]


def test_a_requeued_job_removes_its_earlier_site_file(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    site = _site_file(targets)
    site.write_text("[]\n")
    done = _bash(_script(tmp_path, str(targets)),
                 "WORKSPACE=$WS SLURM_JOB_ID=4711 TORCH_PROFILE_DIR=; prepare_log_dir\n",
                 workspace)
    assert done.returncode == 0, done.stderr
    assert not site.exists()


def test_a_directory_that_cannot_take_it_warns_once_and_the_job_goes_on(
        tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    missing = tmp_path / "no-such-dir"
    done = _bash(_script(tmp_path, str(missing)),
                 READY + "write_prometheus_targets\necho still-serving\n", workspace)
    assert done.returncode == 0, done.stderr
    assert "still-serving" in done.stdout
    assert done.stderr.count("prometheus_targets_dir") == 1
    assert (workspace / "logs" / "4711" / "prometheus-targets.json").exists()


def test_without_the_key_nothing_is_written_outside_the_log_directory(tmp_path: Path) -> None:
    script = _script(tmp_path, "")
    assert "declare -rx PROMETHEUS_TARGETS_DIR=''" in script.read_text()


@pytest.mark.parametrize("value", ["targets", "srv/prometheus", "/srv/a\n/srv/b"])
def test_a_relative_or_multi_line_directory_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"paths": {"prometheus_targets_dir": value}}))
    with pytest.raises(ProfileError, match="prometheus_targets_dir"):
        load_profile(str(path))
