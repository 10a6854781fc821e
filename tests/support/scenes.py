"""Every screen of the app in a fixed state: for the snapshot tests and ``tests/support/screenshots.py``.

A scene builds the real app on a recorded machine (``TUIWIZ_HARDWARE``), fixed
run data and a fixed clock, and says when it is ready to be pictured. The monitor's
run data is illustrative (``write_fixture_run``: a synthetic loss curve); the post-training
screens replay real sessions recorded in recorded/. Set up the
environment first with ``scene_environment`` (the tests use monkeypatch instead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.ui.app import TuiwizApp

from .testing import Replay, fixed_clock, hold_running, prepared_state, screen_text, wait_for, write_fixture_run


@dataclass(frozen=True)
class Scene:
    name: str
    hardware: str  # a recorded machine
    build: Callable[[Path], tuple[TuiwizApp, Callable]]  # workdir -> (app, async ready(pilot))
    about: str


def _step_app(workdir: Path, step: str, **kwargs) -> TuiwizApp:
    state = prepared_state(workdir, until=step, **kwargs)
    return TuiwizApp(state, start=step, offer_attach=False, blink=False, clock=fixed_clock)


def _on(pilot, name: str) -> bool:
    return type(pilot.app.screen).__name__ == name


def _step(step: str, screen: str, extra: Callable[[object], Awaitable[None]] | None = None, **kwargs):
    def build(workdir: Path):
        app = _step_app(workdir, step, **kwargs)

        async def ready(pilot) -> None:
            await wait_for(pilot, lambda: _on(pilot, screen) and pilot.app.screen.ready(), timeout=60)
            if extra is not None:
                await extra(pilot)
            await pilot.pause(0.1)

        return app, ready

    return build


async def _lengths_tab(pilot) -> None:
    pilot.app.screen.query_one("#data-tabs").active = "tab-lengths"
    await pilot.pause(0.1)


async def _bad_value(pilot) -> None:
    pilot.app.screen.query_one("#f-training-learning-rate").focus()
    await pilot.press("home", "ctrl+k", *"2")
    await wait_for(pilot, lambda: not pilot.app.screen.ready())


def _bad_data(workdir: Path):
    (workdir / "train.jsonl").write_text(
        json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n" + json.dumps({"instruction": "Say bye"}) + "\n",
        encoding="utf-8")
    state = prepared_state(workdir, until="data")
    state.data_path = "train.jsonl"  # relative to the working folder, as a user types it
    app = TuiwizApp(state, start="data", offer_attach=False, blink=False, clock=fixed_clock)

    async def ready(pilot) -> None:
        await wait_for(pilot, lambda: _on(pilot, "DataScreen") and pilot.app.screen.checked is not None)
        await pilot.pause(0.1)

    return app, ready


def _monitor(status: str, live: bool = False):
    def build(workdir: Path):
        steps = 120 if status != "completed" else 200
        path = write_fixture_run(workdir / "runs", status=status, steps=steps)
        if live:
            import psutil

            sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
            _SLEEPERS.append(sleeper)
            hold_running(path, sleeper.pid, psutil.Process(sleeper.pid).create_time())
        app = TuiwizApp(attach=str(path), offer_attach=False, blink=False, clock=fixed_clock)

        async def ready(pilot) -> None:
            await wait_for(pilot, lambda: _on(pilot, "MonitorScreen") and pilot.app.screen.snapshot is not None)
            await pilot.pause(0.2)  # the first frame draws at once; let it settle

        return app, ready

    return build


_SLEEPERS: list = []


def stop_sleepers() -> None:
    """End the stand-in runner processes of the "running" scenes."""
    while _SLEEPERS:
        proc = _SLEEPERS.pop()
        proc.kill()
        proc.wait()


def _runs_app(workdir: Path, then: str | None = None):
    write_fixture_run(workdir / "runs", "demo-lora-20260101-000000-beef", status="completed")
    write_fixture_run(workdir / "runs", "demo-full-20260101-000100-0001", status="failed")
    write_fixture_run(workdir / "runs", "demo-ia3-20260101-000200-0002", status="stopped")
    app = TuiwizApp(prepared_state(workdir, until="hardware"), offer_attach=False, blink=False, clock=fixed_clock)

    async def ready(pilot) -> None:
        await wait_for(pilot, lambda: _on(pilot, "HardwareScreen") and pilot.app.screen.ready())
        await pilot.press("f2")
        await wait_for(pilot, lambda: _on(pilot, "RunsScreen") and len(pilot.app.screen.summaries) == 3)
        # the table laid out at its full widths before a dialog covers it (a loaded machine can be a pass late,
        # and the screen under a dialog keeps the widths it had)
        await wait_for(pilot, lambda: "completed" in screen_text(pilot.app))
        if then == "delete":
            await pilot.press("x")
            await wait_for(pilot, lambda: _on(pilot, "ConfirmDialog"))
        await pilot.pause(0.1)

    return app, ready


def _help(workdir: Path):
    app = _step_app(workdir, "data")

    async def ready(pilot) -> None:
        await wait_for(pilot, lambda: _on(pilot, "DataScreen") and pilot.app.screen.ready(), timeout=60)
        await pilot.press("f1")
        await wait_for(pilot, lambda: _on(pilot, "HelpScreen"))
        await pilot.pause(0.1)

    return app, ready


def _attach_offer(workdir: Path):
    import psutil

    path = write_fixture_run(workdir / "runs", status="running", steps=60, max_steps=200)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    _SLEEPERS.append(sleeper)
    hold_running(path, sleeper.pid, psutil.Process(sleeper.pid).create_time())
    app = TuiwizApp(prepared_state(workdir, until="hardware"), blink=False, clock=fixed_clock)

    async def ready(pilot) -> None:
        await wait_for(pilot, lambda: _on(pilot, "AttachDialog"), timeout=20)
        await pilot.pause(0.1)

    return app, ready


RECORDED_RUN = "demo-lora-20260101-000000-beef"  # the run id in recorded/*.jsonl


def _post(what: str):
    """A post-training screen over a recorded real session (Replay): chat side by side, merge, export."""
    def build(workdir: Path):
        app = TuiwizApp(prepared_state(workdir, until="hardware"), offer_attach=False, blink=False,
                        clock=fixed_clock)

        async def ready(pilot) -> None:
            await wait_for(pilot, lambda: _on(pilot, "HardwareScreen") and pilot.app.screen.ready())
            run = f"runs/{RECORDED_RUN}"
            if what == "chat":
                from tuiwiz.ui.screens.chat import ChatScreen

                screen = ChatScreen(run, compare=True, label=RECORDED_RUN, process=Replay("chat"))
                pilot.app.push_screen(screen)
                await wait_for(pilot, lambda: screen.ready)
                field = screen.query_one("#chat-input")
                field.value = "What sound does the cow make?"
                await pilot.press("enter")
                await wait_for(pilot, lambda: len(screen.finished) == 2, timeout=30)
                # both answers laid out with their notes: a loaded machine can show a finished answer's first
                # line before the layout pass that makes room for the rest (CI once took over 10 s for it)
                await wait_for(pilot, lambda: screen_text(pilot.app).count("tokens, ") == 2, timeout=30)
            else:
                from tuiwiz.ui.screens.job import JobScreen

                args = [what, run] if what == "merge" else ["export", run, "--format", "gguf", "--quant", "q8_0"]
                title = f"Merge · {RECORDED_RUN}" if what == "merge" else f"Export gguf · {RECORDED_RUN}"
                screen = JobScreen(what if what == "merge" else "export", args, title=title,
                                   process=Replay(what))
                pilot.app.push_screen(screen)
                await wait_for(pilot, lambda: screen.result is not None)
            await pilot.pause(0.1)

        return app, ready

    return build


SCENES = {s.name: s for s in (
    Scene("hardware-gpu", "rtx4090-24gb", _step("hardware", "HardwareScreen"), "one GPU with its processes"),
    Scene("hardware-8gpu", "8x-a100-80gb", _step("hardware", "HardwareScreen"), "eight GPUs, one busy"),
    Scene("hardware-cpu", "cpu-only", _step("hardware", "HardwareScreen"), "no GPU: the CPU-only notice"),
    Scene("model", "rtx4090-24gb", _step("model", "ModelScreen"), "the built-in demo model's details"),
    Scene("data-samples", "rtx4090-24gb", _step("data", "DataScreen"),
          "examples as the model sees them, trained part highlighted"),
    Scene("data-lengths", "rtx4090-24gb", _step("data", "DataScreen", _lengths_tab),
          "token-length histogram against the max length"),
    Scene("data-problem", "rtx4090-24gb", _bad_data, "a record missing its output, with its line"),
    Scene("method-gpu", "rtx4090-24gb", _step("method", "MethodScreen"), "ranked options with fit bars"),
    Scene("method-cpu", "cpu-only", _step("method", "MethodScreen"), "CPU options; QLoRA rejected with why"),
    Scene("settings", "cpu-only", _step("settings", "SettingsScreen", option="cpu-lora"), "the settings form"),
    Scene("settings-error", "cpu-only", _step("settings", "SettingsScreen", _bad_value, option="cpu-lora"),
          "a value the schema refuses, with its message"),
    Scene("review", "cpu-only", _step("review", "ReviewScreen", option="cpu-lora"),
          "the profile, where it is saved and the headless command"),
    # the monitor scenes read a run written by write_fixture_run: a made-up loss curve, not a training's
    Scene("monitor-running", "rtx4090-24gb", _monitor("running", live=True),
          "a run in progress (illustrative events)"),
    Scene("monitor-completed", "rtx4090-24gb", _monitor("completed"),
          "a finished run and the next actions (illustrative events)"),
    Scene("monitor-failed", "cpu-only", _monitor("failed"),
          "a failed run: the error and its hint (illustrative events)"),
    Scene("runs", "cpu-only", lambda w: _runs_app(w), "every run on this machine"),
    Scene("runs-delete", "cpu-only", lambda w: _runs_app(w, "delete"), "deleting asks first"),
    Scene("help", "cpu-only", _help, "help: the keys of the screen below"),
    Scene("attach-offer", "cpu-only", _attach_offer, "at start: a run is training, attach?"),
    Scene("chat-compare", "cpu-only", _post("chat"), "chat side by side: base model and fine-tuned, streamed"),
    Scene("merge", "cpu-only", _post("merge"), "a verified shard-by-shard merge"),
    Scene("export-gguf", "cpu-only", _post("gguf"), "a GGUF export (q8_0) with its files"),
)}


def scene_environment(hardware: str, home: Path) -> dict[str, str]:
    """The environment variables a scene expects (set them before building it)."""
    hub = home / "hf-cache"
    hub.mkdir(parents=True, exist_ok=True)
    return {"TUIWIZ_HARDWARE": hardware, "HF_HUB_CACHE": str(hub), "TEXTUAL_ANIMATIONS": "none",
            "HF_HUB_OFFLINE": "1"}


def ensure_demo() -> None:
    """Build the demo model in a child process (the scenes read it)."""
    subprocess.run([sys.executable, "-m", "tuiwiz", "demo"], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
