"""What the nodes run for one rendering, in lines: the script's sections and its support files.

Issue 24 asks for at most 1,000 lines of default rendering and at most 2,000 for everything the
nodes run for it (the script and every program it ships or runs). This prints, for a profile
(the built-in default unless --cluster names one), each `# ---- ` section of the rendering with
its lines, then each program in the support directory (`render.SUPPORT_FILES`; the JSON tables
of sglang's flags are data and listed apart), and the totals against those limits.
Two totals: what a default run starts (the script and `launch_plan.py`), and every program
shipped (`preflight_nccl.py` runs with the NCCL check on, `stage_model.py` with staging or a
hub id).

Run: python benchmarks/script_size.py [--cluster PROFILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from bench_common import REPO  # noqa: F401 - puts the repository on sys.path

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, support_files

SCRIPT_LIMIT = 1000
TOTAL_LIMIT = 2000
ALWAYS_RUN = ("launch_plan.py",)


def sections(text: str) -> list[tuple[str, int]]:
    """The rendering's `# ---- NAME ----` sections with their lines (the lines above the first
    one count as 'header')."""
    found: list[tuple[str, int]] = [("header", 0)]
    for line in text.splitlines():
        if line.startswith("# ---- "):
            found.append((line[7:].rstrip(" -").split(":")[0], 0))
        name, count = found[-1]
        found[-1] = (name, count + 1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", help="a profile YAML (default: the built-in default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    profile = load_profile(args.cluster or "default")
    text = render_script(profile)
    parts = sections(text)
    programs = [(path, len(body.splitlines())) for path, body in support_files()
                if path.endswith(".py")]
    data = [(path, len(body.splitlines())) for path, body in support_files()
            if not path.endswith(".py")]
    script_lines = len(text.splitlines())
    total = script_lines + sum(lines for path, lines in programs if path in ALWAYS_RUN)
    shipped = script_lines + sum(lines for _, lines in programs)
    if args.json:
        print(json.dumps({"sections": parts, "programs": programs, "data": data,
                          "script": script_lines, "default_run": total,
                          "everything_shipped": shipped}, indent=2))
        return 0
    print(f"rendering of profile {profile.name}: {script_lines} lines (limit {SCRIPT_LIMIT})")
    for name, lines in sorted(parts, key=lambda part: -part[1]):
        print(f"  {lines:5d}  {name}")
    print("support programs (lines; * started by every run):")
    for path, lines in programs:
        print(f"  {lines:5d}  {path}{' *' if path in ALWAYS_RUN else ''}")
    for path, lines in data:
        print(f"  {lines:5d}  {path} (data)")
    print(f"what a default run starts: {total} lines; every program shipped: {shipped} "
          f"(limit {TOTAL_LIMIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
