"""Malformed input through every way in that needs no cluster: one clear line, exit 2, nothing run.

The ways in: `bash run.sbatch ...` outside an allocation, `python -m slurm_sglang check/render`,
and profile files. Arguments that carry shell syntax must never be executed: each case may
name a canary file in its arguments, and the file must not exist afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang.profile import load_profile
from slurm_sglang.render import render_script, write_script

CANARY = "{canary}"
TOUCH = f"$(touch {CANARY})"


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run.sbatch of the default profile."""
    path = tmp_path_factory.mktemp("script") / "run.sbatch"
    write_script(render_script(load_profile("default")), path)
    return path


def _no_slurm_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("SLURM_", "SLURM_SGLANG_"))}


def _fill(args: list[str], canary: Path, tmp_path: Path) -> list[str]:
    return [arg.replace(CANARY, str(canary)).replace("{tmp}", str(tmp_path)) for arg in args]


SCRIPT_CASES: dict[str, tuple[list[str], str]] = {
    "no-arguments": ([], "--model-path is required"),
    "tp-not-a-number": (["--model-path", "m", "--tp", "eight"],
                        "--tp: 'eight' is not a whole number"),
    "tp-missing-value": (["--model-path", "m", "--tp"], "--tp: missing value"),
    "tp-zero": (["--model-path", "m", "--tp", "0"], "--tp: '0' is not a whole number"),
    "tp-command-substitution": (["--model-path", "m", "--tp", TOUCH], "is not a whole number"),
    "port-not-a-number": (["--model-path", "m", "--port", "http"],
                          "--port: 'http' is not a whole number"),
    "port-out-of-range": (["--model-path", "m", "--port", "70000"], "is not a TCP port"),
    "port-backticks": (["--model-path", "m", "--port", f"`touch {CANARY}`"],
                       "is not a whole number"),
    "dist-port-semicolon": (["--model-path", "m", "--dist-port", f"1; touch {CANARY}"],
                            "--dist-port: '1; touch"),
    "health-timeout-zero": (["--model-path", "m", "--health-timeout", "0"], "at least 1 second"),
    "image-missing-value": (["--model-path", "m", "--image"], "--image needs a value"),
    "unknown-runtime": (["--model-path", "m", "--container-cli", "rkt"], "--container-cli: 'rkt'"),
    "unknown-gpus-mode": (["--model-path", "m", "--gpus-mode", "magic"], "--gpus-mode: 'magic'"),
    "workspace-missing": (["--model-path", "m", "-w", "/nonexistent/ws"], "is not a directory"),
    "nnodes-given": (["--model-path", "m", "--nnodes", "2"], "--nnodes is set by the launcher"),
    "host-given": (["--model-path", "m", "--host", "0.0.0.0"], "--host"),
    "port-after-dashes": (["--model-path", "m", "--", "--port", "30001"],
                          "--port is set by the launcher"),
    "misspelt-script-flag": (["--quite", "--model-path", "m", "--tp", "2"],
                             "did you mean run.sbatch's --quiet?"),
    "api-key-in-argv": (["--model-path", "m", "--api-key", "sk-plain-secret"],
                        "--api-key on the command line shows in ps"),
    "api-key-file-missing": (["--model-path", "m", "--api-key-file", "/nonexistent/key"],
                             "--api-key-file: /nonexistent/key is not a readable file"),
    "api-key-file-empty": (["--model-path", "m", "--api-key-file", "{tmp}/empty-key"], "is empty"),
    "stage-model-relative": (["--stage-model", "local", "--model-path", "m"],
                             "--stage-model: 'local' is not an absolute path"),
    "stage-model-missing-value": (["--model-path", "m", "--stage-model"],
                                  "--stage-model needs a value"),
    "newline-in-argument": (["--model-path", "m", "--chat-template", f"a\n{TOUCH}"],
                            "contains a newline"),
    "valid-but-no-allocation": (["--model-path", "my model", "--tp", "8"],
                                "not inside a SLURM allocation"),
}


