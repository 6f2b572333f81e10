"""One way to run a program here: the sandbox's `run` goes through transport.local.run_local,
the runner LocalTransport uses, with its logging, 127 for a missing program and its timeout."""

from __future__ import annotations

import logging

import pytest

from slurm_sglang.sandbox import host
from slurm_sglang.sandbox.image import run_pipeline
from slurm_sglang.transport import CommandTimeoutError
from slurm_sglang.transport.local import run_local


def test_the_sandbox_runs_commands_through_the_local_runner(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="slurm_sglang.transport")
    monkeypatch.setenv("KEPT", "same")
    done = host.run(["sh", "-c", 'echo "$ADDED $KEPT"'], env={"ADDED": "yes", "KEPT": "same"})
    assert (done.returncode, done.stdout) == (0, "yes same\n")
    assert "local: sh -c" in caplog.text  # the runner's log line, not a second wrapper's


def test_a_failure_is_a_sandbox_error_with_code_and_output() -> None:
    with pytest.raises(host.SandboxError, match=r"command failed \(exit 3\): sh -c"):
        host.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert host.run(["no-such-program-here"], check=False).returncode == 127
    with pytest.raises(CommandTimeoutError):
        run_local(["sleep", "5"], timeout=0.2)


def test_a_pipeline_reports_the_first_failing_stage() -> None:
    assert run_pipeline([["printf", "a\\nb\\n"], ["wc", "-l"]]).strip() == "2"
    with pytest.raises(host.SandboxError, match="pipeline failed"):
        run_pipeline([["false"], ["cat"]])
