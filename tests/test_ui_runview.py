"""The monitor's reader: bounded memory and time on long logs, incremental reads, torn lines, redraw rate."""

from __future__ import annotations

import json
import time

import pytest

from tuiwiz.run.rundir import RunDir
from tuiwiz.ui import runview
from tuiwiz.ui.runview import RunReader, Series

from .support.testing import write_fixture_run


def test_series_thins_by_stride_and_keeps_the_last_point():
    series = Series(cap=100)
    for step in range(1, 100_001):
        series.add(step, 1.0 / step)
    xs, ys = series.points()
    assert len(series) <= 100
    assert xs[-1] == 100_000 and ys[-1] == pytest.approx(1e-5)
    assert xs[0] < 2000  # the start of the run is still there
    assert list(xs) == sorted(xs)


def test_series_after_a_resume_keeps_the_newest_values():
    series = Series()
    for step in range(1, 11):
        series.add(step, 10.0)
    for step in range(6, 9):  # resumed from checkpoint 5
        series.add(step, 1.0)
    xs, ys = series.points()
    assert xs == (1, 2, 3, 4, 5, 6, 7, 8) and ys[-3:] == (1.0, 1.0, 1.0)


def test_series_skips_non_finite_values():
    series = Series()
    series.add(1, float("nan"))
    series.add(2, None)
    series.add(3, 2.0)
    assert series.points() == ((3,), (2.0,))


def test_reader_follows_a_growing_log_and_ignores_a_torn_line(tmp_path):
    path = write_fixture_run(tmp_path, status="stopped", steps=10, max_steps=20, register=False)
    reader = RunReader(RunDir(path), gpus=False)
    assert reader.poll()
    snapshot, lines = reader.take()
    assert snapshot.step == 10 and snapshot.status == "stopped" and snapshot.model == "demo"
    assert lines and "loss" in lines[-1]
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "log", "time": 1.0, "step": 11, "max_steps": 20, "loss": 1.5}) + "\n")
        handle.write('{"type": "log", "step": 12, "lo')  # a writer mid-line
    reader.poll()
    snapshot, _ = reader.take()
    assert snapshot.step == 11 and snapshot.loss == 1.5
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write('ss": 1.25, "max_steps": 20, "time": 2.0}\n')
    reader.poll()
    snapshot, lines = reader.take()
    assert snapshot.step == 12 and snapshot.loss == 1.25
    assert lines == []  # nothing new in train.log since the last take


def test_reader_eta_from_the_step_rate(tmp_path):
    path = write_fixture_run(tmp_path, status="stopped", steps=100, max_steps=200, register=False)
    reader = RunReader(RunDir(path), gpus=False)
    reader.poll()
    # the fixture logs every 5 steps, 0.5 s a step: 100 steps to go at 2 steps/s
    assert reader._eta(100, 200) == pytest.approx(50.0)


def test_reader_opens_a_long_log_in_bounded_time(tmp_path, monkeypatch):
    """A long log is sampled, not read whole: the cost does not grow with its length."""
    monkeypatch.setattr(runview, "SMALL_LOG", 64 * 1024)
    monkeypatch.setattr(runview, "TAIL_BYTES", 64 * 1024)
    path = write_fixture_run(tmp_path, status="stopped", steps=10, max_steps=300_000, register=False)
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        for start in range(11, 300_001, 10_000):
            handle.write("".join(json.dumps({"type": "log", "time": float(s), "step": s, "max_steps": 300_000,
                                             "loss": 1.0 + 1.0 / s}) + "\n"
                                 for s in range(start, min(start + 10_000, 300_001))))
    reader = RunReader(RunDir(path), gpus=False)
    t = time.perf_counter()
    reader.poll()
    took = time.perf_counter() - t
    snapshot, _ = reader.take()
    assert snapshot.sampled and snapshot.step == 300_000
    assert snapshot.model == "demo"  # run_start from the head
    assert len(snapshot.loss_points[0]) <= runview.SERIES_CAP + 1
    assert reader.events < 20_000  # far fewer than the 300k lines were parsed
    assert took < 2.0


