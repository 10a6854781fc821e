"""Pilot tests of each screen at 80x24: what it shows, what its keys do, when Next is allowed."""

from __future__ import annotations

import json

import pytest

from tuiwiz.ui.app import TuiwizApp

from .support.testing import (
    FIXED_TIME,
    SIZE,
    app_at,
    fixed_clock,
    on,
    prepared_state,
    screen_text,
    wait_for,
    widget_text,
    write_fixture_run,
)

pytestmark = pytest.mark.asyncio


async def test_hardware_screen_shows_gpus_and_back_is_disabled(ui_env, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "rtx4090-24gb")
    app = app_at(prepared_state(ui_env, until="hardware"), "hardware")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "HardwareScreen") and app.screen.ready())
        text = screen_text(app)
        assert "NVIDIA GeForce RTX 4090" in text
        assert "compute 8.9" in text and "bf16 yes" in text
        assert "VRAM" in text and "24.0 GiB" in text
        assert "firefox (40112, 493 MiB)" in text  # processes on the GPU
        assert "AMD Ryzen 9 7950X" in text and "RAM" in text and "free" in text
        assert app.screen.check_action("back", ()) is None  # the first step has no Back
        await pilot.press("escape")
        assert on(app, "HardwareScreen")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "ModelScreen"))


async def test_hardware_screen_cpu_only_notice(ui_env):
    app = app_at(prepared_state(ui_env, until="hardware"), "hardware")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "HardwareScreen") and app.screen.ready())
        text = screen_text(app)
        assert "CPU only." in text and "training runs on" in text
        assert " ".join(text.split()).count("training runs on the CPU") == 1  # said once, not twice
        assert "GPU 0" not in text


async def test_model_screen_details_and_unknown_hub_id(ui_env):
    app = app_at(prepared_state(ui_env, until="model"), "model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
        text = screen_text(app)
        for expected in ("LlamaForCausalLM", "Parameters", "1.1M", "Size on disk", "float32", "512 tokens",
                         "apache-2.0"):
            assert expected in text, expected
        # a hub id that is not in the (empty) cache: explained, and Next is refused
        entry = app.screen.query_one("#model-entry")
        entry.focus()
        await pilot.press(*"someorg/not-here", "enter")
        info = app.screen.query_one("#model-info")
        await wait_for(pilot, lambda: "not in the Hugging Face cache" in widget_text(info))
        assert "hint: download it first" in widget_text(info)
        assert not app.screen.ready()
        assert app.screen.query_one("#nav-next").disabled
        await pilot.press("ctrl+n")
        assert on(app, "ModelScreen")


async def test_model_screen_keeps_a_folder_chosen_earlier(ui_env):
    """Back on the Model step (from Data), a folder typed earlier stays chosen: the list's first entry
    is not read in its place."""
    from tuiwiz.demo.build import demo_model_dir

    folder = str(demo_model_dir())
    state = prepared_state(ui_env, until="data", model=folder)
    app = app_at(state, "model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
        await pilot.pause(0.5)  # the cache scan and any automatic highlight have happened
        assert app.state.model_name == folder and app.screen.ready()
        assert app.screen.query_one("#model-entry").value == folder
        # choosing from the list still works
        options = app.screen.query_one("#model-list")
        options.focus()
        options.highlighted = 0
        await wait_for(pilot, lambda: app.state.model_name == "demo" and app.screen.ready(), timeout=30)


async def test_model_screen_local_folder_picker(ui_env):
    from tuiwiz.demo.build import demo_model_dir

    state = prepared_state(ui_env, until="model")
    state.workdir = demo_model_dir().parent
    app = app_at(state, "model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
        options = app.screen.query_one("#model-list")
        options.highlighted = options.option_count - 2  # "Local folder…"
        await pilot.press("enter")
        await wait_for(pilot, lambda: on(app, "PathPicker"))
        tree = app.screen.query_one("#picker-tree")
        await wait_for(pilot, lambda: any(n.data and n.data.path.name == demo_model_dir().name
                                          for n in tree.root.children))
        index = next(i for i, n in enumerate(tree.root.children) if n.data.path.name == demo_model_dir().name)
        for _ in range(index + 1):
            await pilot.press("down")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=30)
        assert app.state.model_info.source == "local"
        assert app.state.model_name == str(demo_model_dir())


async def test_data_screen_samples_lengths_and_trained_part(ui_env):
    app = app_at(prepared_state(ui_env, until="data"), "data")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=30)
        text = screen_text(app)
        assert "153 rows, alpaca" in text
        assert "example 1 · line 1" in text
        assert "<|im_start|>assistant" in text  # the chat template was applied
        sample = app.screen.sample_texts[0]
        trained = [sample.plain[span.start:span.end] for span in sample.spans if "green" in str(span.style)]
        assert trained and trained[0].endswith("<|im_end|>\n")  # the answer, not the prompt, is trained
        assert app.state.length_stats.max > 0
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "MethodScreen"))
        assert app.state.data is not None and app.state.data.format == "alpaca"


