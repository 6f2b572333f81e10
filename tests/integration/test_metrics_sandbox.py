"""Metrics on the sandbox: two replica jobs on one node, requests counted per replica by
`metrics --json`, the Prometheus target file, Debian's prometheus scraping it, `status --watch`.

Both jobs run --tp 4 --dp 2 on the same two nodes (four of each node's eight GPUs each: a
replica a node), so their servers' and routers' metrics ports must differ; the real
sglang-router 0.3.2 routes round robin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI
from serving import READY, Serving, tiny_model, wait_job_gone

from slurm_sglang.jobs import JobRecord
from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.image import build_standin_record
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.router import ensure_router_venv

pytestmark = pytest.mark.cluster
MODEL = "tiny"
REQUESTS = 6
READY_TIMEOUT = 120.0


def _wait(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def jobs(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Serving, Serving]]:
    """Two replica jobs on the same two nodes, both ready."""
    venv = ensure_router_venv(sandbox.shared_dir)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    profile["router"] = {"source": "venv", "venv": str(venv), "policy": "round_robin"}
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    # This checkout's stand-in (the one that serves /metrics), under a name of this test's own:
    # the sandbox's published image is everyone's and changes only with `sandbox up`.
    image = scripts / "metrics-standin.tar.gz"
    image.unlink(missing_ok=True)
    shutil.copyfile(build_standin_record().tarball, image)
    profile["container"]["image"] = str(image)
    # Where the site's Prometheus would read (docs/observability.md): the jobs publish there too.
    targets = _targets_dir(sandbox)
    shutil.rmtree(targets, ignore_errors=True)
    targets.mkdir(mode=0o1777)
    targets.chmod(0o1777)
    profile.setdefault("paths", {})["prometheus_targets_dir"] = str(targets)
    profile_path = scripts / "metrics-profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    script = scripts / "run-metrics.sbatch"
    write_script(render_script(load_profile(str(profile_path))), script)
    model = tiny_model(sandbox.shared_dir / "models" / "metrics")
    env = {**os.environ, "SLURM_SGLANG_CONTAINER_CLI": "podman",
           "SLURM_SGLANG_GPUS_MODE": "env", "SGLANG_STANDIN_LOAD_SECONDS": "0.5"}
    nodes = ",".join(sandbox.nodes[-2:])
    started: list[str] = []
    try:
        runs = []
        for _ in range(2):
            submitted = subprocess.run(
                ["sbatch", "--parsable", "-N", "2", "-p", "sandbox", "-w", nodes,
                 "--oversubscribe", "--gpus-per-node=4",
                 f"--output={sandbox.shared_dir}/slurm-%j.out", str(script),
                 "--model-path", str(model), "--served-model-name", MODEL, "--tp", "4",
                 "--dp", "2"],
                cwd=sandbox.shared_dir, capture_output=True, text=True, check=True, env=env)
            job_id = submitted.stdout.strip().split(";")[0]
            started.append(job_id)
            output = sandbox.shared_dir / f"slurm-{job_id}.out"
            found = _wait(lambda output=output: READY.search(
                output.read_text(errors="replace") if output.exists() else ""),
                f"job {job_id} ready", READY_TIMEOUT)
            runs.append(Serving(job_id, found.group(1), output,
                                sandbox.shared_dir / "logs" / job_id))
        yield runs[0], runs[1]
    finally:
        for job_id in started:
            subprocess.run(["scancel", job_id], check=False)
        for job_id in started:
            wait_job_gone(job_id)
        shutil.rmtree(_targets_dir(sandbox), ignore_errors=True)


def _targets_dir(sandbox: SandboxInfo) -> Path:
    """The jobs' paths.prometheus_targets_dir."""
    return sandbox.shared_dir / "prometheus-targets-metrics"

def _endpoint(run: Serving) -> dict[str, Any]:
    endpoint: dict[str, Any] = json.loads((run.log_dir / "endpoint.json").read_text())
    return endpoint


