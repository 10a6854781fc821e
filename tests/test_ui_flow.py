"""The whole wizard against a real runner subprocess: launch, follow, stop, detach, attach, quit.

These train the demo model on the CPU (a few steps each), so they take seconds to tens of seconds.
"""

from __future__ import annotations

import pytest

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import ACTIVE, effective_status
from tuiwiz.ui.app import TuiwizApp
from tuiwiz.ui.choices import WizardState, save_and_launch

from .support.testing import SIZE, on, prepared_state, screen_text, wait_for, widget_text

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def set_field(pilot, widget_id: str, text: str) -> None:
    pilot.app.screen.query_one(f"#{widget_id}").focus()
    await pilot.pause()
    await pilot.press("home", "ctrl+k", *text)


async def test_wizard_from_hardware_to_a_completed_run(ui_env):
    """Every step by keyboard, quickstart-like settings (LoRA, lr 0.002, 4 steps), the monitor to the end."""
    app = TuiwizApp(WizardState(workdir=ui_env), offer_attach=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "HardwareScreen") and app.screen.ready())
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=120)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=60)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "MethodScreen") and app.state.recommendation is not None)
        keys = [o.key for o in app.state.recommendation.options]
        for _ in range(keys.index("cpu-lora") - keys.index(app.state.option_key)):
            await pilot.press("down")
        await wait_for(pilot, lambda: app.state.option_key == "cpu-lora")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "SettingsScreen") and app.screen.ready())
        await set_field(pilot, "f-training-max-steps", "4")
        await set_field(pilot, "f-training-learning-rate", "0.002")
        app.screen.query_one("#settings-advanced CollapsibleTitle").focus()
        await pilot.press("enter")
        await set_field(pilot, "f-training-logging-steps", "1")
        await wait_for(pilot, lambda: app.screen.ready() and app.state.profile.training.logging_steps == 1)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "ReviewScreen"))
        assert "profiles/demo-lora.yaml" in screen_text(app)
        # the probe run starts by itself: real steps at full length in the runner, measured peak against
        # the estimate; Launch waits for it
        assert app.screen.probing and not app.screen.ready()
        await pilot.press("ctrl+n")
        assert on(app, "ReviewScreen")
        await wait_for(pilot, lambda: app.screen.probe_result is not None, timeout=180)
        result = app.screen.probe_result
        assert result.fits and result.last.measured_mb > 0
        probe_panel = widget_text(app.screen.query_one("#review-probe"))
        assert "Probe run: fits" in probe_panel and "estimated" in probe_panel and "measured" in probe_panel
        assert app.state.profile.fit is not None  # the measurement goes into the saved profile
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "MonitorScreen"), timeout=60)
        monitor = app.screen
        run = monitor.run
        assert (ui_env / "profiles" / "demo-lora.yaml").is_file()
        assert run.path.parent == (ui_env / "runs").resolve()
        await wait_for(pilot, lambda: monitor.snapshot is not None and monitor.snapshot.step >= 1, timeout=180)
        assert monitor.snapshot.max_steps == 4 and monitor.snapshot.loss is not None
        await wait_for(pilot, lambda: monitor.snapshot.finished, timeout=180)
        await pilot.pause(0.6)
        assert monitor.snapshot.status == "completed", screen_text(app)
        text = screen_text(app)
        assert "COMPLETED" in text and "step 4/4" in text and "✓ Completed" in text
        assert len(monitor.reader.loss) == 4  # every logged step reached the chart
        assert (run.output / "adapter_config.json").is_file()
        # after the end: the next actions are offered
        assert monitor.check_action("post", ("merge",)) is True
        await pilot.press("n")
        await wait_for(pilot, lambda: on(app, "ModelScreen"))


