"""The control plane's loops against a fake scheduler and a fake clock (tests/unit/fake_slurm.py):
submit, follow, requeue, cancel, squeue and sacct failures, lost jobs, logs and the watch, in
milliseconds. The sandbox tests (tests/integration) stay the proof against real SLURM."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_sglang import api, render
from slurm_sglang.jobs import JobRecord, JobStatus
from slurm_sglang.profile import ClusterProfile
from slurm_sglang.scheduler import Backoff, read_queue
from slurm_sglang.submit import SubmitRequest, submit_remote
from tests.unit.fake_slurm import FakeClock, FakeSlurm


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slurm(tmp_path: Path, clock: FakeClock) -> FakeSlurm:
    return FakeSlurm(tmp_path, clock)


def _submit(slurm: FakeSlurm) -> JobRecord:
    workspace = slurm.root / "ws"
    workspace.mkdir(exist_ok=True)
    request = SubmitRequest(profile=ClusterProfile(), cluster="default",
                            script_text="#!/bin/bash\n", script_args=("--", "--model-path", "m"),
                            nodes=2, workspace=str(workspace))
    return submit_remote(request, slurm, "login")


def test_submit_then_follow_sees_every_phase_until_ready(slurm: FakeSlurm,
                                                         clock: FakeClock) -> None:
    record = _submit(slurm)
    assert (record.job_id, record.ref) == ("47", "login:47")
    assert slurm.jobs["47"].argv[:2] == ("sbatch", "--parsable")
    seen: list[str] = []
    view = api.follow(record, lambda view: seen.append(view.status.value), transport=slurm,
                      clock=clock)
    assert view.status is JobStatus.READY and view.url == "http://node1:30000"
    assert seen == ["pending", "starting", "preparing", "loading", "ready"]
    assert clock.now - slurm.jobs["47"].submitted == pytest.approx(9.0)


def test_follow_gives_up_at_its_timeout_and_returns_the_last_view(slurm: FakeSlurm,
                                                                  clock: FakeClock) -> None:
    record = _submit(slurm)
    view = api.follow(record, timeout=4.0, transport=slurm, clock=clock)
    assert view.status is JobStatus.PREPARING
    with pytest.raises(api.JobError, match="job login:47 loading: ranks started on 2/2 nodes, "
                                           "loading the model; driver log: "):
        api.wait_ready(record, timeout=0.1, transport=slurm, clock=clock)


def test_a_requeued_job_reads_pending_then_serves_again(slurm: FakeSlurm,
                                                        clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.requeue("47")
    # The state file still says ready from the first run: SLURM's PENDING wins.
    assert api.job_view(record, slurm, clock=clock).status is JobStatus.PENDING
    view = api.follow(record, transport=slurm, clock=clock)
    assert view.status is JobStatus.READY and slurm.jobs["47"].runs == 2


def test_cancel_waits_for_slurm_and_every_node(slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    cancelled = api.cancel(record, transport=slurm, clock=clock)
    assert cancelled.ok, cancelled.text()
    assert cancelled.view.status is JobStatus.STOPPED
    assert cancelled.view.queue.source == "sacct" and cancelled.view.queue.state == "CANCELLED"
    assert cancelled.text() == ("job login:47 cancelled (stopped); 2 node(s) confirmed their "
                                "ranks ended and their containers are gone")
    assert ("scancel", "47") in slurm.calls


def test_a_squeue_blip_is_retried_with_backoff(slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.fail("squeue", 2)
    clock.sleeps.clear()
    view = api.job_view(record, slurm, clock=clock)
    assert view.status is JobStatus.READY and view.queue.known
    assert clock.sleeps == [0.5, 1.0]


def test_a_failed_squeue_is_unknown_with_its_error_never_stopped(slurm: FakeSlurm,
                                                                 clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.fail("squeue", 12)  # three views' worth: four attempts each
    view = api.job_view(record, slurm, clock=clock)
    assert view.status is JobStatus.UNKNOWN
    assert view.queue.error == ("squeue failed (exit 1): slurm_load_jobs error: Unable to "
                                "contact slurm controller (connect failure)")
    assert "Unable to contact" in view.to_dict()["queue"]["error"]  # type: ignore[index]
    # follow polls through it (the job may serve on) until its timeout, never calling it ended.
    seen: list[JobStatus] = []
    last = api.follow(record, lambda view: seen.append(view.status), timeout=20, transport=slurm,
                      clock=clock)
    assert JobStatus.STOPPED not in seen and last.status is JobStatus.READY
    assert seen == [JobStatus.UNKNOWN, JobStatus.READY]


def test_a_lost_job_reads_failed_from_sacct_with_its_reason(slurm: FakeSlurm,
                                                            clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.lose("47")
    view = api.job_view(record, slurm, clock=clock)
    assert view.status is JobStatus.FAILED
    assert (view.queue.source, view.queue.state, view.queue.reason) == (
        "sacct", "NODE_FAIL", "NodeFail")
    assert "SLURM: NODE_FAIL exit 0:9 reason NodeFail" in view.text()


def test_without_accounting_a_lost_job_reads_its_own_state_file(tmp_path: Path,
                                                                clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, accounting=False)
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.lose("47")
    # No sacct: slurmctld's own record of the ended job says what happened to it.
    view = api.job_view(record, slurm, clock=clock)
    assert (view.status, view.queue.source, view.queue.state) == (
        JobStatus.FAILED, "scontrol", "NODE_FAIL")
    slurm.forget("47")
    view = api.job_view(record, slurm, clock=clock)
    # The state file says ready, but a job SLURM forgot runs nowhere.
    assert view.status is JobStatus.STOPPED and view.queue.source == "none"


def test_a_failed_sacct_is_unknown(slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.lose("47")
    slurm.fail("sacct", 10, "sacct: error: slurmdbd: Connection refused\n")
    view = api.job_view(record, slurm, clock=clock)
    assert view.status is JobStatus.UNKNOWN
    assert view.queue.error.startswith("sacct failed (exit 1): sacct: error: slurmdbd")


def test_a_job_that_fails_is_followed_to_its_end(tmp_path: Path, clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, life=((1.0, "start"), (2.0, "load"), (4.0, "fail")))
    record = _submit(slurm)
    view = api.follow(record, transport=slurm, clock=clock)
    assert view.status is JobStatus.FAILED
    assert view.progress.failures == ["rank 1 on node2 exited with code 1"]
    assert "rank 1 on node2 exited with code 1" in view.outcome_text()


def test_read_queue_asks_sacct_only_once_squeue_forgot_the_job(slurm: FakeSlurm,
                                                               clock: FakeClock) -> None:
    _submit(slurm)
    assert read_queue(slurm, "47", clock=clock).state == "PENDING"
    assert not [call for call in slurm.calls if call[0] == "sacct"]
    slurm.lose("47", "TIMEOUT", "TimeLimit")
    reading = read_queue(slurm, "47", clock=clock, backoff=Backoff(attempts=1))
    assert (reading.source, reading.state, reading.reason) == ("sacct", "TIMEOUT", "TimeLimit")


def test_logs_follow_reads_until_the_job_ends(slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    api.follow(record, transport=slurm, clock=clock)
    slurm.jobs["47"].steps = [(clock.now + 3.0, "fail")]
    chunks: list[str] = []
    api.logs(record, chunks.append, follow=True, transport=slurm, clock=clock)
    assert "".join(chunks) == "run 1 started\nready: http://node1:30000\n"


def test_watch_shows_frames_until_the_job_finishes(slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    frames: list[api.Frame] = []
    slurm.life = ()
    slurm.jobs["47"].steps += [(clock.now + 12.0, "fail")]
    last = api.watch(record, frames.append, interval=2.0, transport=slurm, clock=clock)
    assert last.last and frames[-1] is last
    assert [frame.reading.view.status.value for frame in frames][:2] == ["pending", "starting"]
    assert frames[-1].to_dict()["status"] == "failed"


def test_api_submit_records_the_job_under_its_host(slurm: FakeSlurm, clock: FakeClock,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_SGLANG_STATE_DIR", str(slurm.root / "state"))
    record = api.submit(["--model-path", "m", "--tp", "2"], nodes=1, ssh="login",
                        workspace=str(slurm.root / "ws"), transport=slurm)
    assert api.find_job("login:47") == record
    assert api.list_jobs().to_dict()[0]["id"] == "login:47"
    sbatch = slurm.jobs["47"].argv
    assert sbatch[sbatch.index("--") + 1:] == ("--model-path", "m", "--tp", "2")
    assert api.wait_ready(record, transport=slurm, clock=clock).status is JobStatus.READY


def test_slurm_refusing_a_request_is_the_clusters_error_or_the_users(
        slurm: FakeSlurm, clock: FakeClock) -> None:
    record = _submit(slurm)
    slurm.fail("scancel", 1, "scancel: error: Kill job error on job id 47: Access denied\n")
    with pytest.raises(api.ClusterError, match=r"scancel failed \(exit 1\): .*Access denied"):
        api.cancel(record, transport=slurm, clock=clock)
    slurm.fail("sbatch", 1, "sbatch: error: Batch job submission failed: Invalid partition\n")
    with pytest.raises(api.UserInputError, match="sbatch on login refused the job: Batch job "
                       "submission failed: Invalid partition"):
        _submit(slurm)
    slurm.fail("sbatch", 1, "", code=0)
    with pytest.raises(api.ClusterError, match="sbatch on login answered '', not a job id"):
        _submit(slurm)


def test_each_version_of_the_support_files_keeps_its_own_directory(
        slurm: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Path(_submit(slurm).script).parent
    plan_file = first / "slurm-sglang" / "launch_plan.py"
    written = plan_file.stat().st_mtime_ns
    # The same version again: the same directory, its files left as they were.
    assert Path(_submit(slurm).script).parent == first
    assert plan_file.stat().st_mtime_ns == written
    # A newer slurm-sglang submitting while the first job waits: a directory of its own.
    newer = [(name, text + "# newer\n") for name, text in render.support_files()]
    monkeypatch.setattr(render, "support_files", lambda: newer)
    second = Path(_submit(slurm).script).parent
    assert second != first and second.parent == first.parent
    assert (second / "slurm-sglang" / "launch_plan.py").read_text().endswith("# newer\n")
    assert not plan_file.read_text().endswith("# newer\n")


def test_a_job_that_died_before_its_script_ran_reads_failed_from_scontrol(
        tmp_path: Path, clock: FakeClock) -> None:
    # No accounting, no state file: the batch shell could not start the driver (exit 127).
    slurm = FakeSlurm(tmp_path, clock, accounting=False, life=())
    record = _submit(slurm)
    slurm.die_before_script("47")
    view = api.follow(record, timeout=60, transport=slurm, clock=clock)
    assert (view.status, view.queue.source, view.queue.exit_code) == (
        JobStatus.FAILED, "scontrol", "127:0")
    why = f"FAILED, exit 127 before the script ran: see the driver log {record.driver_log}"
    assert view.why == why
    assert view.text().splitlines()[0] == f"job login:47: failed ({why})"
    assert view.outcome_text() == f"job login:47 failed: {why}"
    assert ("scontrol", "show", "job", "-o", "47") in slurm.calls


def test_a_job_cancelled_while_pending_ends_the_follow_with_why(tmp_path: Path,
                                                               clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, accounting=False, life=())
    record = _submit(slurm)
    slurm.jobs["47"].reason = "Resources"
    assert api.job_view(record, slurm, clock=clock).phase == "queued (PENDING: Resources)"
    slurm.run(["scancel", "47"])
    view = api.follow(record, timeout=60, transport=slurm, clock=clock)
    # squeue's last word ends the follow; slurmctld's record then adds the exit code.
    assert view.status is JobStatus.STOPPED and view.queue.state == "CANCELLED"
    assert view.why == f"CANCELLED before the script ran: see the driver log {record.driver_log}"
    clock.sleep(1.0)
    view = api.job_view(record, slurm, clock=clock)
    assert view.queue.source == "scontrol"
    assert view.why == ("CANCELLED, signal 15 before the script ran: see the driver log "
                        f"{record.driver_log}")


def test_a_job_no_source_knows_is_unknown_naming_the_sources_and_not_followed_forever(
        tmp_path: Path, clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, accounting=False, life=())
    record = _submit(slurm)
    slurm.die_before_script("47")
    slurm.forget("47")
    view = api.follow(record, timeout=60, transport=slurm, clock=clock)
    assert view.status is JobStatus.UNKNOWN and view.queue.forgotten
    assert view.why == (
        "no source knows the job (squeue: not listed; sacct: accounting storage is disabled; "
        "scontrol: no such job (it keeps ended jobs for MinJobAge, 300 s by default)) and it "
        f"wrote no state file in {record.log_dir}")
    assert view.outcome_text().startswith(f"job login:47 unknown: {view.why}")


def test_a_scontrol_that_fails_is_unknown_with_its_error(tmp_path: Path,
                                                         clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, accounting=False, life=())
    record = _submit(slurm)
    slurm.die_before_script("47")
    slurm.fail("scontrol", 4)
    view = api.job_view(record, slurm, clock=clock)
    assert view.status is JobStatus.UNKNOWN and not view.queue.forgotten
    assert view.queue.error.startswith("scontrol failed (exit 1): slurm_load_jobs error: Unable")


def test_a_pending_job_shows_squeues_reason_as_it_changes(tmp_path: Path,
                                                          clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, life=((1.0, "reason:Priority"), (2.0, "start")))
    record = _submit(slurm)
    slurm.jobs["47"].reason = "PartitionNodeLimit"
    phases: list[str] = []
    api.follow(record, lambda view: phases.append(view.phase), timeout=1.2, transport=slurm,
               clock=clock)
    assert phases == ["queued (PENDING: PartitionNodeLimit)", "queued (PENDING: Priority)"]
    clock.sleep(1.0)
    assert api.job_view(record, slurm, clock=clock).to_dict()["queue"] == {
        "source": "squeue", "state": "RUNNING", "exit_code": "", "reason": "", "error": "",
        "asked": ""}


def test_a_node_refusing_gpus_is_the_failure_submit_and_status_show(tmp_path: Path,
                                                                    clock: FakeClock) -> None:
    slurm = FakeSlurm(tmp_path, clock, life=((1.0, "start"), (2.0, "refuse")))
    record = _submit(slurm)
    view = api.follow(record, timeout=60, transport=slurm, clock=clock)
    refused = ("node1: GPUS refused: GPUS=9 names GPU 9, which SLURM did not grant "
               "(granted: 0,1)")
    assert view.status is JobStatus.FAILED and view.why == refused
    assert view.text().splitlines()[0] == f"job login:47: failed ({refused})"
    assert view.outcome_text().splitlines()[0] == f"job login:47 failed: {refused}"
