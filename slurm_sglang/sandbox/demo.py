"""The local demo: the sandbox's nodes serve the sglang stand-in with --tp 2 through run.sbatch.

`python -m slurm_sglang sandbox demo` runs `salloc -N 2 bash sbatch/run.sbatch ...` exactly as
a user would on a GPU cluster, waits for the ready line, sends one chat completion with the
OpenAI client, and releases the allocation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from slurm_sglang.sandbox.cluster import sandbox_status, sandbox_up
from slurm_sglang.sandbox.host import run
from slurm_sglang.sandbox.layout import SandboxInfo

REPO_SCRIPT = Path(__file__).resolve().parents[2] / "sbatch" / "run.sbatch"
# The ready line; without an API key it ends with "(no API key: ...)".
READY = re.compile(r"^ready: (http://\S+)(?: \([^)\n]*\))?$", re.M)
GRANTED = re.compile(r"Granted job allocation (\d+)")


def _demo_model(info: SandboxInfo) -> Path:
    model = info.shared_dir / "models" / "demo-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    return model


def _script(info: SandboxInfo) -> Path:
    if REPO_SCRIPT.is_file():
        return REPO_SCRIPT
    from slurm_sglang.profile import load_profile
    from slurm_sglang.render import render_script, write_script

    path = info.shared_dir / "run.sbatch"
    write_script(render_script(load_profile("default")), path)
    return path


def _chat(url: str, model: str) -> str:
    try:
        from openai import OpenAI
    except ImportError:
        return "(install the openai package to send a chat completion: pip install openai)"
    client = OpenAI(base_url=f"{url}/v1", api_key="none")
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16)
    return reply.choices[0].message.content or ""


def run_demo(nodes: int = 2, timeout: float = 180) -> int:
    """Bring the sandbox up if needed, serve across `nodes` nodes, chat once, release."""
    info = sandbox_status() or sandbox_up(nodes=max(nodes, 2))
    model = _demo_model(info)
    script = _script(info)
    command = ["salloc", "-N", str(nodes), "-p", "sandbox", f"--gpus-per-node={info.gpus_per_node}",
               "--exclusive", "bash", str(script), "--image", str(info.image_tarball),
               "--model-path", str(model), "--tp", str(nodes)]
    env = dict(os.environ, SLURM_SGLANG_CONTAINER_CLI="podman", SLURM_SGLANG_GPUS_MODE="env",
               SGLANG_STANDIN_LOAD_SECONDS=os.environ.get("SGLANG_STANDIN_LOAD_SECONDS", "2"))
    print("$ cd", info.shared_dir, file=sys.stderr)
    print("$", " ".join(command), file=sys.stderr, flush=True)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=info.shared_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert process.stdout is not None
    job_id = ""
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            granted = GRANTED.search(line)
            job_id = granted.group(1) if granted else job_id
            ready = READY.search(line)
            if ready:
                url = ready.group(1)
                print(f"\n# ready after {time.monotonic() - started:.1f} s; one chat completion:")
                print(f"# {_chat(url, str(model))}", flush=True)
                return 0
            if time.monotonic() - started > timeout:
                print(f"# no ready line within {timeout:.0f} s", file=sys.stderr)
                return 1
        print(f"# salloc ended with code {process.wait()} before the ready line", file=sys.stderr)
        return 1
    finally:
        if job_id:
            run(["scancel", job_id], check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        print(f"# released job {job_id or '?'}; its logs: {info.shared_dir}/logs/{job_id}",
              file=sys.stderr)
