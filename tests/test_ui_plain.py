"""`tuiwiz --plain`: the same steps as prompts give the same profile as the app, and launch the same runner."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tuiwiz.profile.io import dump_profile, load_profile
from tuiwiz.run.rundir import read_state, registered_runs
from tuiwiz.ui.app import TuiwizApp
from tuiwiz.ui.choices import WizardState
from tuiwiz.ui.plain import run_plain

from .support.testing import wait_for

ENTER, DOWN, BACKSPACE = "\r", "\x1b[B", "\x7f"


async def app_profile(workdir):
    """The app's profile for: demo, demo:alpaca, LoRA on the CPU, max_steps 2, everything else as offered."""
    app = TuiwizApp(WizardState(workdir=workdir), offer_attach=False, blink=False)
    on = lambda name: type(app.screen).__name__ == name
    async with app.run_test(size=(80, 24)) as pilot:
        for screen in ("HardwareScreen", "ModelScreen", "DataScreen"):
            await wait_for(pilot, lambda screen=screen: on(screen) and app.screen.ready(), timeout=60)
            await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on("MethodScreen") and app.screen.ready())
        await pilot.press("down")
        await wait_for(pilot, lambda: app.state.option_key == "cpu-lora")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on("SettingsScreen") and app.screen.ready())
        app.screen.query_one("#f-training-max-steps").focus()
        await pilot.press("home", "ctrl+k", "2")
        await wait_for(pilot, lambda: app.screen.ready() and app.state.profile.training.max_steps == 2)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on("ReviewScreen"))
        return app.state.profile, app.state.profile_name


@pytest.mark.slow
def test_plain_prompts_make_the_same_profile_and_train(ui_env, capsys):
    # questionary runs its own event loop, so this test is synchronous and runs the app in its own
    expected, expected_name = asyncio.run(app_profile(ui_env / "app"))
    answers = (
        ENTER  # model: demo
        + ENTER + ENTER + ENTER  # task sft, data demo:alpaca, format auto
        + DOWN + ENTER  # method: LoRA on the CPU, below the recommended full fine-tune
        + ENTER + BACKSPACE * 2 + "2" + ENTER  # epochs as offered; max steps 2
        + ENTER * 4  # learning rate, micro-batch, accumulation, max length
        + ENTER * 5  # r, lora_alpha, lora_dropout, use_dora, use_rslora
        + ENTER  # no advanced settings
        + ENTER  # profile name as offered
        + ENTER  # launch
    )
    work = ui_env / "plain"
    work.mkdir()
    with create_pipe_input() as pipe:
        pipe.send_text(answers)
        code = run_plain(WizardState(workdir=work), input=pipe, output=DummyOutput())
    out = capsys.readouterr().out
    assert code == 0, out
    saved = work / "profiles" / f"{expected_name}.yaml"
    assert saved.is_file(), out
    assert yaml.safe_load(saved.read_text()) == yaml.safe_load(dump_profile(expected))
    assert load_profile(saved).profile.method.type == "lora"
    # the same runner, followed by the headless follower to the end
    runs = registered_runs()
    assert len(runs) == 1 and read_state(runs[0]).status == "completed"
    assert "completed: train loss" in out and "1/2" in out  # a step reached the follower (plain or live)
