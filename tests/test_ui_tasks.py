"""The wizard and the monitor for the tasks past SFT: a preference pair side by side, a GRPO prompt with its
answer, an SFT run offered as DPO's starting point, and each task's own curves and samples."""

from __future__ import annotations

import json

import pytest

from tuiwiz.run.rundir import RunDir
from tuiwiz.ui.runview import RunReader

from .support.testing import SIZE, app_at, on, prepared_state, screen_text, wait_for, write_fixture_run


def _as_task(path, task: str, metrics: list[dict], samples: list[dict] | None = None) -> None:
    """A fixture run rewritten as a run of ``task`` whose log events carry ``metrics`` (one per step)."""
    events = [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]
    for event in events:
        if event["type"] == "run_start":
            event["task"] = task
    logs = [e for e in events if e["type"] == "log"]
    for event, numbers in zip(logs, metrics):
        event["task_metrics"] = numbers
    if samples:
        events.insert(events.index(logs[-1]) + 1, {"type": "samples", "time": logs[-1]["time"],
                                                    "step": logs[-1]["step"], "samples": samples})
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _snapshot(path):
    reader = RunReader(RunDir(path), gpus=False)
    reader.poll()
    return reader.take()[0]


def test_the_reader_keeps_the_task_s_own_curves_and_leaves_other_numbers_out(tmp_path):
    path = write_fixture_run(tmp_path, steps=20, register=False)
    _as_task(path, "dpo", [{"rewards/margins": 0.5 * i, "rewards/accuracies": min(1.0, 0.2 * i),
                            "entropy": 6.0} for i in range(10)])
    snapshot = _snapshot(path)
    assert list(snapshot.task_points) == ["rewards/margins", "rewards/accuracies"]  # in the table's order
    xs, ys = snapshot.task_points["rewards/margins"]
    assert ys == tuple(0.5 * i for i in range(len(xs))) and len(xs) == 5  # one per log event of the fixture
    assert snapshot.task_values["rewards/accuracies"] == pytest.approx(0.8)
    assert "entropy" not in snapshot.task_values  # logged, but not a curve DPO draws
    sft = write_fixture_run(tmp_path, run_id="sft-run", steps=20, register=False)
    assert _snapshot(sft).task_points == {}


def test_grpo_samples_show_their_reward_prompt_and_completion(tmp_path):
    from tuiwiz.ui.screens.monitor import samples_text

    path = write_fixture_run(tmp_path, steps=10, register=False)
    samples = [{"prompt": "What is two plus three?", "completion": "two plus three is five.", "reward": 1.0,
                "rewards": {"exact_answer": 1.0}},
               {"prompt": "What is one plus one?", "completion": "one plus one is three.", "reward": 0.0,
                "rewards": {"exact_answer": 0.0}}]
    _as_task(path, "grpo", [{"reward": 0.25 * i, "reward_std": 0.1} for i in range(3)], samples)
    snapshot = _snapshot(path)
    assert snapshot.samples_step == 10 and len(snapshot.samples) == 2
    assert snapshot.task_values == {"reward": 0.5, "reward_std": 0.1}
    lines = samples_text(snapshot, 78).plain.splitlines()
    assert lines[0] == "sampled at step 10:"
    assert lines[1].startswith("+1.00 What is two plus three? → two plus three is five.")
    assert lines[2].startswith("+0.00 What is one plus one?") and all(len(line) <= 79 for line in lines)


@pytest.mark.asyncio
async def test_the_monitor_draws_the_task_s_curves_and_numbers_at_80_columns(tmp_path, monkeypatch):
    from tuiwiz.ui.app import TuiwizApp

    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    path = write_fixture_run(tmp_path, steps=20, register=False)
    _as_task(path, "dpo", [{"rewards/chosen": 0.1 * i, "rewards/rejected": -0.3 * i, "rewards/margins": 0.4 * i,
                            "rewards/accuracies": 0.9} for i in range(5)])
    app = TuiwizApp(attach=str(path), offer_attach=False, blink=False, watch_interval=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "MonitorScreen") and app.screen.snapshot is not None)
        await pilot.pause(0.6)
        screen = app.screen
        assert screen.has_class("-task") and screen.query_one("#mon-lr-box").display
        text = screen_text(app)
        assert "chosen 0.4" in text and "margins 1.6" in text and "accuracies 0.9" in text


