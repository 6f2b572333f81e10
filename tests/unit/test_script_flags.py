"""run.sbatch's own flags: one table in launch_plan.py, its reader, its checks and its usage.

The script runs `launch_plan.py script --nodes N --gpus-per-node G -- "$@"` once and evals what
it prints; these tests hold the table to the script's habits (`--flag=value`, `--` ending the
flags, the seed's bare `--profile`), its refusals (one line, exit 2), its byte-for-byte sglang
arguments, its API key (through the pipe, never an argv), and every message written once.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sglang import launch_plan
from slurm_sglang.launch_plan import (
    SCRIPT_FLAGS,
    FlagError,
    parse_script_argv,
    script_flag,
    script_usage,
    shell_assignments,
)
from slurm_sglang.render import script_argv

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "slurm_sglang" / "launch_plan.py"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
# The script's constants as the rendered script exports them (declare -rx).
CONSTANTS = {"PROFILE_NAME": "tcp", "CONTAINER_RUNTIME": "podman", "PROFILE_GPUS_MODE": "cdi",
             "DEFAULT_IMAGE": "", "DEFAULT_CONTAINER_MOUNT": "/fsx", "DEFAULT_WORKSPACE": "",
             "PROFILE_ROUTER_POLICY": "round_robin", "DEFAULT_STAGE_MODEL": ""}
VALUE_FLAGS = [flag for flag in SCRIPT_FLAGS if flag.var and flag.metavar]
SWITCHES = [flag for flag in SCRIPT_FLAGS if flag.var and not flag.metavar]


def _environ(tmp_path: Path, **more: str) -> dict[str, str]:
    return {**CONSTANTS, "PWD": str(tmp_path), **more}


def _parse(tmp_path: Path, *argv: str, **more: str) -> launch_plan.ScriptArgs:
    return parse_script_argv(list(argv), _environ(tmp_path, **more))


# A good value for each value flag, and what the table makes of it.
GOOD = {"IMAGE": ("reg.io/sglang:v1", "reg.io/sglang:v1"), "CONTAINER_MOUNT": ("/data", "/data"),
        "WORKSPACE": ("{tmp}", "{tmp}"), "TORCH_PROFILE_DIR": ("/traces", "/traces"),
        "PORT": ("31000", "31000"), "DIST_PORT": ("29500", "29500"),
        "HEALTH_TIMEOUT": ("60", "60"), "CONTAINER_CLI": ("docker", "docker"),
        "GPUS_MODE": ("env", "env"), "STAGE_MODEL": ("/local/nvme", "/local/nvme"),
        "API_KEY_FILE": ("{tmp}/key", "{tmp}/key"), "MIN_REPLICAS": ("2", "2"),
        "REPLICA_RESTARTS": ("0", "0"), "ROUTER_POLICY": ("random", "random")}


def _key_file(tmp_path: Path, text: str = "k3y\n", mode: int = 0o600) -> Path:
    key = tmp_path / "key"
    key.write_text(text)
    key.chmod(mode)
    return key


def test_every_value_flag_has_a_good_value_here() -> None:
    assert sorted(GOOD) == sorted(flag.var for flag in VALUE_FLAGS)


@pytest.mark.parametrize("flag", VALUE_FLAGS, ids=lambda flag: flag.names[-1])
def test_every_value_flag_reads_both_forms_alike(tmp_path: Path, flag: launch_plan.ScriptFlag
                                                 ) -> None:
    _key_file(tmp_path)
    given, expected = (text.replace("{tmp}", str(tmp_path)) for text in GOOD[flag.var])
    for name in flag.names:
        spaced = _parse(tmp_path, name, given, "--model-path", "m")
        assert spaced.values[flag.var] == expected, name
        assert spaced.sglang_args == ("--model-path", "m")
    joined = _parse(tmp_path, f"{flag.names[-1]}={given}", "--model-path", "m")
    assert joined.values == spaced.values and joined.sglang_args == ("--model-path", "m")


@pytest.mark.parametrize("flag", SWITCHES, ids=lambda flag: flag.names[-1])
def test_every_switch_sets_1_and_takes_no_value(tmp_path: Path, flag: launch_plan.ScriptFlag
                                                ) -> None:
    assert _parse(tmp_path).values[flag.var] == "0"
    for name in flag.names:
        assert _parse(tmp_path, name, "--tp", "2").values[flag.var] == "1"
    with pytest.raises(FlagError, match=re.escape(f"{flag.names[-1]} takes no value")):
        _parse(tmp_path, f"{flag.names[-1]}=1")


def test_only_the_check_alone_sets_the_check_too(tmp_path: Path) -> None:
    values = _parse(tmp_path, "--preflight-nccl-only").values
    assert values["PREFLIGHT_NCCL_FLAG"] == values["PREFLIGHT_NCCL_ONLY"] == "1"
    assert _parse(tmp_path, "--port", "31000").values["PORT_EXPLICIT"] == "1"
    assert _parse(tmp_path).values["PORT_EXPLICIT"] == "0"


def test_defaults_come_from_the_table_and_the_scripts_constants(tmp_path: Path) -> None:
    values = _parse(tmp_path).values
    assert values["CONTAINER_CLI"] == "podman" and values["GPUS_MODE"] == "cdi"
    assert values["ROUTER_POLICY"] == "round_robin" and values["CONTAINER_MOUNT"] == "/fsx"
    assert values["WORKSPACE"] == str(tmp_path) and values["PORT"] == "30000"
    assert values["IMAGE"] == f"{tmp_path}/sglang-serve-latest.tar.gz"
    assert values["STAGE_MODEL"] == "" and values["MIN_REPLICAS"] == "0"
    # The user's variables win over the profile's, and are checked as flags are.
    assert _parse(tmp_path, SLURM_SGLANG_CONTAINER_CLI="docker").values["CONTAINER_CLI"] == "docker"
    with pytest.raises(FlagError, match="--gpus-mode: 'magic'"):
        _parse(tmp_path, SLURM_SGLANG_GPUS_MODE="magic")
    assert _parse(tmp_path, DEFAULT_STAGE_MODEL="/nvme").values["STAGE_MODEL"] == "/nvme"


def test_paths_are_made_absolute_where_the_script_starts(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    values = _parse(tmp_path, "-w", "ws", "--image", "i.tar", "--profile", "t").values
    assert values["WORKSPACE"] == f"{tmp_path}/ws"
    assert values["IMAGE"] == f"{tmp_path}/i.tar" and values["TORCH_PROFILE_DIR"] == f"{tmp_path}/t"
    # The default tarball is the workspace's; a registry reference stays as it is.
    assert _parse(tmp_path, "-w", "ws", DEFAULT_IMAGE="x.tar.zst").values["IMAGE"] == (
        f"{tmp_path}/ws/x.tar.zst")
    assert _parse(tmp_path, "--image=", "-w", "ws").values["IMAGE"] == (
        f"{tmp_path}/ws/sglang-serve-latest.tar.gz")
    assert _parse(tmp_path, "--image", "lmsysorg/sglang:latest").values["IMAGE"] == (
        "lmsysorg/sglang:latest")


@pytest.mark.parametrize(("argv", "directory", "sglang"), [
    (["--profile", "--model-path", "m", "--tp", "8"], "sglang_profile", ["--model-path", "m",
                                                                         "--tp", "8"]),
    (["--model-path", "m", "--profile"], "sglang_profile", ["--model-path", "m"]),
    (["--profile", "--", "--model-path", "m"], "sglang_profile", ["--model-path", "m"]),
    (["--profile", "", "--model-path", "m"], "sglang_profile", ["", "--model-path", "m"]),
    (["--profile", "traces", "--model-path", "m"], "traces", ["--model-path", "m"]),
    (["--profile=-odd", "--model-path", "m"], "-odd", ["--model-path", "m"]),
], ids=["seed", "last", "before-dashes", "empty-next", "directory", "equals"])
def test_profile_is_bare_or_takes_a_directory(tmp_path: Path, argv: list[str], directory: str,
                                              sglang: list[str]) -> None:
    parsed = _parse(tmp_path, *argv)
    assert parsed.values["TORCH_PROFILE_DIR"] == f"{tmp_path}/{directory}"
    assert list(parsed.sglang_args) == sglang


def test_dashes_end_the_flags_and_the_rest_is_sglangs(tmp_path: Path) -> None:
    parsed = _parse(tmp_path, "-f", "--", "--port", "1", "-w", "--help", "--", "x")
    assert parsed.values["FORCE"] == "1" and parsed.values["PORT"] == "30000"
    assert parsed.sglang_args == ("--port", "1", "-w", "--help", "--", "x")
    # Spellings the table does not have are sglang's, as typed.
    assert _parse(tmp_path, "-w=x", "--ports", "--force-x").sglang_args == (
        "-w=x", "--ports", "--force-x")


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["--model-path", "m", "--help", "--port"]])
def test_help_wins(tmp_path: Path, argv: list[str]) -> None:
    assert _parse(tmp_path, *argv).help


def test_usage_lists_every_flag_with_the_profiles_defaults() -> None:
    text = script_usage(CONSTANTS)
    for flag in SCRIPT_FLAGS:
        assert re.search(rf"^  {re.escape(', '.join(flag.names))}\b", text, re.MULTILINE), flag
    assert "(profile 'tcp')" in text and "or cdi)" in text and "(default: round_robin)" in text
    assert "(default: $WORKSPACE/sglang-serve-latest.tar.gz)" in text
    assert "(default: none; docs/staging.md)" in text


# ---- refusals: one line naming the flag, exit 2, as the script runs it ------------------------

BAD = {
    "needs-a-value": (["--model-path", "m", "--image"], "--image needs a value (see --help)"),
    "profile-equals-empty": (["--profile="], "--profile=: no directory after '='"),
    "port-text": (["--port", "http"], "--port: 'http' is not a whole number"),
    "port-low": (["--port=80"], "--port: 80 is not a TCP port (1024-65535)"),
    "port-octal": (["--port", "08080"], "--port: '08080' is not a whole number"),
    "port-newline": (["--port", "30000\n"], "--port: '30000\\n' is not a whole number"),
    "dist-port-low": (["--dist-port=1023"], "--dist-port: 1023 is not a TCP port (1024-65535)"),
    "dist-port-shell": (["--dist-port", "1; touch x"], "--dist-port: '1; touch x'"),
    "health-timeout-zero": (["--health-timeout", "0"], "--health-timeout: must be at least 1"),
    "container-cli": (["--container-cli", "rkt"], "--container-cli: 'rkt' is not one of docker, "
                                                  "podman (or the profile's runtime)"),
    "gpus-mode": (["--gpus-mode=magic"], "--gpus-mode: 'magic' is not one of docker, cdi, env"),
    "workspace": (["-w", "/nonexistent/ws"], "--workspace: /nonexistent/ws does not exist"),
    "stage-model": (["--stage-model", "local"], "--stage-model: 'local' is not an absolute path"),
    "min-replicas": (["--min-replicas", "0"], "--min-replicas: '0' is not a whole number >= 1"),
    "replica-restarts": (["--replica-restarts=-1"], "--replica-restarts: '-1' is not a whole"),
    "router-policy": (["--router-policy", "fastest"], "--router-policy: 'fastest' is not one of "
                                                      "cache_aware, round_robin, random"),
    "switch-value": (["--quiet=yes"], "--quiet takes no value"),
    "key-missing": (["--api-key-file", "/nonexistent/key"],
                    "--api-key-file: /nonexistent/key is not a readable file"),
    "key-open": (["--api-key-file", "{tmp}/open"], "is readable by group or others (mode 644): "
                                                   "chmod 600"),
    "key-empty": (["--api-key-file", "{tmp}/empty"], "is empty (its first line is the key)"),
    "key-space": (["--api-key-file", "{tmp}/spaced"], "the API key holds white space"),
    "check-alone-with-arguments": (["--preflight-nccl-only", "--model-path", "m"],
                                   "--preflight-nccl-only runs the check alone"),
}


def _script(tmp_path: Path, *argv: str, nodes: int = 0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    """launch_plan.py as the script runs it, its output evaluated by bash; then every variable
    and SGLANG_ARGS NUL-separated."""
    dump = ('out=$("$@") || exit $?; eval "$out"; printf "%s\\0" "${SGLANG_ARGS[@]}"; '
            'printf "key=%s\\0" "${SLURM_SGLANG_API_KEY:-}"; '
            'printf "exported=%s\\0" "$(printenv SLURM_SGLANG_API_KEY)"')
    return subprocess.run(
        ["bash", "-c", dump, "eval", PYTHON, "-I", "-S", str(MODULE), "script",
         "--nodes", str(nodes), "--gpus-per-node", "8", "--", *argv],
        capture_output=True, timeout=60, check=False, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], **CONSTANTS, **(env or {})})


@pytest.mark.parametrize("case", list(BAD))
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    for name, text, mode in (("open", "k\n", 0o644), ("empty", "", 0o600),
                             ("spaced", "a b\n", 0o600)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(mode)
    argv, expected = BAD[case]
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    done = _script(tmp_path, *filled, *([] if "--model-path" in argv else ["--model-path", "m"]))
    stderr = done.stderr.decode()
    assert done.returncode == 2 and done.stdout == b"", stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("slurm-sglang: "), stderr
    assert expected.replace("{tmp}", str(tmp_path)) in stderr, stderr


# Each value of a flag that takes one string, as sglang would accept them (the plan refuses
# what sglang's parser would, as check does); "-leading" only reaches it after '='.
AWKWARD = ["--served-model-name", "a b  c", "--chat-template", "it's \"quoted\"",
           "--tokenizer-path", "$(touch pwned) `id` ${HOME} $HOME", "--revision=-leading",
           "--json-model-override-args", '{"x": [1, 2]}', "--download-dir", "",
           "--completion-template", "tab\there", "--file-storage-path", "模型-😀",
           "--hf-chat-template-name", "\\"]


@pytest.mark.parametrize("nodes", [0, 2], ids=["arguments-alone", "planned"])
def test_sglangs_arguments_come_back_as_an_array_byte_for_byte(tmp_path: Path, nodes: int
                                                               ) -> None:
    argv = ["--model-path", "m", *AWKWARD[:6], "--tp", "2", *AWKWARD[6:]]
    done = _script(tmp_path, "--quiet", *argv, nodes=nodes)
    assert done.returncode == 0, done.stderr.decode()
    fields = done.stdout.split(b"\0")[:-3]
    expected = [*argv, "--enable-metrics"] if nodes else argv
    assert fields == [arg.encode() for arg in expected]
    assert not (tmp_path / "pwned").exists()


def test_flag_values_with_newlines_and_dollars_come_back_exactly(tmp_path: Path) -> None:
    odd = "/mnt/a b\n$(touch pwned)'x'"
    done = subprocess.run(
        ["bash", "-c", 'eval "$(cat)"; printf "%s\\0" "$CONTAINER_MOUNT" "${SGLANG_ARGS[@]}"'],
        input=shell_assignments([("CONTAINER_MOUNT", odd)], [("SGLANG_ARGS", ["a\nb", "-$x"])]),
        capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path)
    assert done.stdout.split("\0")[:-1] == [odd, "a\nb", "-$x"]
    assert _parse(tmp_path, f"--container-mount={odd}").values["CONTAINER_MOUNT"] == odd
    assert not (tmp_path / "pwned").exists()


# ---- the API key: read by Python, handed to bash through the pipe -----------------------------

def test_the_key_reaches_the_script_exported_and_never_on_an_argv(tmp_path: Path) -> None:
    key = _key_file(tmp_path, "s3cr3t-k3y\nsecond line\n")
    done = _script(tmp_path, "--api-key-file", str(key), "--model-path", "m")
    assert done.returncode == 0, done.stderr.decode()
    fields = done.stdout.split(b"\0")
    assert b"key=s3cr3t-k3y" in fields and b"exported=s3cr3t-k3y" in fields
    assert b"s3cr3t" not in done.stderr
    # The interpreter's argv holds the file's name, not the key.
    assert "s3cr3t" not in " ".join(
        [PYTHON, "-I", "-S", str(MODULE), "script", "--", "--api-key-file", str(key)])


def test_without_a_file_the_environments_key_is_checked_and_not_echoed(tmp_path: Path) -> None:
    done = _script(tmp_path, "--model-path", "m", env={"SLURM_SGLANG_API_KEY": "env-k3y"})
    assert done.returncode == 0 and b"exported=env-k3y" in done.stdout.split(b"\0")
    refused = _script(tmp_path, "--model-path", "m", env={"SLURM_SGLANG_API_KEY": "a b"})
    assert refused.returncode == 2 and b"white space" in refused.stderr


def test_bench_reads_the_key_file_by_the_same_rule(tmp_path: Path) -> None:
    from slurm_sglang.bench import read_api_key

    assert read_api_key(str(_key_file(tmp_path, "k1\nk2\n")), {}) == "k1"
    assert read_api_key(None, {"SLURM_SGLANG_API_KEY": "e"}) == "e"
    with pytest.raises(FlagError, match="readable by group or others"):
        read_api_key(str(_key_file(tmp_path, mode=0o640)), {})


# ---- the whole call: the check alone, the plan, --dry-run -------------------------------------

def test_the_check_alone_plans_nothing(tmp_path: Path) -> None:
    done = _script(tmp_path, "--preflight-nccl-only", nodes=2)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.split(b"\0")[0] == b""  # SGLANG_ARGS=()


def test_dry_run_prints_the_table_and_ends_the_script(tmp_path: Path) -> None:
    done = _script(tmp_path, "--dry-run", "--model-path", "m", "--tp", "16", nodes=2)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"replica  nodes") and b"\0" not in done.stdout


def test_submit_builds_the_scripts_argv_from_the_table(tmp_path: Path) -> None:
    values = {"WORKSPACE": str(tmp_path), "PORT": "31000", "IMAGE": "", "STAGE_MODEL": "none",
              "TORCH_PROFILE_DIR": "-odd dir", "FORCE": "1", "QUIET": "0"}
    argv = script_argv(values)
    # In the table's order, always with '=': a value never takes the next word.
    assert argv == [f"--workspace={tmp_path}", "--force", "--profile=-odd dir", "--port=31000",
                    "--stage-model=none"]
    parsed = _parse(tmp_path, *argv)
    assert parsed.values["TORCH_PROFILE_DIR"] == f"{tmp_path}/-odd dir"
    assert parsed.values["PORT"] == "31000" and parsed.values["STAGE_MODEL"] == ""


def test_submit_refuses_with_the_scripts_own_message(tmp_path: Path) -> None:
    from slurm_sglang import api

    with pytest.raises(FlagError, match=r"--workspace: .* does not exist or is not a directory"):
        api.submit(["--model-path", "m"], cluster="tcp", nodes=1,
                   workspace=str(tmp_path / "missing"))
    with pytest.raises(FlagError, match="--stage-model: 'rel' is not an absolute path"):
        api.submit(["--model-path", "m"], cluster="tcp", nodes=1, workspace=str(tmp_path),
                   stage_model="rel")


def test_the_clis_port_and_health_timeout_are_the_tables(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from slurm_sglang.cli import main

    for argv, expected in ((["--port", "80"], "--port: 80 is not a TCP port (1024-65535)"),
                           (["--health-timeout", "0"], "--health-timeout: must be at least 1")):
        assert main(["submit", *argv, "--", "--model-path", "m"]) == 2
        assert expected in capsys.readouterr().err
    assert script_flag("--port").check is launch_plan.tcp_port


# ---- every message of the flags written once ---------------------------------------------------

SEARCHED = ("slurm_sglang", "templates")
MIN_PIECE = 8


def _flag_messages() -> list[tuple[int, list[str]]]:
    """Each `raise FlagError(...)` in launch_plan.py: its line and the fixed text of its
    message, split at the placeholders."""
    source = MODULE.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name) and node.exc.func.id == "FlagError"):
            pieces = [piece.strip() for sub in ast.walk(node.exc) if isinstance(sub, ast.Constant)
                      and isinstance(sub.value, str) for piece in re.split(r"\{[^{}]*\}",
                                                                          sub.value)]
            found.append((node.lineno, [p for p in pieces if len(p) >= MIN_PIECE]))
    return found


def test_flag_messages_are_found() -> None:
    # A guard on the collector: every refusal of BAD above is one of these.
    assert len([pieces for _, pieces in _flag_messages() if pieces]) >= 17


def test_every_flag_message_is_written_once_in_the_repository() -> None:
    files = [path for folder in SEARCHED for path in (REPO / folder).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts and path != MODULE
             and path.suffix in (".py", ".j2", ".sh")] + [REPO / "sbatch" / "run.sbatch"]
    lines = [(path, line) for path in files
             for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    messages = _flag_messages()
    texts = [" ".join(pieces) for _, pieces in messages if pieces]
    assert len(texts) == len(set(texts)), "a flag message written twice in launch_plan.py"
    copies = [f"line {lineno} {pieces}: {path.relative_to(REPO)}: {line.strip()}"
              for lineno, pieces in messages if pieces for path, line in lines
              if all(piece in line for piece in pieces)]
    assert not copies, "flag messages written outside launch_plan.py:\n" + "\n".join(copies)


def test_every_constant_a_flag_falls_back_to_comes_from_the_profile() -> None:
    from slurm_sglang.profile import load_profile
    from slurm_sglang.render import flag_defaults, render_script

    profile = load_profile("infiniband")
    named = {candidate[1:] for flag in SCRIPT_FLAGS for candidate in flag.default
             if candidate.startswith("$") and not candidate.startswith("$SLURM_SGLANG_")} - {"PWD"}
    assert named == set(flag_defaults(profile))
    # The script declares each once, as submit reads it.
    script = render_script(profile)
    for name in flag_defaults(profile):
        assert script.count(f"declare -rx {name}=") == 1, name
    # submit without --image takes the profile's squashfs, which enroot can use.
    read = parse_script_argv(["--model-path", "m"], {**flag_defaults(profile), "PWD": "/w"},
                             local=False)
    assert profile.container.image.endswith(".sqsh")
    assert read.values["IMAGE"] == profile.container.image


@pytest.mark.parametrize("image", ["/i/sglang.sqsh", "/i/sglang.sif"])
def test_docker_refuses_a_squashfs_or_sif_image_before_anything_starts(tmp_path: Path,
                                                                      image: str) -> None:
    with pytest.raises(FlagError, match=r"^--image: .* which docker cannot load; use a docker"):
        _parse(tmp_path, "--container-cli", "docker", "--image", image)
    assert _parse(tmp_path, "--container-cli", "enroot", "--image", "/i/sglang.sqsh")
