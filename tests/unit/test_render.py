"""Rendering: every runtime x fabric partial, golden files, ShellCheck and bash -n."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from slurm_sglang.profile import ClusterProfile, builtin_profile_names, load_profile
from slurm_sglang.render import RenderError, TemplateSettings, render_script

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SLURM_SGLANG_UPDATE_GOLDEN") == "1"
UPDATE_HINT = "SLURM_SGLANG_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py"
RUNTIMES = ("docker", "podman", "enroot", "apptainer", "none")
FABRICS = ("auto", "tcp", "efa", "infiniband")


# An option each runtime's own command takes: docker/podman run, pyxis's srun, apptainer exec.
RUN_ARGS = {"docker": ["--label", "site=a b"], "podman": ["--label", "site=a b"],
            "enroot": ["--container-remap-root"], "apptainer": ["--contain"], "none": []}


def _profile(runtime: str, fabric: str) -> ClusterProfile:
    activate = ["source /shared/venv/bin/activate"] if runtime == "none" else []
    return ClusterProfile.model_validate({
        "name": f"{runtime}-{fabric}",
        "container": {"runtime": runtime, "mounts": ["/data:/data:ro"],
                      "run_args": RUN_ARGS[runtime], "activate": activate},
        "fabric": {"kind": fabric, "env": {"NCCL_DEBUG": "WARN", "ODD": "a 'b' $c"}},
        "slurm": {"partition": "gpu", "account": "ml-team", "time": "04:00:00",
                  "extra_directives": ["--mem=0"]},
    })


def _write(script: str, tmp_path: Path) -> Path:
    path = tmp_path / "run.sbatch"
    path.write_text(script)
    return path


def _scenario_diff(name: str, script: str) -> str:
    """The scenario's rendering as a unified diff against the default one (sbatch/run.sbatch)."""
    default = render_script(load_profile("default"))
    return "".join(difflib.unified_diff(default.splitlines(True), script.splitlines(True),
                                        "run.sbatch", name, n=1))


def _compare_golden(name: str, script: str) -> None:
    """A scenario's golden file holds only what it changes in the default script: small
    enough to review, and every partial's rendering is in one of them."""
    path = GOLDEN / f"{name}.diff"
    diff = _scenario_diff(name, script)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(diff)
        return
    assert path.exists(), f"no golden file {path.name}; create it with: {UPDATE_HINT}"
    expected = path.read_text()
    if expected != diff:
        meta = "".join(difflib.unified_diff(expected.splitlines(True), diff.splitlines(True),
                                            str(path), "rendered", n=2))
        pytest.fail(f"{path.name} differs from a fresh render:\n{meta[:6000]}\n"
                    f"If the change is intended: {UPDATE_HINT}")


# Runtimes and fabrics are independent partials: each is pinned once, beside the default other.
SCENARIOS = [(runtime, "auto") for runtime in RUNTIMES] + [
    ("docker", fabric) for fabric in FABRICS if fabric != "auto"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fabric", FABRICS)
def test_every_runtime_and_fabric_renders_clean(runtime: str, fabric: str,
                                                 tmp_path: Path) -> None:
    script = render_script(_profile(runtime, fabric))
    subprocess.run(["bash", "-n", str(_write(script, tmp_path))], check=True)


@pytest.mark.parametrize(("runtime", "fabric"), SCENARIOS)
def test_runtime_and_fabric_goldens(runtime: str, fabric: str) -> None:
    _compare_golden(f"{runtime}-{fabric}", render_script(_profile(runtime, fabric)))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fabric", FABRICS)
def test_every_runtime_and_fabric_passes_shellcheck(runtime: str, fabric: str, tmp_path: Path,
                                                    shellcheck: Callable[[Path], str]) -> None:
    findings = shellcheck(_write(render_script(_profile(runtime, fabric)), tmp_path))
    assert findings == "", findings


def test_image_broadcast_golden(tmp_path: Path, shellcheck: Callable[[Path], str]) -> None:
    # No built-in profile broadcasts: the partial's sbcast side is pinned here.
    profile = ClusterProfile.model_validate({
        "name": "broadcast", "container": {"broadcast": "sbcast", "broadcast_dir": "/local",
                                           "broadcast_fanout": 8}})
    script = render_script(profile)
    assert shellcheck(_write(script, tmp_path)) == ""
    _compare_golden("broadcast-sbcast", script)


@pytest.mark.parametrize("name", [n for n in builtin_profile_names() if n != "default"])
def test_builtin_profile_goldens(name: str, tmp_path: Path) -> None:
    script = render_script(load_profile(name))
    subprocess.run(["bash", "-n", str(_write(script, tmp_path))], check=True)
    _compare_golden(f"profile-{name}", script)


def test_golden_files_stay_reviewable() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in GOLDEN.iterdir()}
    assert not [name for name in sizes if not name.endswith(".diff")], sizes
    assert max(sizes.values()) < 1000, sizes


