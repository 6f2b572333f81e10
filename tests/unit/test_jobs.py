"""Job records and the status/phase readers, from recorded events.log lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_sglang.errors import UserInputError
from slurm_sglang.jobs import (
    JobRecord,
    JobStatus,
    find_record,
    list_records,
    parse_event,
    read_progress,
    save_record,
    status_from,
)

# Recorded from a 2-node run on the sandbox (logs/<jobid>/events.log).
RECORDED = """\
18:15:00.161 node node=sbn1 rank=0 ip=10.213.7.11 iface=eth0 gpus=none
18:15:00.194 node node=sbn2 rank=1 ip=10.213.7.12 iface=eth0 gpus=none
18:15:00.361 image node=sbn2 rank=1 status=present
18:15:00.377 ports node=sbn1 rank=0 http=30000 dist=20128
18:15:00.475 image node=sbn1 rank=0 status=present
18:15:00.693 rank-started node=sbn1 rank=0 ip=10.213.7.11 iface=eth0
18:15:00.773 rank-started node=sbn2 rank=1 ip=10.213.7.12 iface=eth0
18:15:02.933 loaded node=sbn2 rank=1
18:15:03.365 ready node=sbn1 rank=0 url=http://10.213.7.11:30000
"""


def _phases(text: str) -> list[str]:
    lines = text.splitlines()
    return [read_progress("\n".join(lines[:count])).phase for count in range(len(lines) + 1)]


def test_nodes_that_did_not_report_their_end() -> None:
    progress = read_progress(RECORDED + "18:16:00.000 rank-exit node=sbn1 rank=0 code=143 "
                             "stopped=1\n")
    assert progress.nodes_not_ended == ["sbn2"]


def test_phases_from_recorded_lines() -> None:
    phases = _phases(RECORDED)
    assert phases[0] == "starting"
    assert phases[2] == "preparing 2 nodes"
    assert phases[3] == "image on 1/2 nodes"
    assert phases[5] == "image on 2/2 nodes"
    assert phases[7] == "ranks started on 2/2 nodes, loading the model"
    assert phases[8] == "loading the model (2/2 nodes loaded)"
    assert phases[9] == "ready at http://10.213.7.11:30000"


def test_failures_are_collected_with_their_detail() -> None:
    text = RECORDED.split("18:15:02")[0] + (
        "18:15:04.000 rank-exit node=sbn2 rank=1 code=137\n"
        "18:15:04.010 log node=sbn2 rank=1 detail=Connection closed by peer rank=0\n"
        "18:15:04.100 rank-exit node=sbn1 rank=0 code=143 stopped=1\n"
        "18:15:04.200 preflight-failed node=sbn1 rank=0 check=model detail=/m is not readable\n")
    progress = read_progress(text)
    assert progress.nodes_started == {"sbn1", "sbn2"}
    assert progress.nodes_not_ended == []
    assert progress.failures == ["rank 1 on sbn2 exited with code 137",
                                 "sbn1: model: /m is not readable"]


def test_parse_event_keeps_free_text_detail() -> None:
    event = parse_event("10:00:00.000 log node=a rank=2 detail=x=1 y=2 spaces kept")
    assert event is not None
    assert (event.kind, event.node, event.rank, event.detail) == ("log", "a", "2",
                                                                 "x=1 y=2 spaces kept")
    assert parse_event("garbage") is None


@pytest.mark.parametrize(
    ("queue", "own", "status"),
    [
        ("PENDING", None, JobStatus.PENDING),
        ("PENDING", "ready", JobStatus.PENDING),
        ("RUNNING", None, JobStatus.STARTING),
        ("RUNNING", "preparing", JobStatus.PREPARING),
        ("RUNNING", "loading", JobStatus.LOADING),
        ("RUNNING", "ready", JobStatus.READY),
        (None, "ready", JobStatus.STOPPED),
        ("CANCELLED", "ready", JobStatus.STOPPED),
        (None, "failed", JobStatus.FAILED),
        ("NODE_FAIL", "loading", JobStatus.FAILED),
        ("TIMEOUT", None, JobStatus.STOPPED),
        (None, None, JobStatus.UNKNOWN),
    ],
)
def test_status_from(queue: str | None, own: str | None, status: JobStatus) -> None:
    assert status_from(queue, own) is status


def test_records_round_trip_and_latest_first(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_SGLANG_STATE_DIR", str(tmp_path))
    with pytest.raises(UserInputError, match="no jobs recorded"):
        find_record(None)
    older = JobRecord("7", "sandbox", "/w/logs/7", "/w/s", ["--tp", "2"], "2026-01-01T00:00:00")
    newer = JobRecord("9", "aws", "/w/logs/9", "/w/s", ["--x", "a b"], "2026-01-02T00:00:00",
                      host="login")
    save_record(older)
    save_record(newer)
    assert [r.job_id for r in list_records()] == ["9", "7"]
    assert find_record(None) == newer
    assert find_record("7") == older
    with pytest.raises(UserInputError, match=r"job 8: not recorded here \(recent: login:9, 7\)"):
        find_record("8")


def test_host_job_ids_keep_a_local_and_a_remote_job_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_SGLANG_STATE_DIR", str(tmp_path))
    local = JobRecord("47", "sandbox", "/w/logs/47", "/w/s", [], "2026-01-01T00:00:00")
    remote = JobRecord("47", "aws", "/r/logs/47", "/r/s", [], "2026-01-02T00:00:00",
                       host="user@login:2222")
    only_remote = JobRecord("48", "aws", "/r/logs/48", "/r/s", [], "2026-01-03T00:00:00",
                            host="login")
    for record in (local, remote, only_remote):
        save_record(record)
    assert (local.ref, remote.ref) == ("47", "user@login:2222:47")
    assert find_record("local:47") == local
    assert find_record("user@login:2222:47") == remote
    assert find_record("48") == find_record("login:48") == only_remote
    with pytest.raises(UserInputError, match=r"job 47: more than one host has it "
                       r"\(user@login:2222:47, local:47\); give HOST:JOB"):
        find_record("47")
    with pytest.raises(UserInputError, match="job other:48: not recorded"):
        find_record("other:48")


def test_every_failure_event_the_driver_writes_is_a_failure_line() -> None:
    # The events templates/partials/driver.sh.j2's on_event takes for failures, in its words.
    text = (
        "10:00:00.000 gpus-refused node=sbn1 rank=0 detail=GPUS=9 names GPU 9, which SLURM "
        "did not grant\n"
        "10:00:00.100 preflight-nccl node=sbn1 rank=0 code=1 detail=all_reduce hung\n"
        "10:00:00.150 preflight-nccl node=sbn2 rank=1 code=0 detail=passed\n"
        "10:00:01.000 health-timeout node=sbn2 rank=1 seconds=600\n"
        "10:00:01.100 rank-exit node=sbn2 rank=1 code=137 at=5\n"
        "10:00:02.000 lost node=sbn3 rank=2\n"
        "10:00:02.100 router-exit node=sbn1 rank=0 code=3\n"
        "10:00:02.200 replica-failed node=sbn1 rank=0 replica=1 reason=exit-on-replica-failure "
        "code=1\n"
        "10:00:02.300 replica-failed node=sbn4 rank=3 replica=2 reason=restarts-exhausted "
        "restarts=2\n"
        "10:00:03.000 sweep lost=sbn3\n"
        "10:00:03.100 rank-exit node=sbn1 rank=0 code=143 at=9\n"
        "10:00:03.200 step-ended name=ranks code=1\n")
    assert read_progress(text).failures == [
        "sbn1: GPUS refused: GPUS=9 names GPU 9, which SLURM did not grant",
        "sbn1: NCCL check failed (code 1): all_reduce hung",
        "sbn2 (rank 1): /health not 200 after 600 s",
        "rank 2 on sbn3: lost (SLURM says its node is gone)",
        "the router on sbn1 exited with code 3",
        "replica 1 failed on sbn1 (exit code 1); --exit-on-replica-failure ends the job",
        "replica 2 on sbn4 stays down: it failed again after 2 restart(s)",
        "rank 0 on sbn1 exited with code 143 (after the cleanup began)",
    ]