async def test_data_screen_reports_the_bad_line(ui_env):
    bad = ui_env / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + "{not json\n", encoding="utf-8")
    state = prepared_state(ui_env, until="data")
    state.data_path = str(bad)
    app = app_at(state, "data")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.checked is not None)
        await wait_for(pilot, lambda: "Problems (1)" in screen_text(app))
        text = screen_text(app)
        assert f"{bad}:2" in text.replace("\n", "") or "bad.jsonl:2" in text
        assert "not valid JSON" in text
        assert not app.screen.ready()
        # fix the file and read it again: the problem goes away
        bad.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
        field = app.screen.query_one("#data-path")
        field.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.ready(), timeout=20)


async def test_data_screen_column_mapping(ui_env):
    custom = ui_env / "qa.jsonl"
    custom.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(5)),
                      encoding="utf-8")
    state = prepared_state(ui_env, until="data")
    state.data_path = str(custom)
    app = app_at(state, "data")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.checked is not None)
        assert app.screen.checked.error is not None  # q/a are not known names
        app.screen.query_one("#data-tabs").active = "tab-columns"
        await pilot.pause()
        for role, column in (("instruction", "q"), ("output", "a")):
            app.screen.query_one(f"#col-{role}").focus()
            await pilot.press(*column)
        await wait_for(pilot, lambda: app.screen.ready(), timeout=20)
        assert app.state.data.records[0]["instruction"] == "question 0"
        assert app.state.columns == {"instruction": "q", "output": "a"}


async def test_method_screen_ranks_and_explains(ui_env, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    app = app_at(prepared_state(ui_env, until="method"), "method")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "MethodScreen") and app.state.recommendation is not None)
        rec = app.state.recommendation
        assert app.state.option_key == rec.best.key  # the recommended one is selected
        text = screen_text(app)
        assert "★" in text and "✗" in text
        # move to the option that does not fit: its reason shows and Next is refused
        keys = [o.key for o in rec.options]
        for _ in range(keys.index("cpu-qlora")):
            await pilot.press("down")
        await wait_for(pilot, lambda: app.state.option_key == "cpu-qlora")
        rejected = app.state.option().rejected
        info = " ".join(widget_text(app.screen.query_one("#method-info")).split())
        assert rejected and f"Why not: {rejected}" in info
        assert not app.screen.ready()
        await pilot.press("up")
        await wait_for(pilot, lambda: app.screen.ready())
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "SettingsScreen"))


async def test_method_screen_gpu_fit_and_breakdown(ui_env, monkeypatch):
    monkeypatch.setenv("TUIWIZ_HARDWARE", "h100-80gb")
    app = app_at(prepared_state(ui_env, until="method"), "method")
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: on(app, "MethodScreen") and app.state.recommendation is not None)
        text = screen_text(app)
        assert "GPU 0" in text and "usable" in text
        assert "Memory at the peak of a step" in text and "CUDA context" in text and "activations" in text
        assert "trainable" in text


async def test_settings_validate_as_you_type(ui_env):
    app = app_at(prepared_state(ui_env, until="settings", option="cpu-lora"), "settings")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "SettingsScreen") and app.screen.ready())
        field = app.screen.query_one("#f-training-learning-rate")
        field.focus()
        await pilot.press("home", "ctrl+k", *"fast")
        await wait_for(pilot, lambda: not app.screen.ready())
        error = app.screen.query_one("#f-training-learning-rate-error")
        assert error.display and "valid number" in widget_text(error)
        assert app.screen.check_action("next", ()) is None  # shown disabled in the footer
        await pilot.press("ctrl+n")
        assert on(app, "SettingsScreen")
        await pilot.press("home", "ctrl+k", *"2")  # the schema says lt=1
        await wait_for(pilot, lambda: "less than 1" in widget_text(error))
        await pilot.press("home", "ctrl+k", *"0.002")
        await wait_for(pilot, lambda: app.screen.ready())
        assert app.state.profile.training.learning_rate == 0.002
        # a rule across fields: eval_steps needs evaluation data; the message shows at eval_steps
        app.screen.query_one("#settings-advanced CollapsibleTitle").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.screen.query_one("#settings-advanced").collapsed)
        app.screen.query_one("#f-training-eval-steps").focus()
        await pilot.press(*"5")
        await wait_for(pilot, lambda: not app.screen.ready())
        eval_error = app.screen.query_one("#f-training-eval-steps-error")
        assert eval_error.display and "no evaluation data" in widget_text(eval_error)
        await pilot.press("backspace")
        await wait_for(pilot, lambda: app.screen.ready())
        name = app.screen.query_one("#f-name")
        name.focus()
        await pilot.press("home", "ctrl+k", *"bad name!")
        await wait_for(pilot, lambda: not app.screen.ready())