def test_reader_skips_a_flood_instead_of_parsing_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runview, "TAIL_BYTES", 32 * 1024)
    path = write_fixture_run(tmp_path, status="stopped", steps=10, max_steps=10**6, register=False)
    reader = RunReader(RunDir(path), gpus=False)
    reader.poll()
    seen = reader.events
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"type": "log", "time": float(s), "step": s, "max_steps": 10**6,
                                         "loss": 1.0}) + "\n" for s in range(11, 100_011)))
    reader.poll()
    snapshot, _ = reader.take()
    assert snapshot.step == 100_010
    assert reader.events - seen < 10_000


@pytest.mark.asyncio
async def test_monitor_redraws_at_most_twice_a_second_and_caps_its_log(tmp_path, monkeypatch):
    """Events arriving far faster than the eye: charts still redraw at most 2 Hz, the log stays capped."""
    from tuiwiz.ui.app import TuiwizApp
    from tuiwiz.ui.screens import monitor

    monkeypatch.setenv("TUIWIZ_HARDWARE", "cpu-only")
    path = write_fixture_run(tmp_path, status="stopped", steps=10, max_steps=10**6, register=False)
    app = TuiwizApp(attach=str(path), offer_attach=False, blink=False, watch_interval=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        while type(app.screen).__name__ != "MonitorScreen" or app.screen.snapshot is None:
            await pilot.pause(0.02)
        screen = app.screen
        before = screen.redraws
        start = time.perf_counter()
        step = 10
        with open(path / "events.jsonl", "a", encoding="utf-8") as events, open(path / "train.log", "a") as log:
            while time.perf_counter() - start < 2.0:
                lines = []
                for _ in range(200):
                    step += 1
                    lines.append(json.dumps({"type": "log", "time": time.time(), "step": step,
                                             "max_steps": 10**6, "loss": 1.0 + 1.0 / step}))
                events.write("\n".join(lines) + "\n")
                events.flush()
                log.write("".join(f"line {step}-{i}\n" for i in range(100)))
                log.flush()
                await pilot.pause(0.02)
        elapsed = time.perf_counter() - start
        await pilot.pause(1.0)
        redraws = screen.redraws - before
        assert 1 <= redraws <= 2 * (elapsed + 1.0) + 1
        assert screen.query_one("#mon-log").line_count <= monitor.LOG_MAX_LINES
        assert screen.snapshot.step == step  # the last event shows


def test_a_warning_of_the_run_shows_under_its_result(tmp_path):
    """A rank that died after every rank reported leaves the run completed, with a warning event: the
    monitor's result says it, as `tuiwiz --profile` prints it."""
    from tuiwiz.ui.screens.monitor import result_text

    path = write_fixture_run(tmp_path, status="completed", steps=10, max_steps=10, register=False)
    warning = "rank 1 aborted (SIGABRT) after it had finished; the saved model is complete"
    with open(path / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "warning", "time": 3.0, "message": warning}) + "\n")
    reader = RunReader(RunDir(path), gpus=False)
    reader.poll()
    snapshot, _ = reader.take()
    assert snapshot.status == "completed" and snapshot.warnings == (warning,)
    shown = result_text(snapshot).plain
    assert shown.startswith("✓ Completed") and f"⚠ {warning}" in shown


def test_a_finished_run_with_tensorboard_events_shows_the_command(tmp_path, monkeypatch):
    """The reader (in the monitor's worker thread) looks for the run's tensorboard/ folder; the result
    panel names the command to open it, and says nothing of it when the run wrote none."""
    from tuiwiz.ui.screens.monitor import result_text

    monkeypatch.setenv("TUIWIZ_STATE_DIR", str(tmp_path / "state"))
    path = write_fixture_run(tmp_path / "runs", register=False)
    reader = RunReader(RunDir(path), gpus=False)
    reader.poll()
    snapshot, _ = reader.take()
    assert snapshot.tensorboard is None and "tensorboard" not in result_text(snapshot).plain
    (path / "tensorboard").mkdir()
    reader.poll()
    snapshot, _ = reader.take()
    assert snapshot.tensorboard == str(path / "tensorboard")
    assert f"tensorboard --logdir {path / 'tensorboard'}" in result_text(snapshot).plain
