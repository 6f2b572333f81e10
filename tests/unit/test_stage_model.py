"""Model staging's rules without SLURM: the manifest, a node's copy, eviction, stale hub locks,
the --model-path rewrite and the progress the status reads (squeue and sbcast faked)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_sglang import launch_plan, stage_model
from slurm_sglang.jobs import read_progress

SOURCE = Path(stage_model.__file__).read_text()


def test_stage_model_is_python_3_6_and_stdlib_only() -> None:
    tree = ast.parse(SOURCE, feature_version=(3, 6))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "huggingface_hub":
            continue  # the download's alone, imported where it runs
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            assert name.split(".")[0] in sys.stdlib_module_names, name


@pytest.fixture
def squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake squeue printing the job ids in LIVE_JOBS (the user's jobs SLURM knows)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text('#!/bin/sh\ncat "$(dirname "$0")/live" 2>/dev/null\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "live"


def _model(folder: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * size)
    return folder


def _stage(tmp_path: Path, source: Path, target: Path, job: str, margin: int = 0,
           limit: int = 0) -> str:
    """One job's staging on one node: node, the broadcast (a copy), finish."""
    manifest = tmp_path / f"manifest-{job}"
    stage_model.manifest(str(source), str(manifest), False, str(tmp_path / "sums"))
    target.parent.mkdir(parents=True, exist_ok=True)
    stage_model.node(str(manifest), str(target), job, margin, limit)
    incoming = target.parent / f".incoming-{job}-{target.name}"
    for row in stage_model._read(str(manifest)):
        if int(row[0]):
            shutil.copyfile(source / row[3], incoming / row[3])
    stage_model.finish(str(manifest), str(target), job, str(time.time()))
    return str(manifest)