async def test_review_shows_profile_path_and_command(ui_env):
    app = app_at(prepared_state(ui_env, until="review", option="cpu-lora"), "review")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ReviewScreen"))
        await pilot.pause()
        text = screen_text(app)
        assert "profiles/demo-lora.yaml" in text
        assert "tuiwiz --profile profiles/demo-lora.yaml" in text
        assert "--node-rank" not in text  # one machine: the one command, as before
        assert "name_or_path: demo" in text
        assert "Launch" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "SettingsScreen"))


def several_nodes(profile, count: int):
    from tuiwiz.profile.schema import DistributedConfig, NodesConfig

    nodes = NodesConfig(count=count, main_address="10.1.2.3")
    return profile.model_copy(update={"distributed": DistributedConfig(strategy="ddp", nodes=nodes)})


async def test_review_of_a_two_node_profile_shows_every_nodes_command(ui_env):
    from tuiwiz.profile.io import save_profile

    from .support.processes import run_cli

    state = prepared_state(ui_env, until="review", option="cpu-lora")
    state.profile = several_nodes(state.profile, 2)
    # what --print-launch prints for the same profile, saved where the review says it will be
    save_profile(state.profile, ui_env / "profiles" / "demo-lora.yaml")
    printed = run_cli("--profile", "profiles/demo-lora.yaml", "--print-launch", cwd=ui_env)
    assert printed.returncode == 0, printed.stderr
    commands = [line for line in printed.stdout.splitlines() if line.startswith("tuiwiz ")]
    assert commands == [f"tuiwiz --profile profiles/demo-lora.yaml --node-rank {r}" for r in (0, 1)]
    app = app_at(state, "review")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ReviewScreen"))
        lines = [line.strip() for line in screen_text(app).splitlines()]
        # each on a line of its own, unwrapped at 80 columns
        assert f"Node 0      {commands[0]}" in lines and f"Node 1      {commands[1]}" in lines
        assert "Headless    one command on each of 2 machines, main 10.1.2.3:29500" in lines
        assert "tuiwiz --profile profiles/demo-lora.yaml" not in lines  # no single-machine command
        assert any("name_or_path: demo" in line for line in lines)  # the profile keeps its room


async def test_review_of_many_nodes_fits_80x24(ui_env):
    state = prepared_state(ui_env, until="review", option="cpu-lora")
    state.profile = several_nodes(state.profile, 16)
    app = app_at(state, "review")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ReviewScreen"))
        text = screen_text(app)
        lines = [line.strip() for line in text.splitlines()]
        for rank in (0, 1, 15):
            assert f"Node {rank:<7}tuiwiz --profile profiles/demo-lora.yaml --node-rank {rank}" in lines
        assert not any(line.endswith("--node-rank 2") for line in lines) and "… nodes 2 to 14 alike" in text
        assert "name_or_path: demo" in text


