"""`slurm-sglang image save` against a fake docker on PATH: the commands it runs, the file it
writes (compressed as named, whole or not at all), and each refusal as one line with exit 2."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from slurm_sglang import cli
from slurm_sglang.image import compressor_argv

# The fake answers the four commands image save uses. It logs each argv as one line; images
# it "has" are lines of $FAKE_DIR/present; FAKE_FAIL=pull|save makes that command fail (save
# after writing part of a tarball, as a full disk or a killed daemon would).
FAKE_CLI = textwrap.dedent("""\
    #!/bin/sh
    echo "$*" >> "$FAKE_DIR/argv"
    case "$1 $2" in
      "image inspect")
        if grep -qxF "$5" "$FAKE_DIR/present" 2>/dev/null; then
          echo "sha256:feedc0de$(printf %s "$5" | wc -c)"; exit 0
        fi
        echo "Error: No such image: $5" >&2; exit 1 ;;
    esac
    case "$1" in
      pull)
        if [ "$FAKE_FAIL" = pull ]; then
          echo "Error: pull access denied for $2" >&2; exit 1
        fi
        echo "pulling $2 ... done"
        echo "$2" >> "$FAKE_DIR/present"; exit 0 ;;
      save)
        printf 'tarball of %s\\n' "$2"
        if [ "$FAKE_FAIL" = save ]; then
          echo "Error: writing blob: no space left on device" >&2; exit 1
        fi
        exit 0 ;;
    esac
    echo "fake docker: unexpected $*" >&2; exit 99
    """)
REF = "lmsysorg/sglang:v0.5.23"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `docker` first on PATH; returns its state directory."""
    state = tmp_path / "fake"
    state.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_CLI)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(state))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return state


def _calls(state: Path) -> list[str]:
    log = state / "argv"
    return log.read_text().splitlines() if log.exists() else []


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["image", "save", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".part"))