async def _data_screen(ui_env, task: str, data: str):
    state = prepared_state(ui_env, until="data")
    state.task, state.data_path = task, data
    return app_at(state, "data")


@pytest.mark.asyncio
async def test_the_data_step_shows_a_preference_pair_side_by_side_with_token_counts(ui_env):
    from tuiwiz.data.rendering import ModelText
    from tuiwiz.demo.build import demo_model_dir

    app = await _data_screen(ui_env, "dpo", "demo:preference")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=30)
        text = screen_text(app)
        record = app.screen.checked.data.records[0]
        assert "153 rows, preference" in text
        chosen, rejected = ModelText(demo_model_dir()).render_pair(record)
        counts = ModelText(demo_model_dir()).count([chosen.text, rejected.text])
        assert f"chosen · {counts[0]} tokens" in text and f"rejected · {counts[1]} tokens" in text
        assert record["chosen"].split()[0] in text and "<|im_start|>assistant" in text


@pytest.mark.asyncio
async def test_the_data_step_shows_a_grpo_prompt_with_its_reference_answer(ui_env):
    app = await _data_screen(ui_env, "grpo", "demo:arithmetic")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=30)
        record = app.screen.checked.data.records[0]
        assert app.screen.checked.data.format == "prompt"
        assert f"reference answer: {record['answer']}" in screen_text(app)


@pytest.mark.asyncio
async def test_choosing_dpo_offers_the_newest_sft_run_of_the_model_as_its_start(ui_env):
    from tuiwiz.ui.choices import draft_profile, recommend_for

    older = write_fixture_run(ui_env / "runs", run_id="demo-sft-older")
    newer = write_fixture_run(ui_env / "runs", run_id="demo-sft-newer")
    for path, created in ((older, 100.0), (newer, 200.0)):
        (path / "output").mkdir()
        (path / "output" / "tuiwiz.json").write_text(json.dumps(
            {"base_model": "demo", "model": "demo", "method": "lora", "task": "sft"}))
        state = json.loads((path / "state.json").read_text())
        (path / "state.json").write_text(json.dumps({**state, "created": created}))
    app = await _data_screen(ui_env, "sft", "demo:alpaca")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: on(app, "DataScreen") and app.screen.ready(), timeout=30)
        assert not app.screen.query_one("#data-start-row").display  # SFT starts from the model itself
        app.screen.query_one("#data-task").value = "dpo"
        await wait_for(pilot, lambda: app.state.start_from is not None and app.screen.ready(), timeout=30)
        assert app.screen.query_one("#data-start-row").display
        assert app.state.start_from == str(newer) and app.state.data_path == "demo:preference"
        assert "demo-sft-newer (sft, lora)" in screen_text(app)
        app.screen.query_one("#data-start").clear()  # "the model itself"
        await pilot.pause(0.2)
        assert app.state.start_from is None
        app.screen.query_one("#data-start").value = str(older)
        await pilot.pause(0.2)
    assert app.state.start_from == str(older)
    app.state.recommendation = recommend_for(app.state)
    profile = draft_profile(app.state)
    assert (profile.task, profile.model.start_from) == ("dpo", str(older))