async def test_runs_screen_lists_attaches_and_deletes(ui_env):
    runs = ui_env / "runs"
    done = write_fixture_run(runs, "demo-lora-20260101-000000-beef", status="completed")
    failed = write_fixture_run(runs, "demo-full-20260101-000100-0001", status="failed")
    app = TuiwizApp(offer_attach=False, blink=False, clock=fixed_clock)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: on(app, "RunsScreen") and len(app.screen.summaries) == 2)
        text = screen_text(app)
        assert "completed" in text and "failed" in text and "120/120" in text
        assert "CUDA out of memory" in text  # the first row (newest) is the failed run
        assert app.screen.check_action("resume", ()) is True
        assert app.screen.check_action("stop", ()) is None  # not running
        assert app.screen.check_action("post", ("chat",)) is False  # failed: nothing to chat with
        # delete asks first; "no" keeps it
        await pilot.press("x")
        await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "RunsScreen"))
        assert failed.exists()
        await pilot.press("x")
        await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
        await pilot.press("y")
        await wait_for(pilot, lambda: on(app, "RunsScreen") and len(app.screen.summaries) == 1)
        assert not failed.exists() and done.exists()
        # a completed run offers merge, export and chat (a failed one did not: see above)
        assert app.screen.check_action("post", ("merge",)) is True
        await pilot.press("c")
        await wait_for(pilot, lambda: on(app, "ChoiceDialog") and "side by side" in screen_text(app))
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "RunsScreen"))
        # attach: the monitor of the remaining run
        await pilot.press("enter")
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None)
        assert app.screen.run.path == done
        await pilot.press("d")
        await wait_for(pilot, lambda: on(app, "RunsScreen"))


async def test_runs_screen_groups_a_pipeline_and_acts_on_it_whole(ui_env):
    from tuiwiz.run.pipeline import PipelineDir, PipelineState, StageState
    from tuiwiz.run.rundir import RunDir, register

    lone = write_fixture_run(ui_env / "runs", "demo-lora-20260101-000000-beef", status="completed")
    folder = ui_env / "runs" / "pipe-20260101-000200-0002"
    first = write_fixture_run(folder, f"{folder.name}-sft", status="completed")
    second = write_fixture_run(folder, f"{folder.name}-dpo", status="stopped")
    PipelineDir(folder).write(PipelineState(folder.name, "stopped", [
        StageState("sft", "sft", str(first), "completed"), StageState("dpo", "dpo", str(second), "stopped"),
        StageState("grpo", "grpo")], created=FIXED_TIME + 50))
    register(RunDir(folder))
    app = TuiwizApp(offer_attach=False, blink=False, clock=fixed_clock)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: on(app, "RunsScreen") and len(app.screen.summaries) == 5)
        lines = screen_text(app).splitlines()
        order = [next(i for i, line in enumerate(lines) if name in line)
                 for name in (folder.name[:20], "└ sft ", "└ dpo ", "└ grpo ", lone.name[:20])]
        assert order == sorted(order), lines  # the pipeline, its stages below it (pending too), then the run
        screen = app.screen
        assert "pipeline of 3 stages: sft → dpo → grpo" in screen_text(app)
        assert screen.selected().task == "pipeline"
        assert [screen.check_action(a, ()) for a in ("attach", "resume", "stop", "delete")] == [True, True, None, True]
        assert screen.check_action("post", ("chat",)) is None  # the pipeline's row has no model of its own
        await pilot.press("down", "down")  # its stopped stage: resume and stop act on the whole pipeline
        assert screen.selected_path() == str(second)
        assert [screen.check_action(a, ()) for a in ("resume", "delete")] == [True, None]
        await pilot.press("down")  # the pending stage: nothing to attach to
        assert screen.check_action("attach", ()) is None
        await pilot.press("up", "up", "up", "enter")  # the pipeline's row attaches to its latest started stage
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None)
        assert app.screen.run.path == second
        await pilot.press("d")
        await wait_for(pilot, lambda: on(app, "RunsScreen"))
        await pilot.press("x")
        await wait_for(pilot, lambda: on(app, "ConfirmDialog") and "every stage" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: on(app, "RunsScreen") and len(app.screen.summaries) == 1)
        assert not folder.exists() and lone.exists()


async def test_monitor_of_a_finished_run(ui_env):
    path = write_fixture_run(ui_env / "runs", status="failed")
    app = TuiwizApp(attach=str(path), offer_attach=False, blink=False, clock=fixed_clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None)
        await pilot.pause(0.6)
        text = screen_text(app)
        assert "FAILED" in text and "step 120/200" in text
        assert "CUDA out of memory at step 120" in text and "hint: lower training" in text
        assert "loss" in text and "train.log" in text
        assert app.screen.check_action("stop", ()) is False  # nothing to stop
        assert app.screen.check_action("post", ("merge",)) is False  # nothing to merge
        assert app.screen.check_action("new_run", ()) is True


