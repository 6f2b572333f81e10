"""Security on a shared cluster (issue 23): other users, hostile input, devices and redirects.

Tests that need a second user make ``slurm-sglang-other`` with ``useradd`` (once, and leave it)
and act as it through ``runuser``; they skip when not run as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang.profile import ClusterProfile, load_profile, merge_profile_data
from slurm_sglang.render import render_script

OTHER = "slurm-sglang-other"
PRELUDE = 'source <(sed \'$d\' "$1")\nset +e\nshift\n'


def _other_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    if subprocess.run(["id", "-u", OTHER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", OTHER],
                       capture_output=True, check=False)
    done = subprocess.run(["id", "-u", OTHER], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"useradd {OTHER} failed")
    return done.stdout.strip()


def as_other(*argv: str) -> None:
    """Run argv as the second, unprivileged user."""
    subprocess.run(["runuser", "-u", OTHER, "--", *argv], check=True, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A scratch directory every user can reach (pytest's tmp_path is root's only)."""
    _other_user()
    folder = Path(tempfile.mkdtemp(prefix="slurm-sglang-security-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _script(folder: Path, **overrides: Any) -> Path:
    # fabric tcp: the script's own functions are under test, not a fabric's.
    data = merge_profile_data(load_profile("default").model_dump(),
                              {"fabric": {"kind": "tcp"}, **overrides})
    path = folder / "run.sbatch"
    path.write_text(render_script(ClusterProfile.model_validate(data)))
    return path


def _bash(script: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


PREPARE = ('WORKSPACE=$WS SLURM_JOB_ID=4242 TORCH_PROFILE_DIR=; prepare_log_dir; '
           'echo "prepared ${LOG_DIR}"\n')


def _planted(shared: Path) -> tuple[Path, Path]:
    """logs/4242 made by the other user, events.log in it a link to the victim's file."""
    logs = shared / "ws" / load_profile("default").paths.logs
    logs.mkdir(parents=True)
    logs.chmod(0o777)
    victim = shared / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o666)
    as_other("mkdir", "-m", "777", str(logs / "4242"))
    as_other("ln", "-s", str(victim), str(logs / "4242" / "events.log"))
    return logs, victim


# ---- 1. someone else's job directory ----------------------------------------------------------


def test_script_refuses_a_job_directory_another_user_made(shared: Path) -> None:
    logs, victim = _planted(shared)
    logs.chmod(0o755)
    script = _script(shared)
    done = _bash(script, PREPARE, WS=str(shared / "ws"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not to you" in done.stderr and "--workspace" in done.stderr
    assert victim.read_text() == "precious\n"


def test_script_refuses_a_logs_directory_others_can_write(shared: Path) -> None:
    _logs, victim = _planted(shared)
    done = _bash(_script(shared), PREPARE, WS=str(shared / "ws"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not to you" in done.stderr or "writable by group or others" in done.stderr
    assert victim.read_text() == "precious\n"


def test_script_refuses_a_job_directory_that_is_a_link(shared: Path) -> None:
    logs = shared / "ws" / load_profile("default").paths.logs
    logs.mkdir(parents=True)
    elsewhere = shared / "elsewhere"
    elsewhere.mkdir()
    (logs / "4242").symlink_to(elsewhere)
    done = _bash(_script(shared), PREPARE, WS=str(shared / "ws"))
    assert done.returncode == 2 and "symbolic link" in done.stderr, done.stderr
    assert not list(elsewhere.iterdir())


def test_script_keeps_its_own_directory_private(shared: Path) -> None:
    # submitit made logs/<job>/submitit with the user's umask before the job started.
    logs = shared / "ws" / load_profile("default").paths.logs
    (logs / "4242" / "submitit").mkdir(parents=True)
    (logs / "4242").chmod(0o755)
    body = PREPARE + ': >"${LOG_DIR}/rank-0-n.log"\n'
    done = _bash(_script(shared), body, WS=str(shared / "ws"))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((logs / "4242").stat().st_mode) == 0o700
    for name in ("events.log", "state", "rank-0-n.log"):
        assert stat.S_IMODE((logs / "4242" / name).stat().st_mode) == 0o600, name


def _record(log_dir: Path) -> Any:
    from slurm_sglang.jobs import JobRecord

    return JobRecord(job_id="4242", cluster="default", log_dir=str(log_dir), script="s",
                     sglang_args=[], submitted_at="2026-01-01T00:00:00")


@pytest.mark.parametrize("name", ["endpoint.json", "state"])
def test_readers_refuse_a_file_another_user_owns(shared: Path, name: str) -> None:
    from slurm_sglang.api import check_job_files
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.transport.local import LocalTransport

    job = shared / "4242"
    job.mkdir(mode=0o777)
    job.chmod(0o777)
    as_other("sh", "-c", f'echo \'{{"url": "http://evil:1"}}\' > {job}/{name}')
    job.chmod(0o700)
    with pytest.raises(UserInputError, match="not to you"):
        check_job_files(LocalTransport(), str(job), ("state", "events.log", "endpoint.json"))


def test_readers_refuse_a_job_directory_another_user_owns(shared: Path) -> None:
    from slurm_sglang.api import check_job_files
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.transport.local import LocalTransport

    shared.chmod(0o777)
    as_other("mkdir", "-m", "700", str(shared / "4242"))
    with pytest.raises(UserInputError, match="not to you"):
        check_job_files(LocalTransport(), str(shared / "4242"), ("endpoint.json",))


def test_readers_refuse_a_link_planted_for_endpoint(shared: Path) -> None:
    from slurm_sglang.api import check_job_files
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.transport.local import LocalTransport

    (shared / "4242").mkdir(mode=0o700)
    (shared / "forged.json").write_text('{"url": "http://evil:1"}')
    (shared / "4242" / "endpoint.json").symlink_to(shared / "forged.json")
    with pytest.raises(UserInputError, match="symbolic link"):
        check_job_files(LocalTransport(), str(shared / "4242"), ("endpoint.json",))


def test_readers_accept_the_users_own_files(shared: Path) -> None:
    from slurm_sglang.api import check_job_files
    from slurm_sglang.transport.local import LocalTransport

    (shared / "4242").mkdir(mode=0o700)
    (shared / "4242" / "state").write_text("ready\n")
    check_job_files(LocalTransport(), str(shared / "4242"), ("state", "endpoint.json"))
    check_job_files(LocalTransport(), str(shared / "missing"), ("state",))


def test_submit_refuses_a_logs_directory_another_user_owns(shared: Path) -> None:
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.submit import check_own_directory

    shared.chmod(0o777)
    as_other("mkdir", "-m", "777", str(shared / "logs"))
    with pytest.raises(UserInputError, match="not to you"):
        check_own_directory(shared / "logs")
    mine = shared / "mine"
    mine.mkdir()
    mine.chmod(0o777)
    with pytest.raises(UserInputError, match="writable by group or others"):
        check_own_directory(mine)


# ---- 10. render -o onto a device ----------------------------------------------------------------


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slurm_sglang", "render", "--cluster", "tcp",
                           *args], capture_output=True, text=True, timeout=120, check=False)


def test_render_onto_a_character_device_leaves_it_a_device(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    device = tmp_path / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    done = _render("-o", str(device))
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(device.stat().st_mode)
    assert device.stat().st_rdev == os.makedev(1, 3)
    assert not (tmp_path / "slurm-sglang").exists()
    # A link to a device is the device too.
    (tmp_path / "link").symlink_to(device)
    assert _render("-o", str(tmp_path / "link")).returncode == 0
    assert (tmp_path / "link").is_symlink() and stat.S_ISCHR(device.stat().st_mode)


def test_render_onto_a_fifo_writes_into_it(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    opened = threading.Event()

    def read() -> None:
        with open(fifo, "rb") as source:
            opened.set()
            received.append(source.read())

    reader = threading.Thread(target=read)
    reader.start()
    done = _render("-o", str(fifo))
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received and received[0].startswith(b"#!/usr/bin/env bash")


def test_render_onto_a_fifo_nobody_reads_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = _render("-o", str(fifo))
    assert done.returncode == 2 and "no process reads it" in done.stderr, done.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_render_onto_a_directory_names_the_fix(tmp_path: Path) -> None:
    done = _render("-o", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "is a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_render_dash_writes_standard_output(tmp_path: Path) -> None:
    done = subprocess.run(["sh", "-c", f'cd {tmp_path} && "$0" -m slurm_sglang render '
                           "--cluster tcp -o -", sys.executable],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.startswith("#!/usr/bin/env bash"), done.stderr
    assert list(tmp_path.iterdir()) == []


# ---- 3. newlines and names into the script -----------------------------------------------------

CANARY = "CANARY"
HOSTILE = (
    f"x\n#SBATCH --wrap=touch {CANARY}\ntouch {CANARY}\n",
    f"x $(touch {CANARY}) `touch {CANARY}`;touch {CANARY} '\"\\",
)


def _string_fields(model: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                 str]]:
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _string_fields(annotation, (*prefix, name))
        elif annotation is str:
            yield (*prefix, name), "str"
        elif str(annotation) == "list[str]":
            yield (*prefix, name), "list"
        elif str(annotation) == "dict[str, str]":
            yield (*prefix, name), "dict"


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data: Any = value
    for key in reversed(path):
        data = {key: data}
    return dict(data)


@pytest.mark.parametrize(("path", "kind"), list(_string_fields(ClusterProfile)),
                         ids=lambda value: ".".join(value) if isinstance(value, tuple) else value)
def test_every_profile_field_with_hostile_values(tmp_path: Path, path: tuple[str, ...],
                                                 kind: str) -> None:
    from pydantic import ValidationError

    from slurm_sglang.render import RenderError

    for hostile in HOSTILE:
        value: Any = {"str": hostile, "list": [hostile], "dict": {hostile: hostile}}[kind]
        data = merge_profile_data(load_profile("tcp").model_dump(), _nested(path, value))
        try:
            text = render_script(ClusterProfile.model_validate(data))
        except (ValidationError, RenderError):
            continue  # refused, naming the field
        if kind == "dict":
            # A refused key would have failed validation: only the value is left to try.
            data = merge_profile_data(load_profile("tcp").model_dump(),
                                      _nested(path, {"SAFE_NAME": hostile}))
            text = render_script(ClusterProfile.model_validate(data))
        script = tmp_path / "run.sbatch"
        script.write_text(text)
        # sbatch reads #SBATCH lines up to the first line of code.
        lines = text.splitlines()
        first_code = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
        assert not any("--wrap" in line for line in lines[:first_code]), path
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
        if shutil.which("shellcheck"):
            checked = subprocess.run(["shellcheck", "-S", "warning", str(script)],
                                     capture_output=True, text=True, check=False)
            assert checked.returncode == 0, checked.stdout[-2000:]
        subprocess.run(["bash", str(script), "--help"], cwd=tmp_path, capture_output=True,
                       timeout=60, check=False)
        assert not list(tmp_path.glob(f"*{CANARY}*")), path


@pytest.mark.parametrize("value", ["gpu\nqos", "gpu batch", "a;b", "-x", "x" * 65, ""])
def test_names_are_refused_naming_the_field(tmp_path: Path, value: str) -> None:
    from pydantic import ValidationError

    for field in ("partition", "account", "qos"):
        data = merge_profile_data(load_profile("tcp").model_dump(), {"slurm": {field: value}})
        if not value:
            ClusterProfile.model_validate(data)
            continue
        with pytest.raises(ValidationError, match=field):
            ClusterProfile.model_validate(data)
    if value:
        with pytest.raises(ValidationError, match="name"):
            ClusterProfile.model_validate({**load_profile("tcp").model_dump(), "name": value})


def test_a_profile_file_whose_name_has_a_newline_is_refused(tmp_path: Path) -> None:
    from slurm_sglang.profile import ProfileError

    path = tmp_path / "evil\ntouch CANARY\n.yaml"
    path.write_text("extends: tcp\n")
    with pytest.raises(ProfileError, match="profile name"):
        load_profile(str(path))


def test_an_env_key_with_a_newline_is_refused() -> None:
    from pydantic import ValidationError

    data = merge_profile_data(load_profile("tcp").model_dump(), {"fabric": {"env": {"FOO\n": "x"}}})
    with pytest.raises(ValidationError, match="environment variable name"):
        ClusterProfile.model_validate(data)


@pytest.mark.parametrize(("option", "value"), [("job_name", "sglang\n#SBATCH --wrap=id"),
                                               ("partition", "gpu\n#SBATCH --wrap=id"),
                                               ("partition", "gpu --wrap=id"),
                                               ("job_name", "a b")])
def test_submit_names_are_refused(option: str, value: str) -> None:
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.submit import SubmitRequest

    flag = "--name" if option == "job_name" else "--partition"
    job_name = value if option == "job_name" else "sglang"
    partition = value if option == "partition" else ""
    with pytest.raises(UserInputError, match=flag):
        SubmitRequest(profile=load_profile("tcp"), cluster="tcp", script_text="", script_args=(),
                      nodes=1, workspace="/tmp", job_name=job_name, partition=partition)


# ---- 9. protected sbatch options ----------------------------------------------------------------


@pytest.mark.parametrize(("directive", "protected"), [
    ("--ntasks-per-node=4", "--ntasks-per-node"), ("--nodes=1", "--nodes"),
    ("--output=/dev/null", "--output"), ("--ntasks-per=4", "--ntasks-per-node"),
    ("--job-name=x", "--job-name"), ("--gres=gpu:1", "--gres"), ("--partition=a", "--partition"),
])
def test_extra_directives_cannot_override_the_toolkits_own(tmp_path: Path, directive: str,
                                                            protected: str) -> None:
    from slurm_sglang.profile import ProfileError

    path = tmp_path / "mine.yaml"
    path.write_text("extends: tcp\nslurm:\n  extra_directives:\n    - --mem=0\n"
                    f"    - {directive}\n")
    with pytest.raises(ProfileError) as refused:
        load_profile(str(path))
    message = str(refused.value)
    assert f"{path}:5" in message and protected in message and directive in message


@pytest.mark.parametrize("directive", ["--mem=0", "--gpus=8", "--comment=ok", "--gres-flags=x"])
def test_other_extra_directives_still_pass(tmp_path: Path, directive: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: tcp\nslurm:\n  extra_directives:\n    - {directive}\n")
    assert load_profile(str(path)).slurm.extra_directives == [directive]


# ---- 7. bad profiles: limits, not timings -----------------------------------------------------


def _nested_aliases(lines: int, width: int) -> str:
    text = "a0: &a0 [" + ",".join("x" * width) + "]\n"
    for line in range(1, lines + 1):
        text += f"a{line}: &a{line} [" + ",".join([f"*a{line - 1}"] * width) + "]\n"
    return text


@pytest.mark.parametrize(("content", "expected"), [
    (_nested_aliases(8, 9).encode(), "expand to more than"),
    (("x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(101))).encode(), "more than 100 YAML"),
    (("a: " + "[" * 20000 + "]" * 20000 + "\n").encode(), "nested more than 100"),
    (b"name: x\xff\n", "not UTF-8"),
    (b"# " + b"x" * (1 << 20) + b"\n", "larger than 1024 KiB"),
    (b"extends: tcp\nslurm:\n  gpus_per_node: true\n", "gpus_per_node"),
])
def test_hostile_profile_files_get_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "slurm_sglang", "render", "--cluster",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr[-500:]


# ---- 2. secret and reserved flags by abbreviation ---------------------------------------------

SECRET_SPELLINGS = [["--api-k", "S3CRET"], ["--api-ke=S3CRET"], ["--admin-api-key", "S3CRET"],
                    ["--admin-api", "S3CRET"], ["--ssl-keyfile-password", "S3CRET"],
                    ["--ssl-keyfile-pass=S3CRET"]]


@pytest.mark.parametrize("flag", SECRET_SPELLINGS, ids=lambda flag: flag[0].split("=")[0])
def test_secret_flags_are_refused_by_prefix_in_check(flag: list[str]) -> None:
    from slurm_sglang.launch_plan import SpecError
    from slurm_sglang.sglang_flags import validate_argv

    with pytest.raises(SpecError) as refused:
        validate_argv(["--model-path", "m", *flag])
    assert "S3CRET" not in str(refused.value)
    assert "command line" in str(refused.value)


@pytest.mark.parametrize("flag", [*SECRET_SPELLINGS, ["--node-r", "1"], ["--hos", "0.0.0.0"]],
                         ids=lambda flag: flag[0].split("=")[0])
def test_secret_and_reserved_flags_are_refused_by_prefix_in_the_script(
        tmp_path: Path, flag: list[str]) -> None:
    from slurm_sglang.render import write_script

    script = tmp_path / "run.sbatch"
    write_script(render_script(load_profile("tcp")), script)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    done = subprocess.run(["bash", str(script), "--model-path", "m", *flag],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "S3CRET" not in done.stderr, done.stderr
    assert "command line" in done.stderr or "set by the launcher" in done.stderr, done.stderr


def test_api_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    from slurm_sglang import api
    from slurm_sglang.errors import UserInputError
    from slurm_sglang.render import write_script

    key = tmp_path / "key"
    key.write_text("k3y\n")
    key.chmod(0o644)
    script = tmp_path / "run.sbatch"
    write_script(render_script(load_profile("tcp")), script)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    done = subprocess.run(["bash", str(script), "--api-key-file", str(key), "--model-path", "m"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2 and "readable by group or others" in done.stderr, done.stderr
    with pytest.raises(UserInputError, match="readable by group or others"):
        api.submit(["--model-path", "m"], cluster="tcp", nodes=1, workspace=str(tmp_path),
                   api_key_file=str(key))
    key.chmod(0o600)
    done = subprocess.run(["bash", str(script), "--api-key-file", str(key), "--model-path", "m"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert "readable by group" not in done.stderr


# ---- 8. the key on redirects --------------------------------------------------------------------


def test_smoke_sends_no_key_across_a_redirect_to_another_origin() -> None:
    import http.server
    import threading

    from slurm_sglang.smoke import _Client

    seen: list[str | None] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    target = http.server.HTTPServer(("127.0.0.1", 0), Target)

    class Redirect(Target):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            where = (f"http://127.0.0.1:{target.server_port}" if self.path == "/away"
                     else f"http://127.0.0.1:{source.server_port}/same")
            self.send_header("Location", where)
            self.end_headers()

    class Both(Redirect):
        def do_GET(self) -> None:
            (Target.do_GET if self.path == "/same" else Redirect.do_GET)(self)

    source = http.server.HTTPServer(("127.0.0.1", 0), Both)
    for server in (target, source):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = _Client(f"http://127.0.0.1:{source.server_port}", "S3CRET", 10)
        client.call("/away")
        assert seen == ["Bearer S3CRET", None]
        seen.clear()
        client.call("/here")
        assert seen == ["Bearer S3CRET", "Bearer S3CRET"]
    finally:
        for server in (target, source):
            server.shutdown()




# ---- 5. --force beyond the job -------------------------------------------------------------------

FAKE_DOCKER = """#!/bin/bash
printf '%s\\n' "$*" >>"$CALLS"
case "$*" in
  "ps -aq --filter label=slurm-sglang.job=505") echo c-this ;;
  "ps -a --filter label=slurm-sglang.uid=$OWN_UID --format "*)
    printf 'map[slurm-sglang.job:%s slurm-sglang.uid:%s]\\n' 101 "$OWN_UID" 202 "$OWN_UID" ;;
  "ps -aq --filter label=slurm-sglang.job="[0-9]*" --filter label=slurm-sglang.uid=$OWN_UID")
    job=${4#label=slurm-sglang.job=}; echo "c-${job}" ;;
  "ps -aq --filter ancestor="*) [[ -z ${IN_USE:-} ]] || echo c-other-users-job ;;
  "image inspect"*) echo "sha256:${GOOD_ID}" ;;
esac
"""
FAKE_SQUEUE_FORCE = """#!/bin/bash
case $3 in 202) echo 202 ;; esac
"""


@pytest.mark.parametrize("in_use", [False, True], ids=["image-unused", "image-in-use"])
def test_force_removes_by_uid_and_never_an_image_in_use(tmp_path: Path, in_use: bool) -> None:
    script = _script(tmp_path)
    text = script.read_text()
    # The label comes from the kernel's uid, never from $USER (USER=bob removed bob's).
    assert "JOB_UID=$(id -u)" in text and "JOB_USER" not in text
    assert "slurm-sglang.user" not in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("squeue", FAKE_SQUEUE_FORCE)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    own_uid = str(os.getuid())
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "OWN_UID": own_uid,
           "GOOD_ID": GOOD_ID, "USER": "bob", **({"IN_USE": "1"} if in_use else {})}
    # What a node runs under --force, in prepare_node's order: the stale jobs' containers,
    # then image_ensure (this job's containers, then the image).
    body = ("CONTAINER_CLI=docker SLURM_JOB_ID=505 FORCE=1 IMAGE=good/sglang:1 "
            "IMAGE_REF=good/sglang:1 IMAGE_ID=; JOB_UID=$(id -u); stale_containers_remove; "
            "image_ensure\n")
    done = subprocess.run(["bash", "-c", PRELUDE + body, "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    made = calls.read_text().splitlines()
    assert not [c for c in made if c.startswith("rmi -f") or c.startswith("image rm -f")], made
    removed = [c for c in made if c.startswith("rm ")]
    # This job's and a gone job's containers go; the user's other running job (202) keeps its.
    assert removed == ["rm -f c-101", "rm -f c-this"], (made, done.stderr)
    assert all(f"uid={own_uid}" in c for c in made if "slurm-sglang.uid" in c)
    assert not [c for c in made if "bob" in c]
    if in_use:
        assert not [c for c in made if c.startswith("rmi")], made
        assert "kept" in done.stderr and "1 container(s) use it" in done.stderr
    else:
        assert "rmi good/sglang:1" in made, made


# ---- 6. the image-id cache ----------------------------------------------------------------------

GOOD_ID, EVIL_ID = "a" * 64, "b" * 64


def _tarball(folder: Path) -> Path:
    """An image tarball as docker save writes it, as far as identify_image reads it."""
    import io
    import json
    import tarfile

    path = folder / "images" / "sglang.tar"
    path.parent.mkdir(parents=True)
    manifest = json.dumps([{"Config": f"blobs/sha256/{GOOD_ID}",
                            "RepoTags": ["good/sglang:1"], "Layers": []}],
                          separators=(",", ":")).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    return path


IDENTIFY = 'IMAGE=$1 IMAGE_FILE=1; identify_image; echo "id=${IMAGE_ID} ref=${IMAGE_REF}"\n'


def test_a_forged_image_id_file_beside_the_tarball_is_not_trusted(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    info = tarball.stat()
    # What the old cache trusted: the tarball's size and mtime, written by anyone who can write
    # beside it.
    (tarball.parent / "sglang.tar.slurm-sglang-id").write_text(
        f"{info.st_size}:{int(info.st_mtime)} {EVIL_ID} docker.io/attacker/evil:latest\n")
    script = _script(tmp_path)
    cache_home = tmp_path / "cache"
    done = subprocess.run(["bash", "-c", PRELUDE + IDENTIFY, "test", str(script), str(tarball)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache_home)})
    assert f"id={GOOD_ID} ref=good/sglang:1" in done.stdout, done.stdout + done.stderr
    assert "evil" not in done.stdout
    # The cache it keeps is the user's own: a 0700 directory, a 0600 file.
    folder = cache_home / "slurm-sglang" / "image-ids"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (entry,) = folder.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert entry.read_text().split() == [GOOD_ID, "good/sglang:1"]


def test_the_private_image_id_cache_is_keyed_by_the_tarball_itself(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    script = _script(tmp_path)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def identify() -> str:
        return subprocess.run(["bash", "-c", PRELUDE + IDENTIFY, "test", str(script),
                               str(tarball)], capture_output=True, text=True, timeout=60,
                              check=False, env=env).stdout

    assert f"id={GOOD_ID}" in identify()
    (entry,) = (tmp_path / "cache" / "slurm-sglang" / "image-ids").iterdir()
    # The entry is what the next job reads (no decompressing the tarball again) ...
    entry.write_text(f"{EVIL_ID} mine/sglang:2\n")
    assert f"id={EVIL_ID} ref=mine/sglang:2" in identify()
    # ... until the tarball changes: a rewrite changes its ctime, which touch cannot set back.
    os.utime(tarball, (tarball.stat().st_atime, tarball.stat().st_mtime))
    assert f"id={GOOD_ID} ref=good/sglang:1" in identify()


# ---- 7. bad input: parallel sizes, bounds and ports ---------------------------------------------

CHECK = [sys.executable, "-m", "slurm_sglang", "check", "--no-sglang-parser"]
BAD_INPUT = {
    "tp-leading-zero": (["--", "--model-path", "m", "--tp", "08"], "--tp: '08'"),
    "tp-underscore": (["--", "--model-path", "m", "--tp", "1_6"], "--tp: '1_6'"),
    "tp-fullwidth": (["--", "--model-path", "m", "--tp", "\uff18"], "--tp: '\uff18'"),
    "tp-plus": (["--", "--model-path", "m", "--tp", "+8"], "--tp: '+8'"),
    "tp-10^26": (["--", "--model-path", "m", "--tp", "1" + "0" * 26], "--tp: '1000"),
    "tp-above-65536": (["--", "--model-path", "m", "--tp", "65537"], "from 1 to 65536"),
    "dp-above-65536": (["--", "--model-path", "m", "--dp", "65537"], "--dp: '65537'"),
    "model-path-empty": (["--", "--model-path", ""], "--model-path: the model path is empty"),
    "nodes-10^8": (["--nodes", "100000000", "--", "--model-path", "m", "--dp", "100000000"],
                   "--nodes: '100000000' is not a whole number from 1 to 10000"),
    "nodes-above-10000": (["--nodes", "10001", "--", "--model-path", "m"], "--nodes: '10001'"),
    "nodes-leading-zero": (["--nodes", "08", "--", "--model-path", "m"], "--nodes: '08'"),
    "gpus-per-node-above-64": (["--gpus-per-node", "65", "--", "--model-path", "m"],
                               "--gpus-per-node: '65'"),
    "ports-past-65535": (["--nodes", "5000", "--", "--model-path", "m", "--dp", "40000"],
                         "past 65535: lower --port"),
    "nodes-needed-above-10000": (["--", "--model-path", "m", "--tp", "65536", "--pp", "65536"],
                                 "is not from 1 to 10000"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=str)
def test_check_refuses_bad_sizes_and_bounds_in_one_line(case: str) -> None:
    argv, expected = BAD_INPUT[case]
    done = subprocess.run([*CHECK, *argv], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    reported = [line for line in (done.stderr + done.stdout).splitlines() if expected in line]
    assert len(reported) == 1, done.stdout + done.stderr


@pytest.mark.parametrize("argv, expected", [
    (["--nodes", "10001"], "--nodes: '10001'"),
    (["--port", "80"], "--port: 80 is not a TCP port (1024-65535)"),
], ids=["nodes", "port"])
def test_submit_refuses_out_of_bounds_before_anything(argv: list[str], expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", "slurm_sglang", "submit", *argv, "--",
                           "--model-path", "m"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr, done.stderr


@pytest.mark.parametrize("port", ["--port=80", "--dist-port=1023"])
def test_the_script_refuses_a_port_below_1024(tmp_path: Path, port: str) -> None:
    from slurm_sglang.render import write_script

    script = tmp_path / "run.sbatch"
    write_script(render_script(load_profile("tcp")), script)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    done = subprocess.run(["bash", str(script), port, "--model-path", "m"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "is not a TCP port (1024-65535)" in done.stderr, done.stderr


@pytest.mark.parametrize("options, sglang, expected", [
    (["--nodes", "100000000", "--gpus-per-node", "8"], ["--dp", "100000000"], "--dp: '100000000'"),
    (["--nodes", "100000000", "--gpus-per-node", "8"], [], "nodes: 100000000"),
    (["--nodes", "x"], [], "--nodes: 'x' is not a whole number"),
    (["--nodes", "1", "--gpus-per-node", "65"], [], "GPUs per node: 65"),
    (["--nodes", "1"], ["--port", "80"], "--port: 80 is not a TCP port"),
    (["--nodes", "1"], ["--port"], "--port needs a value"),
    (["--nodes", "4", "--gpus-per-node", "8"], ["--port", "65534", "--dp", "4"],
     "past 65535: lower --port to at most 65530"),
    # Inside an allocation too, what `check` refuses: sglang would stop on it after the queue.
    (["--nodes", "1", "--gpus-per-node", "8"], ["--quite", "--tp", "2"],
     "--quite: unknown flag, neither run.sbatch's nor sglang's; did you mean run.sbatch's "
     "--quiet?"),
    (["--nodes", "1", "--gpus-per-node", "8"], ["--tp-szie", "2"],
     "--tp-szie: unknown sglang flag; did you mean --tp-size?"),
    (["--nodes", "1", "--gpus-per-node", "8"], ["--attention-backend", "flashinferr"],
     "--attention-backend: invalid choice: 'flashinferr'"),
    # After `--`, --port is sglang's, which the rank's own --port would silently override.
    (["--nodes", "1", "--gpus-per-node", "8"], ["--", "--port", "30001"],
     "--port is set by the launcher"),
], ids=["dp-10^8", "nodes-10^8", "nodes-text", "gpus-65", "port-80", "port-missing",
        "replica-ports-past-65535", "misspelt-script-flag", "unknown-sglang-flag",
        "bad-choice", "sglang-port"])
def test_the_scripts_plan_refuses_in_one_line(tmp_path: Path, options: list[str],
                                              sglang: list[str], expected: str) -> None:
    # As the script runs it: python3 -I -S, the file alone beside its data.
    import slurm_sglang.launch_plan as launch_plan

    source = Path(launch_plan.__file__)
    shutil.copy(source, tmp_path / "launch_plan.py")
    shutil.copytree(source.parent / "data", tmp_path / "data")
    done = subprocess.run(["python3", "-I", "-S", str(tmp_path / "launch_plan.py"), "script",
                           *options, "--", "--model-path", "m", *sglang],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr and not done.stdout, done.stderr


# ---- 4. the router ------------------------------------------------------------------------------

ROUTER_VENV = Path("/var/lib/slurm-sglang-sandbox/shared/tools/sglang-router-0.3.2")


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


ROUTER_PROBE = r"""
PORT=$P ROUTER_METRICS_PORT=$M ROUTER_POLICY=round_robin HEALTH_TIMEOUT=60
REPLICAS=1 ROUTER_LOG=$OUT/router.log HEAD_IP=127.0.0.1
router_key_make
router_launch
url=http://127.0.0.1:$P
for ((i = 0; i < 200; i++)); do
  router_curl -sf -o /dev/null --max-time 1 "$url/workers" && break
  sleep 0.1
done
tr '\0' ' ' <"/proc/${ROUTER_PID}/cmdline" >"$OUT/cmdline"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
json=(-H 'Content-Type: application/json')
user=(-H "Authorization: Bearer ${SLURM_SGLANG_API_KEY:-none}")
echo "workers-without-key $(code -X POST "${json[@]}" -d '{"url": "http://h:9"}' "$url/workers")"
echo "workers-with-api-key $(code "${user[@]}" "$url/workers")"
echo "delete-without-key $(code -X DELETE "$url/workers/x")"
echo "workers-with-job-key $(router_curl -s -o /dev/null -w '%{http_code}' "$url/workers")"
echo "generate-without-key $(code "${json[@]}" -d '{"text": "hi"}' "$url/generate")"
echo "generate-with-api-key $(code "${user[@]}" "${json[@]}" -d '{"text": "hi"}' "$url/generate")"
router_kill
"""


@pytest.mark.parametrize("api_key", ["", "user-k3y"], ids=["no-api-key", "api-key"])
def test_the_router_needs_the_jobs_key_for_workers_and_the_api_key_for_users(
        tmp_path: Path, api_key: str) -> None:
    if not (ROUTER_VENV / "bin" / "python").exists():
        pytest.skip(f"no sglang-router venv at {ROUTER_VENV} (python -m slurm_sglang.sandbox "
                    "router makes it)")
    script = _script(tmp_path, router={"source": "venv", "venv": str(ROUTER_VENV)})
    port, metrics = _free_ports(2)
    env = {key: value for key, value in os.environ.items() if key != "SLURM_SGLANG_API_KEY"}
    env.update(P=str(port), M=str(metrics), OUT=str(tmp_path))
    if api_key:
        env["SLURM_SGLANG_API_KEY"] = api_key
    done = subprocess.run(["bash", "-c", PRELUDE + ROUTER_PROBE, "test", str(script)],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    codes = dict(line.split() for line in done.stdout.splitlines() if line.count(" ") == 1)
    log = (tmp_path / "router.log").read_text(errors="replace")[-2000:]
    assert codes.get("workers-with-job-key") == "200", (done.stdout, done.stderr, log)
    # Nobody without the job's key adds a worker (and so receives prompts) or removes one.
    assert codes["workers-without-key"] == "401" and codes["delete-without-key"] == "401"
    assert codes["workers-with-api-key"] == "401"
    if api_key:
        assert codes["generate-without-key"] == "401"
        assert codes["generate-with-api-key"] != "401"   # 503: no worker yet
    else:
        assert codes["generate-without-key"] != "401"
    # No key on the router's command line (ps shows it to every user of the node).
    cmdline = (tmp_path / "cmdline").read_text()
    assert "--control-plane-api-keys" not in cmdline and "user-k3y" not in cmdline, cmdline


def test_router_curl_passes_the_key_on_standard_input(tmp_path: Path) -> None:
    script = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text('#!/bin/bash\nprintf "%s\\n" "$*" >"$OUT/args"\n'
                                  'cat >"$OUT/stdin"\n')
    (bin_dir / "curl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "-c", PRELUDE + 'router_key_make; HEAD_IP=h PORT=1; '
                           'router_remove_worker w1; echo "$SLURM_SGLANG_ROUTER_KEY"\n',
                           "test", str(script)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    key = done.stdout.strip()
    assert len(key) == 64, done.stderr
    assert key not in (tmp_path / "args").read_text()
    assert f'header = "Authorization: Bearer {key}"' in (tmp_path / "stdin").read_text()


@pytest.mark.parametrize("api_key", ["", "k"], ids=["no-api-key", "api-key"])
def test_the_ready_line_and_check_say_when_the_endpoint_is_open(tmp_path: Path,
                                                                 api_key: str) -> None:
    script = _script(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "SLURM_SGLANG_API_KEY"}
    if api_key:
        env["SLURM_SGLANG_API_KEY"] = api_key
    done = subprocess.run(["bash", "-c", PRELUDE + "ready_line http://h:1\n", "test",
                           str(script)], capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    checked = subprocess.run([*CHECK, "--", "--model-path", "m"], capture_output=True,
                             text=True, timeout=60, check=False, env=env)
    if api_key:
        assert done.stdout == "ready: http://h:1\n"
        assert "warning:" not in checked.stdout
    else:
        assert done.stdout == ("ready: http://h:1 (no API key: open to anyone on the cluster "
                               "network)\n")
        assert "warning: no API key" in checked.stdout and "open to anyone on the cluster " \
            "network" in checked.stdout