class ScoreServer:
    """Stands in for JsonlProcess running `tuiwiz score RUN --jsonl` (its real output is tested in
    tests/test_reward_task.py): ``ready`` when ``loaded`` is set; a reply's score is its length / 10, "bad" is
    refused as the real server refuses a bad request."""

    def __init__(self):
        import threading

        self.loaded, self.sent, self.started, self.closed = threading.Event(), [], [], False

    def __call__(self, args, on_event, **kwargs):
        import threading

        self.started.append(list(args))
        self.on_event = on_event

        def load():
            on_event({"event": "loading", "label": args[1]})
            self.loaded.wait(30)
            on_event({"event": "ready", "label": args[1], "device": "cpu"})

        threading.Thread(target=load, daemon=True).start()
        return self

    def send(self, op, **fields):
        import threading

        self.sent.append({"op": op, **fields})
        if fields["completion"] == "bad":
            event = {"event": "error", "id": fields["id"], "kind": "input", "message": "bad request: no", "hint": None}
        else:
            event = {"event": "score", "id": fields["id"], "score": len(fields["completion"]) / 10}
        threading.Thread(target=self.on_event, args=(event,), daemon=True).start()  # as the reader thread does
        return True

    def close(self, timeout=5.0):
        self.closed = True
        return 0


@pytest.mark.asyncio
async def test_the_score_screen_loads_the_model_once_and_scores_each_reply(tmp_path):
    from textual.app import App

    from tuiwiz.ui.screens.score import ScoreScreen, score_args

    server = ScoreServer()
    screen = ScoreScreen(str(tmp_path), label="r-1", process=server)

    class Host(App):
        def on_mount(self):
            self.push_screen(screen)

    async with Host().run_test(size=SIZE) as pilot:
        # typed while the model loads: scored once it is ready
        await pilot.press(*"What is two plus three?", "enter", *"Sure! five.", "enter")
        await pilot.pause(0.2)
        assert "loading" in str(screen.query_one("#score-status").render()) and not server.sent
        server.loaded.set()
        await wait_for(pilot, lambda: screen.scores, timeout=30)
        assert screen.scores == [("What is two plus three?", "Sure! five.", 1.1)]
        assert "+1.1000  What is two plus three? → Sure! five." in str(screen.query_one("#score-results").render())
        screen.query_one("#score-reply").value = "bad"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "bad request" in str(screen.query_one("#score-status").render()), timeout=30)
        screen.query_one("#score-reply").value = "five"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.scores) == 2, timeout=30)
        assert screen.scores[-1] == ("What is two plus three?", "five", 0.4)
        assert server.started == [score_args(str(tmp_path))]  # one process, one model load, for every score
        assert [m["completion"] for m in server.sent] == ["Sure! five.", "bad", "five"]
        await pilot.press("escape")
        await wait_for(pilot, lambda: server.closed, timeout=10)


def test_a_reward_run_offers_scoring_where_others_offer_chat(tmp_path):
    from tuiwiz.ui.screens.post_flow import run_afterwards

    for task, wanted in (("reward", "score"), ("dpo", "chat"), ("seq2seq", "text2text"), ("sft", "chat")):
        path = write_fixture_run(tmp_path, run_id=f"r-{task}", register=False)
        (path / "profile.yaml").write_text(f"version: 1\ntask: {task}\n")
        assert run_afterwards(str(path)) == wanted


def test_evaluation_curves_of_a_task_come_from_its_eval_events(tmp_path):
    """seq2seq's exact match and a reward model's held-out accuracy are measured at evaluation, not logged
    with the loss: the reader draws them from the eval events."""
    from tuiwiz.ui.screens.monitor import short_metric

    path = write_fixture_run(tmp_path, steps=80, register=False)  # evaluations at steps 40 and 80
    events = [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]
    for event in events:
        if event["type"] == "run_start":
            event["task"] = "seq2seq"
        if event["type"] == "eval":
            event.update({"eval_exact_match": event["step"] / 100, "eval_rougeL": event["step"] / 80})
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    snapshot = _snapshot(path)
    assert snapshot.task_points["eval_exact_match"] == ((40, 80), (0.4, 0.8))
    assert snapshot.task_values == {"eval_exact_match": 0.8, "eval_rougeL": 1.0}
    assert short_metric("eval_exact_match") == "eval exact match" and short_metric("rewards/margins") == "margins"