async def test_help_lists_the_keys_of_the_screen_below(ui_env):
    app = app_at(prepared_state(ui_env, until="hardware"), "hardware")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "HardwareScreen") and app.screen.ready())
        await pilot.press("f1")
        await wait_for(pilot, lambda: on(app, "HelpScreen"))
        text = widget_text(app.screen.query_one("#help-keys")) + widget_text(app.screen.query_one("#help-about"))
        assert "Back  (not now)" in text  # the first step has no Back
        for expected in ("Next", "Re-probe", "Runs", "Quit", "Ctrl+P", "never stops it"):
            assert expected in text, expected
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "HardwareScreen"))


async def test_command_palette_has_the_app_commands(ui_env):
    app = app_at(prepared_state(ui_env, until="hardware"), "hardware")
    async with app.run_test(size=SIZE) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Runs", "New run", "Help", "Hardware", "Quit"} <= set(titles)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CommandPalette")
        await pilot.press(*"runs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: on(app, "RunsScreen"))


async def test_quit_without_runs_exits_at_once(ui_env):
    app = app_at(prepared_state(ui_env, until="hardware"), "hardware")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_value == 0
    assert app.farewell() == []


async def test_monitor_next_actions_after_a_completed_run(ui_env):
    path = write_fixture_run(ui_env / "runs", status="completed")
    app = TuiwizApp(attach=str(path), offer_attach=False, blink=False, clock=fixed_clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None)
        monitor = app.screen
        assert "✓ Completed" in screen_text(app) and "m merge" in screen_text(app)
        assert monitor.check_action("post", ("merge",)) is True and monitor.check_action("stop", ()) is False
        await pilot.press("e")
        await wait_for(pilot, lambda: on(app, "ChoiceDialog"))
        await pilot.press("down", "down", "enter")  # gguf
        await wait_for(pilot, lambda: on(app, "ChoiceDialog") and "GGUF tensor type" in screen_text(app))
        await pilot.press("down", "enter")  # q8_0
        # the real command runs in a subprocess; this fixture run has no model, so it fails, and says why
        await wait_for(pilot, lambda: on(app, "JobScreen") and app.screen.error is not None, timeout=60)
        job = app.screen
        assert job.args == ["export", str(path), "--format", "gguf", "--quant", "q8_0"]
        text = screen_text(app)
        assert "✗" in text and job.error["message"][:30] in text, text
        await pilot.press("escape")
        await wait_for(pilot, lambda: on(app, "MonitorScreen"))
        await pilot.press("n")
        await wait_for(pilot, lambda: on(app, "ModelScreen"))


@pytest.mark.parametrize("answer", ["y", "escape"])
async def test_model_with_remote_code_asks_before_trusting_it(ui_env, tmp_path, answer):
    import shutil

    from tuiwiz.demo.build import demo_model_dir
    from tuiwiz.ui.choices import remote_code

    folder = tmp_path / "custom-model"
    shutil.copytree(demo_model_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text("# code the user must agree to run\n")
    assert remote_code(folder) == ("modeling_custom.py",)
    app = app_at(prepared_state(ui_env, until="model"), "model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
        entry = app.screen.query_one("#model-entry")
        entry.focus()
        entry.value = str(folder)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.model_name == str(folder) and app.screen.ready(), timeout=30)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: on(app, "ConfirmDialog"))
        assert "modeling_custom.py" in screen_text(app) and "trust_remote_code" in screen_text(app)
        await pilot.press(answer)
        if answer == "y":
            await wait_for(pilot, lambda: not on(app, "ModelScreen") and not on(app, "ConfirmDialog"))
            assert app.state.trust_remote_code is True
        else:
            await wait_for(pilot, lambda: on(app, "ModelScreen"))
            assert app.state.trust_remote_code is False


async def test_model_screen_reads_a_hub_model_not_downloaded_and_the_data_step_uses_its_tokenizer(
        ui_env, monkeypatch, tmp_path):
    """Typed by keys: a hub id not in the cache is read from the (fake, loopback) Hub's metadata; Next is
    allowed, and the Data step renders its samples with the tokenizer fetched beside that metadata."""
    from tuiwiz.demo.build import demo_model_dir

    from .support.hub import ModelHub, online

    # an id of its own: tuiwiz's metadata cache is shared by the session's tests, and a commit's files are
    # fetched once
    with ModelHub({"acme/ui-llama": demo_model_dir()}) as hub:
        online(monkeypatch, tmp_path, hub)
        app = app_at(prepared_state(ui_env, until="model"), "model")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
            for _ in range(6):  # the keyboard's way to the entry
                if getattr(app.focused, "id", None) == "model-entry":
                    break
                await pilot.press("tab")
            assert app.focused.id == "model-entry"
            await pilot.press(*"acme/ui-llama", "enter")
            info = app.screen.query_one("#model-info")
            await wait_for(pilot, lambda: "not downloaded" in widget_text(info), timeout=30)
            text = widget_text(info)
            assert "acme/ui-llama  (Hugging Face Hub, not downloaded)" in text
            assert "Download" in text and "1.1M" in text and "apache-2.0" in text
            assert app.state.model_info.source == "hub" and app.screen.ready()
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=60)
            await wait_for(pilot, lambda: getattr(app.screen, "sample_texts", None)
                           and "p50" in widget_text(app.screen.query_one("#length-stats")), timeout=30)
            # the same text the downloaded model's own template and tokenizer give
            record, shown = app.screen.checked.data.records[0], app.screen.sample_texts[0].plain
    from tuiwiz.data.rendering import ModelText
    from tuiwiz.ui.render import rendered_text

    assert any(name == "tokenizer.json" for name, _ in hub.reads)
    assert shown.strip() and shown == rendered_text(ModelText(demo_model_dir()).render(record, "alpaca")).plain


