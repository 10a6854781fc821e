"""Fixtures shared by the UI tests (imported by them; holds no tests of its own)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def demo_built(tmp_path_factory):
    """The demo model, built once per session in a child process (building imports torch)."""
    import os

    from .conftest import ROOT, _shared_cache

    cache = _shared_cache(tmp_path_factory)
    env = {**os.environ, "TUIWIZ_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tuiwiz", "demo"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return cache


@pytest.fixture
def ui_env(monkeypatch, tmp_path, demo_built):
    """A recorded machine, an empty Hugging Face cache, no animations: what the UI tests see."""
    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    hub = tmp_path / "hf-cache"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants

    # read once, when huggingface_hub is first imported: a worker may have imported it already
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    work = tmp_path / "work"
    work.mkdir()
    return work
