"""bench on the sandbox: sglang 0.5.23's real client against the stand-in served by a job.

Needs tests/sglang_bench/install.sh's venv (skips without it). The client runs where the CLI
runs; exact counts come from the stand-in honouring ignore_eos with --range-ratio 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from serving import salloc_serve, serve_env

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script
from slurm_sglang.sandbox.image import build_standin_record
from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
BENCH_PYTHON = Path.home() / ".cache" / "slurm-sglang" / "sglang-0.5.23-bench" / "bin" / "python"
TOKENIZER_SCRIPT = Path(__file__).resolve().parents[1] / "sglang_bench" / "tokenizer.py"


def _model_dir(sandbox: SandboxInfo) -> Path:
    model = sandbox.shared_dir / "models" / "bench-tiny"
    if not (model / "tokenizer.json").is_file():
        subprocess.run([str(BENCH_PYTHON), str(TOKENIZER_SCRIPT), str(model)], check=True,
                       capture_output=True)
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return model


def _bench(url: str, out: Path, model: Path, *extra: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "bench", url, "--num-prompts", "12",
         "--input-len", "32", "--output-len", "16", "--range-ratio", "1",
         "--tokenizer", str(model), "--python", str(BENCH_PYTHON), "--output-dir", str(out),
         *extra], capture_output=True, text=True, timeout=240)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(not BENCH_PYTHON.is_file(), reason="run tests/sglang_bench/install.sh")
@pytest.mark.parametrize("fault", ["", "no-tokens"])
def test_bench_with_sglangs_client_and_its_gate(sandbox: SandboxInfo, tmp_path: Path,
                                                fault: str) -> None:
    script = sandbox.shared_dir / "scripts" / "bench-run-sandbox.sbatch"
    write_script(render_script(load_profile(str(sandbox.profile_path))), script)
    model = _model_dir(sandbox)
    # This checkout's stand-in (ignore_eos, the fault knob), never the shared latest image.
    image = build_standin_record().tarball
    args = ["--image", str(image), "--", "--model-path", str(model), "--tp", "2",
            "--served-model-name", "bench-tiny"]
    env = serve_env(SGLANG_STANDIN_TOKEN_SECONDS="0.002",
                    SGLANG_STANDIN_FIRST_TOKEN_SECONDS="0.02", SGLANG_STANDIN_FAULT=fault)
    types = ["--type", "throughput"] if fault else ["--type", "throughput,concurrency",
                                                     "--concurrency", "1,4"]
    with salloc_serve(sandbox, script, 2, args, tmp_path, env=env) as run:
        code, output = _bench(run.url, tmp_path / "bench", model, *types, "--json")
    report = json.loads(output[output.index("{"):])
    if fault:
        assert code == 1 and not report["ok"]
        assert report["runs"][0]["reasons"][0] == "0 output tokens"
        return
    assert code == 0, output
    assert [run["label"] for run in report["runs"]] == [
        "in 32 out 16 rate inf", "concurrency 1", "concurrency 4"]
    for run in report["runs"]:
        assert run["ok"] and run["failed"] == 0
        assert run["result"]["completed"] == 12
        assert run["output_tokens"] == 12 * 16
        assert run["result"]["total_output_tokens"] == 12 * 16
        assert run["argv"][1:3] == ["-m", "sglang.benchmark.serving"]
    saved = [Path(path) for path in report["files"]]
    assert all(path.is_file() for path in saved)
    assert len([path for path in saved if path.suffix == ".jsonl"]) == 3
