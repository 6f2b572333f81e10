"""The job's Prometheus target file in the profile's paths.prometheus_targets_dir (issue 20, 3).

launch_plan.py's `publish` (the script's call when its servers are ready or change) writes it
for the site's Prometheus (mode 0644, no secret, replaced atomically) beside the log directory's
copy, which stays the user's only. The script's own functions, run in bash, remove it when the
job ends and before a requeued job starts again.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from slurm_sglang import launch_plan
from slurm_sglang.profile import ClusterProfile, ProfileError, load_profile, merge_profile_data
from slurm_sglang.render import flag_defaults, render_script

PRELUDE = 'source <(sed \'$d\' "$1")\nset +e\nshift\n'
SECRET = "sk-not-for-prometheus"
# A ready single-server job, as the script's publish_endpoint describes it.
READY = ["--url", "http://10.0.0.5:30000", "--job-id", "4711", "--model", "/models/tiny",
         "--profile", "default", "--nodes", "n0", "--ips", "10.0.0.5", "--port", "30000",
         "--dist-port", "20000", "--replicas", "0"]


def _publish(log_dir: Path, site_file: str) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    code, _ = launch_plan.answer(["publish", "--log-dir", str(log_dir), "--site-file", site_file,
                                  *READY])
    return code


def _script(folder: Path, targets_dir: str) -> Path:
    data = merge_profile_data(load_profile("default").model_dump(), {
        "fabric": {"kind": "tcp"}, "paths": {"prometheus_targets_dir": targets_dir}})
    path = folder / "run.sbatch"
    path.write_text(render_script(ClusterProfile.model_validate(data)))
    return path


def _bash(script: Path, body: str, workspace: Path, site: Path
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "WS": str(workspace), "SITE_TARGETS_FILE": str(site)})


def _site_file(targets: Path) -> Path:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    return targets / f"slurm-sglang-{user.strip()}-4711.json"


def test_the_script_learns_its_site_file_from_the_plan(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    environ = {**flag_defaults(load_profile("default")), "PWD": str(tmp_path),
               "PROMETHEUS_TARGETS_DIR": f"{targets}/", "SLURM_JOB_ID": "4711"}
    out = launch_plan.script_assignments([], ["--model-path", "m"], environ)
    assert f"SITE_TARGETS_FILE={_site_file(targets)}\n" in out
    out = launch_plan.script_assignments([], ["--model-path", "m"],
                                         {**environ, "PROMETHEUS_TARGETS_DIR": ""})
    assert "SITE_TARGETS_FILE=''\n" in out


def test_the_site_file_is_world_readable_holds_no_secret_and_goes_at_cleanup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_SGLANG_API_KEY", SECRET)
    targets = tmp_path / "targets"
    targets.mkdir()
    workspace = tmp_path / "ws"
    log_dir = workspace / "logs" / "4711"
    site = _site_file(targets)
    assert _publish(log_dir, str(site)) == 0
    log_copy = log_dir / "prometheus-targets.json"
    assert site.read_text() == log_copy.read_text()
    assert SECRET not in site.read_text()
    assert json.loads(site.read_text()) == [{"targets": ["10.0.0.5:30000"], "labels": {
        "slurm_job_id": "4711", "server": "server", "role": "server",
        "model": "/models/tiny"}}]
    assert stat.S_IMODE(site.stat().st_mode) == 0o644
    assert stat.S_IMODE(log_copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((log_dir / "endpoint.json").stat().st_mode) == 0o600
    # Nothing else: each temporary file became its target by a rename.
    assert [path.name for path in targets.iterdir()] == [site.name]
    assert sorted(path.name for path in log_dir.iterdir()) == ["endpoint.json",
                                                              "prometheus-targets.json"]
    # Removed at the end: a later job may take these addresses.
    done = _bash(_script(tmp_path, str(targets)), 'LOG_DIR=$WS/logs/4711 RUN_DIR=""\n'
                 'on_each_node() { :; }\ncleanup\n', workspace, site)
    assert done.returncode == 0, done.stderr
    assert not site.exists()
    assert log_copy.exists()


def test_a_requeued_job_removes_its_earlier_site_file(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    site = _site_file(targets)
    site.write_text("[]\n")
    done = _bash(_script(tmp_path, str(targets)),
                 "WORKSPACE=$WS SLURM_JOB_ID=4711 TORCH_PROFILE_DIR=; prepare_log_dir\n",
                 workspace, site)
    assert done.returncode == 0, done.stderr
    assert not site.exists()


def test_a_directory_that_cannot_take_it_warns_once_and_the_job_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launch_plan, "_SITE_WARNED", [])
    log_dir = tmp_path / "ws" / "logs" / "4711"
    missing = tmp_path / "no-such-dir" / "slurm-sglang-me-4711.json"
    assert _publish(log_dir, str(missing)) == 0
    assert _publish(log_dir, str(missing)) == 0
    assert capsys.readouterr().err.count("prometheus_targets_dir") == 1
    assert (log_dir / "prometheus-targets.json").exists()
    assert (log_dir / "endpoint.json").exists()


def test_without_the_key_nothing_is_written_outside_the_log_directory(tmp_path: Path) -> None:
    script = _script(tmp_path, "")
    assert "declare -rx PROMETHEUS_TARGETS_DIR=''" in script.read_text()
    assert launch_plan.site_targets_file("", "4711") == ""


@pytest.mark.parametrize("value", ["targets", "srv/prometheus", "/srv/a\n/srv/b"])
def test_a_relative_or_multi_line_directory_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"paths": {"prometheus_targets_dir": value}}))
    with pytest.raises(ProfileError, match="prometheus_targets_dir"):
        load_profile(str(path))


def test_the_script_publishes_through_its_plan_server_by_node_position(tmp_path: Path) -> None:
    # The script's own publish_endpoint, through the coprocess: node b reported no address, so
    # replica 2 must still get node c's, and the server must answer a second time.
    script = _script(tmp_path, "")
    body = (f"SUPPORT_DIR={Path(launch_plan.__file__).parent} LOG_DIR=$WS SITE_TARGETS_FILE=\n"
            "SLURM_JOB_ID=9 MODEL_PATH=/m PORT=30000 DIST_PORT=20000 REPLICA_MODE=1 REPLICAS=3\n"
            "REPLICA_NODES='0;1;2' REPLICA_GPU_INDEXES='0;0;0' REPLICA_BASE_PORT=30001\n"
            "ROUTER_METRICS_PORT=29001 NODES=(a b c) NODE_IPS=([0]=10.0.0.1 [2]=10.0.0.3)\n"
            "REPLICA_STATE=(up) REPLICA_GPU_SET=()\n"
            "publish_endpoint http://10.0.0.1:30000 && publish_endpoint http://10.0.0.1:30000 "
            "&& echo published\n")
    done = subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "WS": str(tmp_path)})
    assert done.stdout == "published\n", done.stderr
    endpoint = json.loads((tmp_path / "endpoint.json").read_text())
    assert [replica["url"] for replica in endpoint["replicas"]] == [
        "http://10.0.0.1:30001", "http://:30002", "http://10.0.0.3:30003"]
    assert [replica["state"] for replica in endpoint["replicas"]] == ["up", "starting",
                                                                      "starting"]


def test_a_publish_that_fails_leaves_the_server_serving(tmp_path: Path) -> None:
    code, _ = launch_plan.answer(["publish", "--log-dir", str(tmp_path), "--nodes", "a"])
    assert code == 1
    assert _publish(tmp_path / "logs", "") == 0