def test_missing_image_is_pulled_then_saved_through_pigz(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "sglang-serve-latest.tar.gz"
    code, out, err = _run(capsys, REF, "-o", str(output))
    assert code == 0, err
    inspect = f"image inspect --format {{{{.Id}}}} {REF}"
    assert _calls(fake) == [inspect, f"pull {REF}", inspect, f"save {REF}"]
    assert gzip.decompress(output.read_bytes()) == f"tarball of {REF}\n".encode()
    size = output.stat().st_size
    assert f"wrote {output}" in out
    assert f"({size} bytes)" in out
    assert f"image ID: sha256:feedc0de{len(REF)}" in out
    assert "pulled" in out
    expected_compressor = "pigz" if shutil.which("pigz") else "gzip"
    assert f"docker save {REF} | {expected_compressor} > {output}" in err
    assert _leftovers(tmp_path) == []


def test_present_image_is_not_pulled_unless_asked(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake / "present").write_text(f"{REF}\n")
    code, _, err = _run(capsys, REF, "-o", str(tmp_path / "a.tar.gz"))
    assert code == 0, err
    assert not any(call.startswith("pull") for call in _calls(fake))
    code, _, err = _run(capsys, REF, "-o", str(tmp_path / "b.tar.gz"), "--pull")
    assert code == 0, err
    assert [call for call in _calls(fake) if call.startswith("pull")] == [f"pull {REF}"]


def test_plain_tar_and_zstd_follow_the_name(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake / "present").write_text(f"{REF}\n")
    plain = tmp_path / "image.tar"
    assert _run(capsys, REF, "-o", str(plain))[0] == 0
    assert plain.read_bytes() == f"tarball of {REF}\n".encode()
    if not shutil.which("zstd"):
        pytest.skip("zstd not installed: apt-get install zstd")
    packed = tmp_path / "image.tar.zst"
    code, out, err = _run(capsys, REF, "-o", str(packed), "--json")
    assert code == 0, err
    assert json.loads(out)["compressor"] == "zstd"
    assert subprocess.run(["zstd", "-dc", str(packed)], capture_output=True,
                          check=True).stdout == f"tarball of {REF}\n".encode()


def test_gzip_when_pigz_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_gzip = tmp_path / "bin"
    only_gzip.mkdir()
    gzip_path = shutil.which("gzip")
    assert gzip_path
    (only_gzip / "gzip").symlink_to(gzip_path)
    monkeypatch.setenv("PATH", str(only_gzip))
    assert compressor_argv("gzip") == [str(only_gzip / "gzip"), "-c"]


def test_failed_save_leaves_no_file(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (fake / "present").write_text(f"{REF}\n")
    monkeypatch.setenv("FAKE_FAIL", "save")
    output = tmp_path / "sglang-serve-latest.tar.gz"
    code, _, err = _run(capsys, REF, "-o", str(output))
    assert code == 1
    assert err.splitlines()[-1] == (f"slurm-sglang: docker save {REF} failed: Error: writing "
                                    "blob: no space left on device")
    assert "Traceback" not in err
    assert not output.exists()
    assert _leftovers(tmp_path) == []


def test_failed_pull_names_the_registry(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "pull")
    output = tmp_path / "x.tar.gz"
    code, _, err = _run(capsys, REF, "-o", str(output))
    assert code == 1
    assert f"docker pull {REF} failed: Error: pull access denied" in err
    assert not output.exists()


def test_existing_file_is_refused_then_replaced_with_force(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake / "present").write_text(f"{REF}\n")
    output = tmp_path / "sglang-serve-latest.tar.gz"
    output.write_text("an older image")
    code, _, err = _run(capsys, REF, "-o", str(output))
    assert code == 2
    assert err == (f"slurm-sglang: error: -o {output} exists: remove it, choose another name "
                   "or pass --force\n")
    assert output.read_text() == "an older image"
    assert _calls(fake) == []
    assert _run(capsys, REF, "-o", str(output), "--force")[0] == 0
    assert gzip.decompress(output.read_bytes()) == f"tarball of {REF}\n".encode()


def _profile(tmp_path: Path, runtime: str) -> str:
    path = tmp_path / f"{runtime}.yaml"
    path.write_text(f"extends: default\ncontainer:\n  runtime: {runtime}\n")
    return str(path)


@pytest.mark.parametrize(("runtime", "instead"), [
    ("enroot", "enroot import -o sglang.sqsh docker://REF"),
    ("apptainer", "apptainer build sglang.sif docker://REF"),
    ("none", "no image is needed"),
])
def test_runtime_without_save_is_refused(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], runtime: str,
        instead: str) -> None:
    output = tmp_path / "x.tar.gz"
    code, _, err = _run(capsys, REF, "-o", str(output), "--cluster", _profile(tmp_path, runtime))
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"runs containers with {runtime}, which has no docker-style save" in err
    assert instead in err
    assert "--container-cli docker|podman" in err
    assert _calls(fake) == []
    assert not output.exists()


def test_container_cli_overrides_the_profile_runtime(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake / "present").write_text(f"{REF}\n")
    code, _, err = _run(capsys, REF, "-o", str(tmp_path / "x.tar.gz"), "--cluster",
                        _profile(tmp_path, "enroot"), "--container-cli", "docker")
    assert code == 0, err
    assert _calls(fake)[-1] == f"save {REF}"


def test_no_container_cli_on_path_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = _run(capsys, REF, "-o", str(tmp_path / "x.tar"), "--cluster", "sandbox")
    assert code == 2
    assert err == ("slurm-sglang: error: podman not found on PATH: install it, or pass "
                   "--container-cli docker where that is installed\n")


def test_a_name_run_sbatch_cannot_load_is_refused(
        fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, REF, "-o", str(tmp_path / "image.zip"))
    assert code == 2
    assert "name it .tar.gz (default), .tar.zst or .tar" in err
    assert _calls(fake) == []