def test_a_copy_is_made_once_and_then_found_present(tmp_path: Path, squeue: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = _model(tmp_path / "src", {"config.json": 10, "w/model.safetensors": 1000,
                                       "empty": 0})
    target = tmp_path / "local" / "me" / "model-1"
    manifest = _stage(tmp_path, source, target, "11")
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "status=missing bytes=1010 evicted=none"
    assert out[2].startswith("bytes=1010 ")
    assert (target / "w" / "model.safetensors").stat().st_size == 1000
    assert (target / "empty").is_file()
    stage_model.node(manifest, str(target), "12", 0, 0)
    assert capsys.readouterr().out == "status=present bytes=1010\n"
    # A changed source (another size) is no match; jobs 11 and 12 are gone from SLURM.
    squeue.write_text("")
    (source / "config.json").write_bytes(b"y" * 11)
    stage_model.manifest(str(source), manifest, False, str(tmp_path / "sums"))
    stage_model.node(manifest, str(target), "13", 0, 0)
    assert "status=missing" in capsys.readouterr().out


def test_eviction_is_least_recently_used_and_spares_copies_in_use(
        tmp_path: Path, squeue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "local" / "me"
    for number, job in ((1, "21"), (2, "22"), (3, "23")):
        _stage(tmp_path, _model(tmp_path / f"src{number}", {"w": 1000}), root / f"m{number}", job)
        os.utime(root / f"m{number}" / stage_model.MANIFEST, (number, number))
    squeue.write_text("21\n")  # job 21 (m1, the oldest) still runs; 22 and 23 are gone
    capsys.readouterr()
    _stage(tmp_path, _model(tmp_path / "src4", {"w": 1000}), root / "m4", "24", limit=2500)
    assert "evicted=m2,m3" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["m1", "m4"]
    assert sorted(p.name for p in (root / ".jobs").iterdir()) == ["21", "24"]


def test_too_little_space_names_free_and_needed(tmp_path: Path, squeue: Path) -> None:
    source = _model(tmp_path / "src", {"w": 10})
    manifest = tmp_path / "manifest"
    stage_model.manifest(str(source), str(manifest), False, str(tmp_path / "sums"))
    (tmp_path / "local").mkdir()
    with pytest.raises(stage_model.Refused, match=r"GiB free in .*local, .* GiB needed"):
        stage_model.node(str(manifest), str(tmp_path / "local" / "m"), "31", 1 << 60, 0)


def test_checksums_catch_a_copy_that_arrived_changed(tmp_path: Path, squeue: Path) -> None:
    source = _model(tmp_path / "src", {"w": 100})
    manifest = tmp_path / "manifest"
    stage_model.manifest(str(source), str(manifest), True, str(tmp_path / "sums"))
    assert len(stage_model._read(str(manifest))[0][2]) == 64
    target = tmp_path / "local" / "m"
    target.parent.mkdir()
    stage_model.node(str(manifest), str(target), "41", 0, 0)
    (target.parent / ".incoming-41-m" / "w").write_bytes(b"z" * 100)
    with pytest.raises(stage_model.Refused, match="another sha256"):
        stage_model.finish(str(manifest), str(target), "41", str(time.time()))


def test_stale_hub_locks_go_only_when_their_job_is_gone(tmp_path: Path, squeue: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "slurm-sglang-job-51").touch()
    (locks / "abc.lock").touch()
    squeue.write_text("51\n")
    stage_model._clear_stale_locks(str(locks))
    assert (locks / "abc.lock").exists()
    squeue.write_text("")
    stage_model._clear_stale_locks(str(locks))
    assert list(locks.iterdir()) == []


def test_without_a_record_of_ours_no_lock_is_touched(tmp_path: Path, squeue: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "abc.lock").touch()
    stage_model._clear_stale_locks(str(locks))
    assert (locks / "abc.lock").exists()


@pytest.mark.parametrize("argv", [
    ["--model-path", "org/name", "--tp", "2"],
    ["--model-path=org/name", "--tp", "2"],
    ["--model", "org/name", "--tp", "2"],
])
def test_the_rank_argv_reads_the_staged_copy(argv: list[str]) -> None:
    request = launch_plan.LaunchRequest(argv=tuple(argv), nodes=2, gpus_per_node=1,
                                        stage_root="/local/me")
    result = launch_plan.launch(request)
    assert result.model_path == "org/name"
    assert result.staged_model.startswith("/local/me/name-")
    assert result.staged_model in " ".join(result.server_argv).replace("=", " ").split()
    assert "org/name" not in " ".join(result.server_argv)


def test_hub_ids_and_staged_names(tmp_path: Path) -> None:
    assert launch_plan.is_hub_id("Qwen/Qwen2.5-7B-Instruct")
    assert not launch_plan.is_hub_id("/models/qwen")
    assert not launch_plan.is_hub_id("./a/b")
    assert launch_plan.staged_path("/l/me", "/a/m") != launch_plan.staged_path("/l/me", "/b/m")


def test_progress_shows_bytes_and_rate_per_node() -> None:
    events = "\n".join([
        "10:00:00.000 node node=n1 rank=0 ip=1 iface=e gpus=0",
        "10:00:00.100 stage node=n1 rank=0 status=missing bytes=3221225472 evicted=none",
        "10:00:00.100 stage node=n2 rank=1 status=present bytes=3221225472",
        "10:00:01.000 stage-progress node=? rank=? nodes=2 bytes=1073741824 total=3221225472 "
        "rate=104857600",
    ])
    progress = read_progress(events)
    assert progress.phase == "staging the model: 1.0 GiB of 3.0 GiB sent, 100.0 MiB/s"
    progress = read_progress(events + "\n10:00:30.000 staged node=n1 rank=0 bytes=3221225472 "
                             "seconds=30.0 rate=107374182")
    assert progress.phase == ("model staged: n1 3.0 GiB at 102.4 MiB/s; 1 node(s) held a copy")


def _download(model: str, hf_home: Path) -> subprocess.CompletedProcess[str]:
    # -I -S: no site packages, as where huggingface_hub is not installed.
    env = {"PATH": os.environ["PATH"], "HF_HOME": str(hf_home)}
    return subprocess.run([sys.executable, "-I", "-S", stage_model.__file__, "download", model],
                          capture_output=True, text=True, env=env, check=False)


def test_without_huggingface_hub_a_cached_model_is_found_else_exit_3(tmp_path: Path) -> None:
    done = _download("org/name", tmp_path)
    assert done.returncode == 3 and "huggingface_hub is not importable" in done.stdout
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    done = _download("org/name", tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{snapshot}\n")
