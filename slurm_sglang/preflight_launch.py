"""`slurm-sglang preflight --nccl`: the rendered script's own NCCL check, run alone.

Inside an allocation, the profile's run.sbatch is rendered and started with
--preflight-nccl-only, so the check takes exactly the path a serving job takes
(docs/preflight.md).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from slurm_sglang.profile import ClusterProfile
from slurm_sglang.render import BUILTIN_TEMPLATES, TemplateSettings, render_script, write_script

ONLY_FLAG = "--preflight-nccl-only"


def preflight_command(script: Path, script_args: Sequence[str]) -> list[str]:
    """The command that runs the rendered script's NCCL check and stops after it."""
    return ["bash", str(script), ONLY_FLAG, *script_args]


def run_nccl_preflight(profile: ClusterProfile, script_args: Sequence[str] = (),
                       templates: TemplateSettings = BUILTIN_TEMPLATES) -> int:
    """Render the profile's script, run its NCCL check over the allocation; its exit code."""
    text = render_script(profile, None, templates)
    with tempfile.TemporaryDirectory(prefix="slurm-sglang-preflight.") as directory:
        script = Path(directory) / "run.sbatch"
        write_script(text, script)
        return subprocess.run(preflight_command(script, script_args), check=False).returncode
