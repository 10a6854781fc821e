"""Snapshot SVGs of every screen at 80x24 and 140x40: recorded machines, fixed runs, a fixed clock.

Update after an intended change with: pytest tests/test_ui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import os

import pytest

from .support.scenes import SCENES, scene_environment, stop_sleepers
from .support.testing import settle

SIZES = {"80x24": (80, 24), "140x40": (140, 40)}


@pytest.fixture
def scene_env(monkeypatch, tmp_path, demo_built):
    def use(name: str):
        for key, value in scene_environment(SCENES[name].hardware, tmp_path).items():
            monkeypatch.setenv(key, value)
        import huggingface_hub.constants

        # read once, when huggingface_hub is first imported: a worker may have imported it already
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", os.environ["HF_HUB_CACHE"])
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        monkeypatch.chdir(work)
        return work

    yield use
    stop_sleepers()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCENES)
def test_screen_snapshot(name, size, scene_env, snap_compare):
    work = scene_env(name)
    app, ready = SCENES[name].build(work)

    async def settled(pilot) -> None:
        await ready(pilot)
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=settled)
