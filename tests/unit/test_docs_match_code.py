"""The user-facing docs against the code: every flag `run.sbatch --help` lists and every CLI
verb is documented, the README links the guides, and requeue and the image are explained."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from slurm_sglang.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
USER_GUIDE = (ROOT / "docs" / "user-guide.md").read_text()
IMAGE_DOC = (ROOT / "docs" / "image.md").read_text()


def _script_flags() -> list[str]:
    done = subprocess.run(["bash", str(ROOT / "sbatch" / "run.sbatch"), "--help"],
                          capture_output=True, text=True, check=True)
    return re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", done.stdout, flags=re.MULTILINE)


def test_the_readme_links_the_user_guide_and_the_image_page() -> None:
    assert "(docs/user-guide.md)" in README
    assert "(docs/image.md)" in README
    assert "(image.md)" in USER_GUIDE


@pytest.mark.parametrize("flag", _script_flags())
def test_every_script_flag_is_in_the_user_guide_and_the_readme(flag: str) -> None:
    assert re.search(rf"`(?:-\w, )?{re.escape(flag)}\b", USER_GUIDE), (
        f"{flag} missing from docs/user-guide.md's flag table")
    if flag != "--help":
        assert re.search(rf"`(?:-\w/)?{re.escape(flag)}`", README), f"{flag} missing from README"


def _verbs() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no verbs")


@pytest.mark.parametrize("verb", [verb for verb in _verbs() if verb != "sandbox"])
def test_every_verb_is_in_the_user_guide(verb: str) -> None:
    # sandbox is for this repository's tests, documented in docs/sandbox.md.
    assert re.search(rf"`{verb}[ `]", USER_GUIDE), f"verb {verb} missing from the user guide"


def test_requeue_is_explained_for_users() -> None:
    section = USER_GUIDE.split("### Requeue", 1)[1].split("\n### ", 1)[0]
    assert "requeue: true" in section
    assert "sbatch --requeue" in section
    assert "submit --cluster requeue.yaml" in section


def test_the_image_page_has_the_commands_by_hand_and_the_verb() -> None:
    for command in (
        "docker pull lmsysorg/sglang:latest",
        "docker save lmsysorg/sglang:latest | pigz > sglang-serve-latest.tar.gz",
        "podman pull docker.io/lmsysorg/sglang:latest",
        "podman save docker.io/lmsysorg/sglang:latest | pigz > sglang-serve-latest.tar.gz",
        "python -m slurm_sglang image save lmsysorg/sglang:latest",
    ):
        assert command in IMAGE_DOC, command
