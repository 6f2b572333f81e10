"""The sandbox's image cache keeps the newest few of each image, and only of that image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_sglang.sandbox import image


def test_pruning_the_stand_in_keeps_the_router_image(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = image.cache_dir()
    cache.mkdir(parents=True)
    router = cache / f"sglang-standin-router-{'a' * image.KEY_LENGTH}.tar.gz"
    standins = [cache / f"sglang-standin-{number:0{image.KEY_LENGTH}d}.tar.gz"
                for number in range(5)]
    # The router image is the oldest of all.
    for age, path in enumerate([router, *standins]):
        path.write_text("x")
        os.utime(path, (1000 + age, 1000 + age))
    image._prune_old_images("sglang-standin", keep=3)
    assert sorted(path.name for path in cache.iterdir()) == sorted(
        [router.name, *(path.name for path in standins[2:])])