async def test_a_worker_that_fails_unexpectedly_is_said_not_waited_for(ui_env, monkeypatch):
    """A bug in a background task (here: inspecting a model raises a RuntimeError) shows a notice naming it,
    and the step stops saying "reading…"."""
    import tuiwiz.plan.modelinfo

    def broken(*args, **kwargs):
        raise RuntimeError("boom in inspect")

    app = app_at(prepared_state(ui_env, until="model"), "model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ModelScreen") and app.screen.ready(), timeout=60)
        monkeypatch.setattr(tuiwiz.plan.modelinfo, "inspect_model", broken)
        app.screen.inspect("demo")
        await wait_for(pilot, lambda: "failed: RuntimeError" in widget_text(app.screen.query_one("#nav-message")))
        [notice] = list(app._notifications)
        assert notice.title == "Internal error" and notice.severity == "error"
        assert notice.message.startswith("_inspect failed: RuntimeError: boom in inspect\n")
        assert not app.screen.ready()


async def test_review_probes_before_launch_and_quitting_ends_the_probe(ui_env):
    """The probe starts as Review opens and Launch waits for it; quitting meanwhile ends the probe's runner
    and removes its folder, without the "keeps training" question (a probe is not the user's run)."""
    from tuiwiz.run.rundir import process_alive, read_state, registered_runs

    app = app_at(prepared_state(ui_env, until="review", option="cpu-lora", probe_first=True), "review")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "ReviewScreen") and app.probe_runs, timeout=30)
        assert app.screen.probing and not app.screen.ready() and app.screen.query_one("#nav-next").disabled
        assert "Probe run: 3 real steps" in widget_text(app.screen.query_one("#review-probe"))
        probe_run = app.probe_runs[0]
        await wait_for(pilot, lambda: (read_state(probe_run) or None) and read_state(probe_run).pid
                       and process_alive(read_state(probe_run)), timeout=60)
        pid_state = read_state(probe_run)
        assert probe_run.path not in [r.path for r in registered_runs()]  # not listed as a run
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
        assert not on(app, "ConfirmDialog")
    assert not process_alive(pid_state)
    assert not probe_run.path.exists()


async def test_data_screen_file_picker_by_keys(ui_env):
    """ctrl+o opens the picker on the working folder; it lists folders and data files only; Enter opens a
    folder and picks a file; the Data step then reads it."""
    folder = ui_env / "mydata"
    folder.mkdir()
    rows = [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(12)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "notes.txt").write_text("not data\n")
    app = app_at(prepared_state(ui_env, until="data"), "data")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=60)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: on(app, "PathPicker"))
        tree = app.screen.query_one("#picker-tree")
        await wait_for(pilot, lambda: any(n.data and n.data.path.name == "mydata" for n in tree.root.children))
        index = next(i for i, n in enumerate(tree.root.children) if n.data.path.name == "mydata")
        for _ in range(index + 1):
            await pilot.press("down")
        await pilot.press("enter")  # opens the folder
        await wait_for(pilot, lambda: [n.data.path.name for n in tree.cursor_node.children] == ["pairs.jsonl"])
        await pilot.press("down", "enter")  # notes.txt is not offered: the first child is the data file
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready()
                       and app.state.data_path == str(folder / "pairs.jsonl"), timeout=30)
        assert len(app.state.data) == 12 and app.state.data.format == "alpaca"
        assert "12 rows, alpaca" in screen_text(app)