async def test_quit_leaves_the_run_then_attach_stop_and_detach(ui_env):
    """Quitting says the run goes on (and it does); the next start offers to attach; stop; detach; resume
    from the runs list; detach mid-run; stop from the runs list."""
    state = prepared_state(ui_env, until="review", option="cpu-lora", max_steps=5000)
    run, proc, _ = save_and_launch(state, state.profile, state.profile_name)
    try:
        app = TuiwizApp(WizardState(workdir=ui_env), blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: on(app, "AttachDialog"), timeout=20)
            await pilot.press("escape")  # new run instead
            await wait_for(pilot, lambda: on(app, "HardwareScreen"))
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
            assert "keeps training" in screen_text(app)
            await pilot.press("enter")  # Quit is focused
        assert app.return_value == 0
        assert app.farewell() == [f"still training: {run.run_id} (tuiwiz attach {run.run_id})"]
        assert effective_status(run) in ACTIVE  # quitting did not stop it

        app = TuiwizApp(WizardState(workdir=ui_env), blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: on(app, "AttachDialog"), timeout=20)
            app.screen.query_one("#runs").focus()
            await pilot.press("enter")  # all runs
            await wait_for(pilot, lambda: on(app, "RunsScreen") and app.screen.summaries)
            await pilot.press("enter")  # attach from the runs list
            await wait_for(pilot, lambda: on(app, "MonitorScreen"))
            monitor = app.screen
            assert monitor.run.path == run.path
            await wait_for(pilot, lambda: monitor.snapshot is not None and monitor.snapshot.step >= 1, timeout=180)
            assert monitor.check_action("stop", ()) is True
            await pilot.press("s")
            await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
            await pilot.press("y")
            await wait_for(pilot, lambda: on(app, "MonitorScreen") and monitor.snapshot.finished, timeout=120)
            await pilot.pause(0.6)
            assert monitor.snapshot.status == "stopped", screen_text(app)
            assert "■ Stopped" in screen_text(app)
            assert run.last_checkpoint() is not None  # a graceful stop saves a checkpoint
            stopped_at = int(run.last_checkpoint().name.split("-")[1])
            await pilot.press("d")
            await wait_for(pilot, lambda: on(app, "RunsScreen"))
            await wait_for(pilot, lambda: "stopped" in screen_text(app))
            assert app.screen.check_action("resume", ()) is True
            # resume from the runs list: the monitor follows it from the checkpoint on
            await pilot.press("r")
            await wait_for(pilot, lambda: on(app, "MonitorScreen"))
            monitor = app.screen
            await wait_for(pilot, lambda: monitor.snapshot is not None and monitor.snapshot.status == "running"
                           and monitor.snapshot.step > stopped_at, timeout=180)
            starts = [e for e in read_events(run.events) if e["type"] == "run_start"]
            assert starts[-1]["resumed_from"].endswith(f"checkpoint-{stopped_at}")
            # detach mid-run: the run goes on; stop it from the runs list
            await pilot.press("d")
            await wait_for(pilot, lambda: on(app, "RunsScreen"))
            assert effective_status(run) == "running"
            assert app.screen.check_action("stop", ()) is True
            await pilot.press("s")
            await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
            await pilot.press("y")
            await wait_for(pilot, lambda: effective_status(run) == "stopped", timeout=120)
            await wait_for(pilot, lambda: on(app, "RunsScreen") and "stopped" in screen_text(app))
            assert int(run.last_checkpoint().name.split("-")[1]) > stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


async def test_a_runner_killed_by_a_signal_shows_the_signal_in_the_monitor(ui_env):
    """The trainer killed by a signal: its watcher records it, the app's launcher sees the same end."""
    import os
    import signal

    from tuiwiz.run.rundir import read_state

    state = prepared_state(ui_env, until="review", option="cpu-lora", max_steps=300)
    run, proc, _ = save_and_launch(state, state.profile, state.profile_name)
    try:
        app = TuiwizApp(attach=str(run.path), offer_attach=False, blink=False)
        app.processes.append(proc)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None
                           and app.screen.snapshot.step >= 1, timeout=180)
            os.kill(read_state(run).pid, signal.SIGKILL)  # the trainer, as the OOM killer would
            await wait_for(pilot, lambda: "killed by signal 9" in screen_text(app), timeout=30)
        assert read_state(run).status == "failed" and read_state(run).exit_code == -9
    finally:
        if proc.poll() is None:
            proc.kill()
