"""The wizard's process never loads the training stack: not at start, not on any screen."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "deepspeed", "datasets", "accelerate")

# Walk the app headless through every step and the monitor, then list what got imported.
WALK = """
import asyncio, json, sys
from pathlib import Path
from tuiwiz.ui.app import TuiwizApp
from tuiwiz.ui.choices import WizardState
from tests.support.testing import wait_for, write_fixture_run

async def main():
    work = Path(sys.argv[1])
    app = TuiwizApp(WizardState(workdir=work), offer_attach=False, blink=False)
    name = lambda: type(app.screen).__name__
    async with app.run_test(size=(80, 24)) as pilot:
        for screen in ("HardwareScreen", "ModelScreen", "DataScreen", "MethodScreen", "SettingsScreen"):
            await wait_for(pilot, lambda: name() == screen and app.screen.ready(), timeout=60)
            await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: name() == "ReviewScreen")
        app.open_monitor(__import__("tuiwiz.run.rundir", fromlist=["RunDir"]).RunDir(
            write_fixture_run(work / "runs", status="completed")))
        await wait_for(pilot, lambda: name() == "MonitorScreen" and app.screen.snapshot is not None)
        await pilot.press("f2")
        await wait_for(pilot, lambda: name() == "RunsScreen" and app.screen.summaries)
        # the post-training screens, fed a recorded session (their model runs in a process of its own)
        from tuiwiz.ui.screens.chat import ChatScreen
        from tuiwiz.ui.screens.job import JobScreen
        from tests.support.testing import Replay
        chat = ChatScreen("runs/demo", compare=True, process=Replay("chat"))
        app.push_screen(chat)
        await wait_for(pilot, lambda: chat.ready)
        job = JobScreen("merge", ["merge", "runs/demo"], title="Merge", process=Replay("merge"))
        app.push_screen(job)
        await wait_for(pilot, lambda: job.result is not None)
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))

asyncio.run(main())
"""


@pytest.mark.parametrize("module", ["tuiwiz.ui", "tuiwiz.ui.app", "tuiwiz.ui.plain", "tuiwiz.ui.runview",
                                    "tuiwiz.ui.choices"])
def test_ui_modules_import_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} + ('textual',) if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = set(filter(None, result.stdout.strip().split(",")))
    assert not loaded & set(HEAVY), f"{module} imported {loaded}"
    if module in ("tuiwiz.ui", "tuiwiz.ui.plain", "tuiwiz.ui.runview", "tuiwiz.ui.choices"):
        assert "textual" not in loaded, f"{module} imported Textual"  # the entry point and plain mode stay lean


@pytest.mark.slow  # the whole app walked in a fresh interpreter
def test_every_screen_without_the_training_stack(tmp_path, monkeypatch, demo_built):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    code = WALK.replace("{heavy!r}", repr(HEAVY))
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=240)  # from the repository, where tests.support is
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