def _cli(state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_SGLANG_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "slurm_sglang", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def state(jobs: tuple[Serving, Serving], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory holding a record of the first job, as `submit` would write it."""
    from slurm_sglang.jobs import save_record

    folder = tmp_path_factory.mktemp("state")
    run = jobs[0]
    previous = os.environ.get("SLURM_SGLANG_STATE_DIR")
    os.environ["SLURM_SGLANG_STATE_DIR"] = str(folder)
    try:
        save_record(JobRecord(run.job_id, "sandbox", str(run.log_dir), "run-metrics.sbatch",
                              [], "2026-11-29T00:00:00Z", driver_log=str(run.output)))
    finally:
        if previous is None:
            del os.environ["SLURM_SGLANG_STATE_DIR"]
        else:
            os.environ["SLURM_SGLANG_STATE_DIR"] = previous
    return folder


def _ports(endpoint: dict[str, Any]) -> set[int]:
    return {int(item["url"].split(":")[2].split("/")[0]) for item in endpoint["metrics"]}


def test_two_replica_jobs_share_a_node_without_a_port_clash(
        jobs: tuple[Serving, Serving]) -> None:
    first, second = (_endpoint(run) for run in jobs)
    assert first["nodes"] == second["nodes"]
    for endpoint in (first, second):
        assert [item["name"] for item in endpoint["metrics"]] == ["replica-0", "replica-1",
                                                                  "router"]
        assert endpoint["metrics"][-1]["url"].endswith(f":{endpoint['router_metrics_port']}"
                                                       "/metrics")
    assert not _ports(first) & _ports(second)
    assert first["port"] != second["port"]


def test_target_file_lists_every_server_and_no_secret(jobs: tuple[Serving, Serving],
                                                       sandbox: SandboxInfo) -> None:
    for run in jobs:
        endpoint = _endpoint(run)
        groups = json.loads((run.log_dir / "prometheus-targets.json").read_text())
        listed = {group["labels"]["server"]: group["targets"] for group in groups}
        assert listed == {item["name"]: [item["url"][len("http://"):-len("/metrics")]]
                          for item in endpoint["metrics"]}
        assert all(group["labels"]["slurm_job_id"] == run.job_id for group in groups)
        site = next(_targets_dir(sandbox).glob(f"slurm-sglang-*-{run.job_id}.json"))
        assert site.read_text() == (run.log_dir / "prometheus-targets.json").read_text()


def test_metrics_json_counts_the_requests_of_each_replica(
        jobs: tuple[Serving, Serving], state: Path) -> None:
    run = jobs[0]
    endpoint = _endpoint(run)
    before = json.loads(_cli(state, "metrics", run.job_id, "--json").stdout)
    client = OpenAI(base_url=f"{run.url}/v1", api_key="none", max_retries=0)
    answered: Counter[str] = Counter()
    for _ in range(REQUESTS):
        raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hi", max_tokens=4)
        assert raw.parse().usage.completion_tokens == 4  # type: ignore[union-attr]
        answered[raw.headers["x-standin-server"].rsplit(":", 1)[1]] += 1
    result = _cli(state, "metrics", run.job_id, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    after = json.loads(result.stdout)
    servers = {t["name"]: t for t in after["targets"] if t["role"] == "server"}
    earlier = {t["name"]: t for t in before["targets"]}
    for item in endpoint["replicas"]:
        name, port = f"replica-{item['replica']}", item["url"].rsplit(":", 1)[1]
        # Exactly the requests this replica answered (the router's header says which).
        assert servers[name]["requests"] - earlier[name]["requests"] == answered[port]
        assert servers[name]["generation_tokens"] - earlier[name]["generation_tokens"] == (
            4 * answered[port])
        assert servers[name]["running"] == 0
    assert sum(answered.values()) == REQUESTS and len(answered) == 2
    router = next(t for t in after["targets"] if t["role"] == "router")
    old_router = next(t for t in before["targets"] if t["role"] == "router")
    assert router["ok"] and router["requests"] - old_router["requests"] == REQUESTS
    per_worker = {w["url"]: w["requests"] for w in router["workers"]}
    old_worker = {w["url"]: w["requests"] for w in old_router["workers"]}
    for item in endpoint["replicas"]:
        port = item["url"].rsplit(":", 1)[1]
        assert per_worker[item["url"]] - old_worker.get(item["url"], 0) == answered[port]
    table = _cli(state, "metrics", run.job_id)
    assert table.returncode == 0 and "replica-1" in table.stdout and "router:" in table.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus is not installed (tests/install.sh)")
def test_prometheus_scrapes_every_server_with_one_file_sd_line(
        jobs: tuple[Serving, Serving], sandbox: SandboxInfo, tmp_path: Path) -> None:
    run = jobs[0]
    # The one line docs/observability.md gives (the profile's directory, every job's file in
    # it), in a minimal configuration; both jobs are listed, this test looks at the first.
    targets = _targets_dir(sandbox) / "*.json"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: slurm-sglang\n"
        f"    file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n")
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=sink, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str) -> Any:
        try:
            with opener.open(f"{api}/{path}", timeout=5) as response:
                return json.load(response)["data"]
        except OSError:
            return None

    try:
        def all_up() -> list[dict[str, Any]] | None:
            data = get("targets")
            active = (data or {}).get("activeTargets", [])
            up = [t for t in active if t["health"] == "up"
                  and t["labels"]["slurm_job_id"] == run.job_id]
            return up if len(up) == len(_endpoint(run)["metrics"]) else None

        up = _wait(all_up, f"every target up (log: {log})", 60)
        assert {t["labels"]["server"] for t in up} == {"replica-0", "replica-1", "router"}
        series = _wait(lambda: get("query?query=sglang:num_requests_total") or None,
                       "sglang:num_requests_total scraped", 30)
        assert series["resultType"] == "vector"
        assert {s["metric"]["server"] for s in series["result"]
                if s["metric"]["slurm_job_id"] == run.job_id} <= {"replica-0", "replica-1"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_status_watch_prints_plain_lines_into_a_pipe(jobs: tuple[Serving, Serving],
                                                     state: Path) -> None:
    run = jobs[0]
    env = {**os.environ, "SLURM_SGLANG_STATE_DIR": str(state)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "slurm_sglang", "status", run.job_id, "--watch", "--interval",
         "0.5"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert watcher.stdout is not None
        lines = []
        for line in watcher.stdout:
            lines.append(line)
            if line.startswith("router:"):
                break
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    text = "".join(lines)
    assert "\x1b[" not in text
    assert re.search(rf"^job {run.job_id}: ready", text, re.M)
    assert "replica 1: up" in text and "replica-0" in text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_status_watch_redraws_in_place_in_a_terminal(jobs: tuple[Serving, Serving],
                                                     state: Path) -> None:
    run = jobs[0]
    session = f"slurm-sglang-watch-{os.getpid()}"
    command = (f"SLURM_SGLANG_STATE_DIR={state} {sys.executable} -m slurm_sglang status "
               f"{run.job_id} --watch --interval 0.5")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50",
                    command], check=True)

    def pane(*extra: str) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, *extra],
                              capture_output=True, text=True, check=True).stdout

    try:
        def two_frames() -> str | None:
            screen = pane()
            # Redrawn in place: the header stays on the first line, shown once, while the
            # clock in it moves; nothing scrolls into the history.
            first = screen.splitlines()[0] if screen.strip() else ""
            return screen if f"job {run.job_id}: ready" in first and screen.count(
                f"job {run.job_id}:") == 1 else None

        first = _wait(two_frames, "the first frame", 30).splitlines()[0]
        _wait(lambda: (two_frames() or first).splitlines()[0] != first, "a redraw", 30)
        history = pane("-S", "-1000")
        assert history.count(f"job {run.job_id}:") == 1
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
