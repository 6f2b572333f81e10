"""The command that runs in a job's image on its head node, per runtime, and the bench runner
that uses it (srun faked: a transport that records what it was asked to run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from slurm_sglang.in_job import JobPlace, image_from_driver_log, image_id_argv, in_image_argv
from slurm_sglang.profile import ContainerSettings
from slurm_sglang.transport.base import CommandResult

STEP = ["srun", "--overlap", "--jobid=42", "--nodelist=n1", "--nodes=1", "--ntasks=1",
        "--export=ALL", "--job-name=slurm-sglang-bench", "--quiet"]


def _place(runtime: str, image: str = "img:1", **container: Any) -> JobPlace:
    settings = ContainerSettings.model_validate({"runtime": runtime, **container})
    return JobPlace("42", "n1", image, settings, "1000")


def test_podman_runs_the_image_on_the_host_network_with_env_by_name() -> None:
    argv = in_image_argv(_place("podman", mounts=["/fsx"]), ["python3", "-m", "x"],
                         mounts=["/out", "/venv:/venv:ro", "/out"], env_names=["OPENAI_API_KEY"],
                         workdir="/out")
    assert argv == [*STEP, "podman", "run", "--rm", "--net=host",
                    "--label", "slurm-sglang.job=42", "--label", "slurm-sglang.role=bench",
                    "--label", "slurm-sglang.uid=1000",
                    "-v", "/out:/out", "-v", "/venv:/venv:ro", "-v", "/fsx:/fsx",
                    "--env", "OPENAI_API_KEY", "--workdir", "/out", "img:1", "python3", "-m", "x"]


def test_enroot_runs_under_pyxis_in_the_same_step() -> None:
    argv = in_image_argv(_place("enroot", "/i/sglang.sqsh"), ["python3"], mounts=["/out"],
                         env_names=["OPENAI_API_KEY"], workdir="/out")
    assert argv == [*STEP, "--container-image=/i/sglang.sqsh", "--container-mounts=/out:/out",
                    "--container-workdir=/out", "python3"]


def test_apptainer_execs_the_sif() -> None:
    argv = in_image_argv(_place("apptainer", "/i/s.sif"), ["python3"], mounts=["/out", "/t"],
                         workdir="/out")
    assert argv == [*STEP, "apptainer", "exec", "--bind", "/out:/out,/t:/t", "--pwd", "/out",
                    "/i/s.sif", "python3"]


def test_none_runs_the_activate_lines_then_the_profiles_python() -> None:
    place = _place("none", "", activate=["source /v/bin/activate"], python="/v/bin/python")
    assert place.python == "/v/bin/python" and _place("podman").python == "python3"
    argv = in_image_argv(place, [place.python, "-m", "x"])
    assert argv == [*STEP, "bash", "-c", 'source /v/bin/activate\nexec "$@"', "bash",
                    "/v/bin/python", "-m", "x"]


def test_image_id_only_where_a_container_cli_keeps_images() -> None:
    assert image_id_argv(_place("docker")) == [*STEP, "docker", "image", "inspect", "--format",
                                               "{{.Id}}", "img:1"]
    assert image_id_argv(_place("enroot", "/i/s.sqsh")) is None


def test_the_image_comes_from_the_drivers_first_line() -> None:
    log = ("slurm-sglang: job 42: 2 node(s) [n1 n2], profile sandbox, image "
           "localhost/sglang-standin:abc, yours: GPUS=0,1\nready: http://x\n")
    assert image_from_driver_log(log) == "localhost/sglang-standin:abc"
    assert image_from_driver_log("job 42: 1 node(s) [n1], profile p, image /i/s.sif\n") == \
        "/i/s.sif"
    assert image_from_driver_log("nothing here\n") == ""


class RecordingTransport:
    """Records each command and its environment; answers as srun would on success."""

    def __init__(self) -> None:
        self.commands: list[tuple[list[str], dict[str, str]]] = []
        self.made: list[str] = []

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        self.commands.append((list(argv), dict(env or {})))
        return CommandResult(tuple(argv), 0, "", "")

    def makedirs(self, path: str) -> None:
        self.made.append(path)


def test_the_in_job_runner_sends_the_key_in_the_environment_only() -> None:
    from slurm_sglang.bench import BenchSettings
    from slurm_sglang.bench_job import _in_job_runner

    transport = RecordingTransport()
    runner = _in_job_runner(transport, _place("podman"), "/ws/logs/42/bench",  # type: ignore[arg-type]
                            BenchSettings(tokenizer="/models/tok"), ["/venv:/venv:ro"],
                            {"PYTHONPATH": "/venv/site"})
    runner(["-m", "sglang.benchmark.serving", "--base-url", "http://n1:30000"],
           {"OPENAI_API_KEY": "sekret", "PATH": "/bin", "API_KEY": "other"})
    ((argv, env),) = transport.commands
    assert transport.made == ["/ws/logs/42/bench"]
    assert env == {"OPENAI_API_KEY": "sekret", "PYTHONPATH": "/venv/site"}
    assert "sekret" not in " ".join(argv) and "/venv/site" not in " ".join(argv)
    assert argv[:2] == ["srun", "--overlap"]
    assert argv[argv.index("img:1"):] == ["img:1", "python3", "-m", "sglang.benchmark.serving",
                                          "--base-url", "http://n1:30000"]
    for bind in ("/ws/logs/42/bench:/ws/logs/42/bench", "/models/tok:/models/tok",
                 "/venv:/venv:ro"):
        assert argv[argv.index(bind) - 1] == "-v"
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--env"] == [
        "OPENAI_API_KEY", "PYTHONPATH"]


def test_a_job_whose_image_is_unknown_is_refused_in_one_line(tmp_path: Path) -> None:
    from slurm_sglang.bench import BenchSettings
    from slurm_sglang.bench_job import _in_job_runner
    from slurm_sglang.errors import UserInputError

    with pytest.raises(UserInputError, match=r"^--client job: job 42's driver log does not say"):
        _in_job_runner(RecordingTransport(), _place("podman", ""), str(tmp_path),  # type: ignore[arg-type]
                       BenchSettings(), [], {})
