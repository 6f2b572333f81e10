"""What the ranks of a real job got is what `check --json` planned: nodes, GPU sets, ports, argv.

A few layouts launch for real on the sandbox under salloc. The job's events say which node
has which GPUs (`node ... gpus=`), which GPUs each replica's rank was given
(`replica-rank-started ... gpus=`) and on which ports the servers and the router answer; every
server's /get_server_info lists each of its ranks with the argv the stand-in was started with
and the GPUs it saw. All of it is compared with `check --nodes N --gpus-per-node G --json`
for the same profile and arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from serving import Serving, job_containers, salloc_serve, serve_env, tiny_model

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.router import ensure_router_venv
from slurm_sglang.serve_check import rank_argv
from slurm_sglang.sglang_flags import server_argv

pytestmark = pytest.mark.cluster
# An explicit HTTP port keeps the job from moving it when others share the nodes (a default
# one moves by the job id); the plan is compared relative to it. Spread by process so two
# runs of this file at once do not ask for the same one.
BASE_PORT = 33000 + (os.getpid() % 50) * 40

LAYOUTS = {
    # name: (nodes, GPUs a node, sglang arguments)
    "tp2-over-2-nodes": (2, 2, "--tp 2"),
    "tp2-dp2-replicas-on-2-nodes": (2, 2, "--tp 2 --dp 2"),
    "tp2-dp4-two-replicas-a-node": (2, 4, "--tp 2 --dp 4"),
    "tp4-dp2-in-one-server-on-1-node": (1, 8, "--tp 4 --dp 2"),
}


@pytest.fixture(scope="module")
def profile_path(sandbox: SandboxInfo) -> Path:
    """The sandbox profile with the router from a venv on the shared dir (as test_replicas)."""
    venv = ensure_router_venv(sandbox.shared_dir)
    profile = yaml.safe_load(sandbox.profile_path.read_text())
    profile["router"] = {"source": "venv", "venv": str(venv), "policy": "round_robin"}
    scripts = sandbox.shared_dir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    path = scripts / "plan-launch-profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def script(sandbox: SandboxInfo, profile_path: Path) -> Path:
    path = sandbox.shared_dir / "scripts" / "plan-launch.sbatch"
    write_script(render_script(load_profile(str(profile_path))), path)
    return path


@pytest.fixture(scope="module")
def model_dir(sandbox: SandboxInfo) -> Path:
    path: Path = tiny_model(sandbox.shared_dir / "models" / "plan-launch")
    return path


def _check_json(profile_path: Path, nodes: int, gpus: int, args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "check", "--cluster", str(profile_path),
         "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--json", "--no-sglang-parser",
         "--", *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] and report["plan"], report
    return report


def _fields(line: str) -> dict[str, str]:
    """An event line's key=value fields (values hold no spaces in the events read here)."""
    return dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)


def _events(run: Serving, kind: str) -> list[dict[str, str]]:
    return [_fields(line) for line in run.events() if line.split()[1:2] == [kind]]