@pytest.mark.parametrize("name", builtin_profile_names())
def test_builtin_profile_passes_shellcheck(name: str, tmp_path: Path,
                                           shellcheck: Callable[[Path], str]) -> None:
    findings = shellcheck(_write(render_script(load_profile(name)), tmp_path))
    assert findings == "", findings


def test_committed_run_sbatch_equals_fresh_render() -> None:
    committed = (REPO / "sbatch" / "run.sbatch").read_text()
    assert committed == render_script(load_profile("default")), (
        "sbatch/run.sbatch is stale: python -m slurm_sglang render -o sbatch/run.sbatch")


def test_values_are_quoted_once() -> None:
    script = render_script(_profile("docker", "tcp"))
    assert "#SBATCH --account=ml-team" in script
    assert "  export ODD='a '\"'\"'b'\"'\"' $c'" in script
    assert "  RUN_ARGS+=(--label)\n  RUN_ARGS+=('site=a b')\n" in script


def test_sbatch_header_from_profile() -> None:
    script = render_script(_profile("docker", "tcp"), nodes=4)
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=sglang", "#SBATCH --nodes=4", "#SBATCH --partition=gpu",
        "#SBATCH --account=ml-team", "#SBATCH --time=04:00:00", "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1", "#SBATCH --exclusive", "#SBATCH --mem=0",
    ]


def test_admin_override_replaces_exactly_one_partial(tmp_path: Path) -> None:
    partials = tmp_path / "partials"
    partials.mkdir()
    builtin = (REPO / "templates" / "partials" / "fabric_tcp.sh.j2").read_text()
    (partials / "fabric_tcp.sh.j2").write_text(
        builtin.replace("export NCCL_IB_DISABLE=1", "export NCCL_IB_DISABLE=1\n  export SITE_X=1"))
    profile = ClusterProfile.model_validate({"template_dir": str(tmp_path)})
    base = render_script(load_profile("default")).splitlines()
    overridden = render_script(profile).splitlines()
    added = [line for line in difflib.ndiff(base, overridden) if line[:2] in ("+ ", "- ")]
    assert added == ["+   export SITE_X=1"]


def test_missing_override_partial_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run.sbatch.j2").write_text('{% include "partials/nope.sh.j2" %}\n')
    profile = ClusterProfile.model_validate({"template_dir": str(tmp_path)})
    with pytest.raises(RenderError, match=r"nope\.sh\.j2 not found"):
        render_script(profile)


def test_syntax_error_in_an_override_names_its_file_and_line(tmp_path: Path) -> None:
    partials = tmp_path / "partials"
    partials.mkdir()
    broken = partials / "fabric_tcp.sh.j2"
    broken.write_text("{% macro fabric_functions(fabric) -%}\n{% if %}{%- endmacro %}\n")
    profile = ClusterProfile.model_validate({"template_dir": str(tmp_path),
                                             "fabric": {"kind": "tcp"}})
    with pytest.raises(RenderError, match=rf"^{re.escape(str(broken))}:2: template syntax error"):
        render_script(profile)


def test_undefined_value_in_an_override_names_its_file_and_line(tmp_path: Path) -> None:
    partials = tmp_path / "partials"
    partials.mkdir()
    builtin = (REPO / "templates" / "partials" / "fabric_tcp.sh.j2").read_text()
    macro = "{% macro fabric_functions(fabric) -%}\n"
    line = builtin[:builtin.index(macro)].count("\n") + 2
    override = partials / "fabric_tcp.sh.j2"
    override.write_text(builtin.replace(macro, macro + "# {{ ctx.runtime }}\n"))
    profile = ClusterProfile.model_validate({"template_dir": str(tmp_path),
                                             "fabric": {"kind": "tcp"}})
    expected = rf"^{re.escape(str(override))}:{line}: template error: 'ctx' is undefined"
    with pytest.raises(RenderError, match=expected):
        render_script(profile)


def test_override_directory_from_python_that_is_not_there_is_refused(tmp_path: Path) -> None:
    settings = TemplateSettings((tmp_path / "nope",))
    with pytest.raises(RenderError, match=r"override_dirs: .*/nope is not a directory"):
        render_script(load_profile("default"), settings=settings)