@pytest.mark.parametrize("case", list(SCRIPT_CASES))
def test_script_outside_allocation_refuses(script: Path, tmp_path: Path, case: str) -> None:
    args, expected = SCRIPT_CASES[case]
    canary = tmp_path / "pwned"
    (tmp_path / "empty-key").write_text("")
    (tmp_path / "empty-key").chmod(0o600)
    result = subprocess.run(["bash", str(script), *_fill(args, canary, tmp_path)],
                            capture_output=True, text=True, env=_no_slurm_env(), cwd=tmp_path,
                            timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "sk-plain-secret" not in result.stderr
    assert not canary.exists()
    assert result.stdout == ""


PROFILE_CASES: dict[str, tuple[str, str]] = {
    "unknown-key": ("slurm:\n  partitoin: gpu\n", "unknown key 'slurm.partitoin'"),
    "wrong-type": ("slurm:\n  gpus_per_node: eight\n", "slurm.gpus_per_node"),
    "negative-gpus": ("slurm:\n  gpus_per_node: -1\n", "slurm.gpus_per_node"),
    "unknown-runtime": ("container:\n  runtime: rkt\n", "container.runtime"),
    "privileged-not-bool": ("container:\n  privileged: sometimes\n", "container.privileged"),
    "relative-mount": ("container:\n  mounts: [data:/data]\n", "must be an absolute path"),
    "newline-in-partition": ("slurm:\n  partition: \"gpu\\n#SBATCH --x\"\n", "must be one line"),
    "bad-env-name": ("fabric:\n  env: {\"A B\": x}\n", "not a valid environment variable name"),
    "not-yaml": ("slurm: [unclosed\n", "not valid YAML"),
    "not-a-mapping": ("- a\n- b\n", "a profile is a mapping"),
    "extends-itself": ("extends: ./self.yaml\n", "extends forms a cycle"),
    "relative-local-model-dir": ("paths:\n  local_model_dir: nvme/models\n",
                                 "must be an absolute path on every node's local disk"),
    "directive-not-option": ("slurm:\n  extra_directives: [\"mem=0\"]\n",
                             "must be an sbatch option"),
    # A template_dir that is not there would render the built-in partials without a word.
    "missing-template-dir": ("\ntemplate_dir: /no/such/templates\n",
                             "self.yaml:2: template_dir: Value error, '/no/such/templates' is "
                             "not a directory here"),
    "relative-template-dir": ("template_dir: templates\n",
                              "self.yaml:1: template_dir: Value error, 'templates' must be an "
                              "absolute path"),
}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slurm_sglang", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_bad_profile_file_refused_by_render(tmp_path: Path, case: str) -> None:
    text, expected = PROFILE_CASES[case]
    profile = tmp_path / "self.yaml"
    profile.write_text(text)
    result = _cli("render", "--cluster", str(profile), "-o", str(tmp_path / "out.sbatch"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out.sbatch").exists()


CLI_CASES: dict[str, tuple[list[str], str]] = {
    "check-tp-not-a-number": (["check", "--nodes", "2", "--", "--model-path", "m", "--tp", "x"],
                              "--tp: 'x' is not a whole number"),
    "check-tp-not-dividing-nodes": (["check", "--nodes", "2", "--", "--model-path", "m",
                                     "--tp", "3"], "is not divisible by the 2 nodes"),
    "check-no-model": (["check", "--nodes", "2", "--", "--tp", "2"], "--model-path is required"),
    "check-nodes-not-a-number": (["check", "--nodes", "two", "--", "--model-path", "m"],
                                 "'two' is not a whole number"),
    "check-unknown-profile": (["check", "--cluster", "nope", "--", "--model-path", "m"],
                              "no built-in profile of that name"),
    "check-missing-profile-file": (["check", "--cluster", "/nonexistent/p.yaml", "--",
                                    "--model-path", "m"], "no such profile file"),
    "check-newline": (["check", "--nodes", "2", "--", "--model-path", "m", "--tp", "2",
                       "--chat-template", f"x\n{TOUCH}"], "contains a newline"),
    "check-command-substitution": (["check", "--nodes", "2", "--", "--model-path", "m",
                                    "--tp", TOUCH], "is not a whole number"),
    "check-host-given": (["check", "--", "--model-path", "m", "--host", "1.2.3.4"],
                         "--host"),
    "check-port-among-sglang-args": (["check", "--", "--model-path", "m", "--tp", "2", "--port",
                                      "30001"], "`submit --port N`"),
    "render-nodes-zero": (["render", "--nodes", "0"], "is not a whole number from 1 to 10000"),
    "render-unknown-verb-option": (["render", "--nodez", "2"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses(tmp_path: Path, case: str) -> None:
    args, expected = CLI_CASES[case]
    canary = tmp_path / "pwned"
    result = _cli(*_fill(args, canary, tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    # Usage errors are one line on stderr; `check` reports its problems as `problem:` lines.
    reported = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
                if expected in line]
    assert len(reported) == 1, result.stderr + result.stdout
    assert len(result.stderr.splitlines()) <= 1
    assert not canary.exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("/no/such/templates", "is not a directory here"),
    ("relative/templates", "must be an absolute path"),
])
def test_template_dir_environment_that_is_no_directory_is_refused(
        tmp_path: Path, value: str, expected: str) -> None:
    environ = {**os.environ, "SLURM_SGLANG_TEMPLATE_DIR": f"{tmp_path}:{value}"}
    result = subprocess.run([sys.executable, "-m", "slurm_sglang", "render", "-o",
                             str(tmp_path / "out.sbatch")], capture_output=True, text=True,
                            timeout=60, env=environ, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"slurm-sglang: error: SLURM_SGLANG_TEMPLATE_DIR: {value!r} "
                               f"{expected}"), result.stderr
    assert not (tmp_path / "out.sbatch").exists()


def test_model_path_with_spaces_is_accepted() -> None:
    result = _cli("check", "--nodes", "2", "--", "--model-path", "/models/my model", "--tp", "2")
    assert result.returncode == 0, result.stdout + result.stderr


def test_containers_not_privileged_unless_the_profile_asks() -> None:
    plain = render_script(load_profile("default"))
    data = load_profile("default").model_dump()
    data["container"]["privileged"] = True
    from slurm_sglang.profile import ClusterProfile

    privileged = render_script(ClusterProfile.model_validate(data))
    assert "--privileged" not in plain
    assert privileged.count("RUN_ARGS+=(--privileged)") == 1


@pytest.mark.parametrize(("runtime", "image", "expected"), [
    ("enroot", "nvcr.io#nvidia/sglang:1", "pyxis cannot use"),
    ("apptainer", "/s/sglang.sif", "apptainer cannot exec"),
])
def test_submit_refuses_a_docker_tarball_the_runtime_cannot_use(
        tmp_path: Path, runtime: str, image: str, expected: str) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text(f"container:\n  runtime: {runtime}\n  image: {image}\n")
    tarball = tmp_path / "sglang.tar.gz"
    tarball.write_bytes(b"")
    # An sbatch that leaves a mark: a submission would show.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/submitted\necho 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**_no_slurm_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--cluster", str(profile), "--nodes",
         "1", "--image", str(tarball), "--", "--model-path", "m"], capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr
    assert str(tmp_path / "sglang.sqsh" if runtime == "enroot" else tmp_path / "sglang.sif") \
        in result.stderr
    assert not (tmp_path / "submitted").exists()


def test_submit_names_an_sbatch_answer_without_a_job_id_in_one_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A site wrapper that prints its own banner instead of sbatch's answer.
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'queued, thank you'\n")
    (bin_dir / "sbatch").chmod(0o755)
    tarball = tmp_path / "sglang.tar.gz"
    tarball.write_bytes(b"")
    env = {**_no_slurm_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--nodes", "1", "--image", str(tarball),
         "--workspace", str(tmp_path), "--", "--model-path", "m"], capture_output=True,
        text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode not in (0, 2) and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "queued, thank you" in result.stderr and "squeue --me" in result.stderr


def test_submit_without_image_takes_the_profiles_own(tmp_path: Path) -> None:
    # The built-in infiniband profile runs enroot with a squashfs image: nothing to refuse.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >{tmp_path}/argv\n"
                                    "echo 'Submitted batch job 7'\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**_no_slurm_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--cluster", "infiniband", "--nodes",
         "2", "--no-wait", "--workspace", str(tmp_path), "--", "--model-path", "m", "--tp", "2"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").exists()


@pytest.mark.parametrize(("name", "flag"), [("SLURM_SGLANG_CONTAINER_CLI", "--container-cli"),
                                            ("SLURM_SGLANG_GPUS_MODE", "--gpus-mode")])
def test_submit_checks_the_flags_against_the_environment_the_job_inherits(
        tmp_path: Path, name: str, flag: str) -> None:
    # sbatch exports this shell's environment, and the script's flags fall back on these
    # variables: a bad one would fail on the nodes, so it is refused before sbatch.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/submitted\necho 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    tarball = tmp_path / "sglang.tar.gz"
    tarball.write_bytes(b"")
    env = {**_no_slurm_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", name: "bogus"}
    result = subprocess.run(
        [sys.executable, "-m", "slurm_sglang", "submit", "--nodes", "1", "--image", str(tarball),
         "--workspace", str(tmp_path), "--", "--model-path", "m"], capture_output=True,
        text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and flag in result.stderr, result.stderr
    assert not (tmp_path / "submitted").exists()