def _wait_events(run: Serving, kind: str, count: int, timeout: float = 60) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _events(run, kind)
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{count} {kind} events expected within {timeout} s:\n"
                         + "\n".join(run.events()))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _server_info(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/get_server_info", timeout=10) as response:
        info: dict[str, Any] = json.load(response)
    return info


def _check_argv(info: dict[str, Any], expected_server_argv: tuple[str, ...], span: int,
                head_ip: str, port: int) -> None:
    """Every rank of one server ran the plan's argv: the server's arguments and the launcher's
    per-rank flags, one dist-init address on the server's head."""
    ranks = sorted(info["ranks"], key=lambda rank: rank["node_rank"])
    assert [rank["node_rank"] for rank in ranks] == list(range(span))
    dist = {rank["argv"][rank["argv"].index("--dist-init-addr") + 1] for rank in ranks}
    assert len(dist) == 1, dist
    dist_ip, dist_port = dist.pop().rsplit(":", 1)
    assert dist_ip == head_ip
    for rank in ranks:
        assert tuple(rank["argv"]) == rank_argv(expected_server_argv, span, rank["node_rank"],
                                                head_ip, int(dist_port), port)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_get_what_check_planned(sandbox: SandboxInfo, profile_path: Path, script: Path,
                                      model_dir: Path, tmp_path: Path, layout: str) -> None:
    nodes, gpus, sizes = LAYOUTS[layout]
    if len(sandbox.nodes) < nodes:
        pytest.skip(f"sandbox has {len(sandbox.nodes)} nodes; run sandbox up --nodes {nodes}")
    args = ["--model-path", str(model_dir), "--served-model-name", "tiny", *sizes.split()]
    report = _check_json(profile_path, nodes, gpus, args)
    planned = report["plan"]
    replicas = planned["replicas"]
    # The plan's ports are relative to the HTTP port asked for (check's default, 30000).
    asked = planned["router_port"] if planned["router"] else replicas[0]["port"]
    port = BASE_PORT + list(LAYOUTS).index(layout) * 10
    expected_argv = server_argv(report["sglang_args"], planned["router"])
    with salloc_serve(sandbox, script, nodes, ["--port", str(port), *args], tmp_path,
                      salloc_args=[f"--gpus-per-node={gpus}"], env=serve_env(),
                      grant_timeout=600) as run:
        # Which node index is which host, with which address and GPUs (in SLURM's order).
        node_events = _wait_events(run, "node", nodes)
        hosts = {int(event["rank"]): event["node"] for event in node_events}
        addresses = {int(event["rank"]): event["ip"] for event in node_events}
        node_gpus = {int(event["rank"]): event["gpus"].split(",") for event in node_events}
        assert sorted(hosts) == list(range(nodes))
        assert _events(run, "ports")[0]["http"] == str(port)
        if planned["router"]:
            # The router holds the port asked for; the servers' ports follow the plan's.
            assert _port(run.url) == port
            up = {int(event["replica"]): event
                  for event in _wait_events(run, "replica-up", len(replicas))}
            started = _events(run, "replica-rank-started")
            if planned.get("router_metrics_port"):
                metrics = _events(run, "replica-plan")[0].get("metrics_port")
                assert metrics == str(planned["router_metrics_port"] - asked + port)
            for replica in replicas:
                number, span = replica["replica"], len(replica["nodes"])
                url = up[number]["url"]
                assert _port(url) == replica["port"] - asked + port
                assert url.split("//")[1].split(":")[0] == addresses[replica["nodes"][0]]
                ranks = {int(event["replica_rank"]): event for event in started
                         if int(event["replica"]) == number and event["start"] == "0"}
                assert sorted(ranks) == list(range(span))
                for replica_rank, node in enumerate(replica["nodes"]):
                    event = ranks[replica_rank]
                    assert event["node"] == hosts[node]
                    # The plan's GPUs are positions in the node's own list of GPUs.
                    wanted = [node_gpus[node][index] for index in replica["gpus"]]
                    assert event["gpus"].split(",") == wanted
                info = _server_info(url)
                for rank in info["ranks"]:
                    assert rank["gpus"]["cuda_visible_devices"] == up[number]["gpus"]
                _check_argv(info, expected_argv, span, addresses[replica["nodes"][0]],
                            _port(url))
        else:
            (replica,) = replicas
            assert _port(run.url) == replica["port"] - asked + port
            assert run.url.split("//")[1].split(":")[0] == addresses[replica["nodes"][0]]
            info = _server_info(run.url)
            assert sorted(rank["hostname"] for rank in info["ranks"]) == sorted(
                hosts[node] for node in replica["nodes"])
            for rank in info["ranks"]:
                node = next(index for index, host in hosts.items() if host == rank["hostname"])
                visible = rank["gpus"]["cuda_visible_devices"].split(",")
                wanted = [node_gpus[node][index] for index in replica["gpus"]]
                # One server's rank is handed every GPU of its node and takes the first
                # tp*pp/nnodes of them (base GPU 0): the plan's set leads what it sees.
                assert visible[:len(wanted)] == wanted, (visible, wanted)
            _check_argv(info, expected_argv, len(replica["nodes"]),
                        addresses[replica["nodes"][0]], _port(run.url))
        job_id = run.job_id
    assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
