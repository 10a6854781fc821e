"""Fixtures any test may ask for; the plain helpers the tests share are in tests/support/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own registry; the demo cache is shared per session (it is deterministic)."""
    monkeypatch.setenv("TUIWIZ_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("TUIWIZ_CACHE_DIR", str(_shared_cache(tmp_path_factory)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One thread a process: the suite runs two workers on two cores, each often with a runner beside it;
    # more threads than cores makes OpenMP spin (measured: the run-lifecycle tests took 327 s at 2, 109 s at 1).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


_CACHE: list[Path] = []


def _shared_cache(factory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("cache"))
    return _CACHE[0]


def session_temp(factory) -> Path:
    """A folder every xdist worker of this test session shares: the session's base temp (each worker's
    own base temp is a folder in it), or the base temp itself without xdist."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def demo_built(tmp_path_factory):
    """The demo model, built once per session in a child process (building imports torch)."""
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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run(name)``: the completed run of a recipe in tests/support/trained_runs.py, trained
    once per test session whichever worker asks first (under a file lock) and reused by every worker.
    Read-only: change a copy (``copy_run``)."""
    from .support.trained_runs import train_once

    root = session_temp(tmp_path_factory) / "trained-runs"
    return lambda name: train_once(root, name)
