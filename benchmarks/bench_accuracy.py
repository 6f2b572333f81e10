"""Does `bench` measure what the server does? sglang 0.5.23's real client, run by
`python -m slurm_sglang bench`, against the stand-in told a first-token delay and a time per
token, pace after pace, alternating, round after round.

The stand-in waits FIRST_TOKEN_SECONDS, then TOKEN_SECONDS before each token (the first too),
so a request's TTFT is told to be first + token, its decode speed 1/token tokens/s, and at
concurrency 1 the run's output throughput OUTPUT / (first + OUTPUT * token) tokens/s. The
table gives the median over the rounds of sglang's median TTFT, its TPOT as tokens/s and its
output throughput, each beside what was told and the error; every error within 10% passes.

Needs tests/sglang_bench/install.sh's venv; no sandbox (one stand-in on 127.0.0.1).
Run: python benchmarks/bench_accuracy.py [--rounds 3] [--prompts 8] [--output-len 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import REPO, describe, machine, median, table

sys.path.insert(0, str(REPO / "tests" / "integration"))
from bench_client import BENCH_PYTHON, MISSING, local_standin, model_dir

# (seconds before the first token, seconds per token). On this 2-core test machine the client
# and the stand-in (both Python) add about 7 ms to each TTFT and 0.4 ms to each token: at
# 50 + 5 ms that is 13% of the TTFT, so the paces start where it is under 10%.
PACES = ((0.1, 0.01), (0.2, 0.02), (0.4, 0.04))
TOLERANCE = 0.10


def _one_run(url: str, model: Path, out: Path, prompts: int, output_len: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "bench", url, "--type", "concurrency",
         "--concurrency", "1", "--num-prompts", str(prompts), "--input-len", "32",
         "--output-len", str(output_len), "--tokenizer", str(model), "--python",
         str(BENCH_PYTHON), "--output-dir", str(out), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"bench failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)["runs"][0]["result"]
    return result


def main() -> int:
    """Run the paces alternating, print the table; exit 1 when a measure is off by over 10%."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not BENCH_PYTHON.is_file():
        raise SystemExit(f"benchmark: {MISSING}")
    measured: dict[tuple[float, float], list[dict[str, Any]]] = {pace: [] for pace in PACES}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as scratch:
        root = Path(scratch)
        model = model_dir(root)
        for number in range(args.rounds):
            for first, token in PACES:  # alternating: each round visits every pace once
                knobs = {"SGLANG_STANDIN_FIRST_TOKEN_SECONDS": str(first),
                         "SGLANG_STANDIN_TOKEN_SECONDS": str(token)}
                log = root / f"standin-{number}-{first}-{token}.log"
                with local_standin(model, log, **knobs) as url:
                    measured[(first, token)].append(
                        _one_run(url, model, root / "out", args.prompts, args.output_len))
    rows, worst = [], 0.0
    for (first, token), results in measured.items():
        told_ttft = (first + token) * 1000
        told_decode = 1 / token
        told_out = args.output_len / (first + args.output_len * token)
        ttft = median([r["median_ttft_ms"] for r in results])
        decode = median([1000 / r["median_tpot_ms"] for r in results])
        out = median([r["output_throughput"] for r in results])
        errors = [(ttft - told_ttft) / told_ttft, (decode - told_decode) / told_decode,
                  (out - told_out) / told_out]
        worst = max(worst, *(abs(error) for error in errors))
        rows.append([f"{first * 1000:g} + {token * 1000:g} ms", f"{told_ttft:.1f}",
                     f"{ttft:.1f}", f"{errors[0]:+.1%}", f"{told_decode:.1f}", f"{decode:.1f}",
                     f"{errors[1]:+.1%}", f"{told_out:.1f}", f"{out:.1f}", f"{errors[2]:+.1%}"])
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, "rounds": args.rounds, "prompts": args.prompts,
                          "output_len": args.output_len, "worst_error": worst,
                          "rows": rows}, indent=2))
    else:
        print(table(["told (first + token)", "TTFT told ms", "measured", "error",
                     "decode told tok/s", "measured", "error", "output told tok/s",
                     "measured", "error"], rows))
        print(f"\nmedians of {args.rounds} rounds x {args.prompts} requests (concurrency 1, "
              f"{args.output_len} tokens out); worst error {worst:.1%} (limit "
              f"{TOLERANCE:.0%})\n{describe(info)}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
