"""The event log reader and the run state, checked against real processes."""

import json
import os
import subprocess
import sys

import pytest

from tuiwiz.errors import UserError
from tuiwiz.run.event_types import LogEvent, StatusEvent, parse_event
from tuiwiz.run.events import EventTail, EventWriter, iter_tail_events, read_events
from tuiwiz.run.rundir import (
    RunDir,
    RunnerLock,
    RunState,
    effective_status,
    find_run,
    read_state,
    register,
    registered_runs,
    summarize,
    update_state,
    write_state,
)

from .support import PROFILES
from .support.processes import run_cli
from .support.runs import build_trainer, only_run, write_profile


def test_torn_last_line_is_left_for_the_next_read(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit(StatusEvent(status="running"))
    with open(path, "a") as handle:
        handle.write('{"type": "log", "step": 1')  # a writer caught mid-line
    tail = EventTail(path)
    assert [e["type"] for e in tail.read()] == ["status"]
    with open(path, "a") as handle:
        handle.write(', "loss": 2.0}\n')
    assert tail.read() == [{"type": "log", "step": 1, "loss": 2.0}]
    assert tail.read() == []


def test_garbage_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "status"}\nnot json\n[1, 2]\n{"type": "log", "step": 3}\n')
    tail = EventTail(path)
    assert [e["type"] for e in tail.read()] == ["status", "log"]
    assert tail.skipped == 2


def test_tail_of_a_long_log_reads_only_whole_events(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    for step in range(5000):
        writer.emit(LogEvent(step=step, max_steps=5000, loss=1.0 / (step + 1)))
    events = list(iter_tail_events(path, nbytes=4096))
    assert events and events[-1]["step"] == 4999
    steps = [e["step"] for e in events]
    assert steps == list(range(steps[0], 5000))
    assert len(read_events(path)) == 5000


def test_unknown_event_type_is_a_bug(tmp_path):
    with pytest.raises(ValueError):
        EventWriter(tmp_path / "e.jsonl").emit(parse_event({"type": "nonsense"}))  # read, never written


def _run(tmp_path, name="r1") -> RunDir:
    run = RunDir(tmp_path / name)
    run.path.mkdir()
    write_state(run, RunState(run_id=name, status="created"))
    return run


def test_running_status_is_checked_against_the_process(tmp_path):
    import psutil

    run = _run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        update_state(run, status="running", pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())
        assert effective_status(run) == "running"
        proc.kill()
        proc.wait()
        assert effective_status(run) == "failed"
        assert "gone" in summarize(run).error
    finally:
        proc.kill()


def test_reused_pid_is_not_mistaken_for_the_runner(tmp_path):
    run = _run(tmp_path)
    update_state(run, status="running", pid=os.getpid(), create_time=1.0)  # this process, but a different start
    assert effective_status(run) == "failed"


def test_update_state_only_from_keeps_newer_status(tmp_path):
    run = _run(tmp_path)
    update_state(run, status="completed")
    assert update_state(run, only_from=("starting",), status="running") is None
    assert effective_status(run) == "completed"


def test_registry_and_find_run(tmp_path):
    a, b = _run(tmp_path, "alpha-1"), _run(tmp_path, "beta-1")
    register(a)
    register(b)
    register(a)
    assert [r.run_id for r in registered_runs()] == ["alpha-1", "beta-1"]
    assert find_run("alpha-1") == a
    assert find_run("bet") == b  # a unique prefix
    assert find_run(str(b.path)) == b
    with pytest.raises(UserError, match="no run 'gamma'"):
        find_run("gamma")


def test_one_runner_per_run_dir(tmp_path):
    run = _run(tmp_path)
    first = RunnerLock(run)
    assert first.acquire()
    code = ("from tuiwiz.run.rundir import RunDir, RunnerLock; from pathlib import Path; "
            f"print(RunnerLock(RunDir(Path({str(run.path)!r}))).acquire())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.stdout.strip() == "False"
    first.release()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.stdout.strip() == "True"


@pytest.mark.slow
def test_run_start_carries_the_resolved_settings(tmp_path):
    # 20 examples in micro-batches of 4 are 5 batches an epoch; accumulating 2, an epoch is 3 steps: 6 in 2 epochs.
    profile = write_profile(tmp_path, "quickstart.yaml", data__limit=20, training__num_train_epochs=2,
                            training__per_device_train_batch_size=4, training__gradient_accumulation_steps=2,
                            training__logging_steps=1)
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    events = read_events(run.events)
    start = next(e for e in events if e["type"] == "run_start")
    logs = [e for e in events if e["type"] == "log"]
    assert start["train_examples"] == 20
    assert start["max_steps"] == 6
    assert {e["max_steps"] for e in logs} == {6} and logs[-1]["step"] == 6  # what the Trainer itself resolved
    assert start["total_train_batch_size"] == 4 * 2 * 1
    assert start["dtype"] == "float32"
    # target_modules: auto became the model's linear layers; the saved adapter names the same ones.
    saved = json.loads((run.output / "adapter_config.json").read_text())["target_modules"]
    assert start["target_modules"] == sorted(saved)
    assert start["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.slow
@pytest.mark.parametrize("base, wrapped", [
    ("demo-ia3.yaml", ["down_proj", "k_proj", "v_proj"]),  # peft's IA3 default for Llama
    ("demo-prompt-tuning.yaml", None),  # virtual tokens, no wrapped layer
    ("demo-full.yaml", None),
])
def test_run_start_names_the_wrapped_modules_per_method(tmp_path, base, wrapped):
    _, info = build_trainer(tmp_path, base)
    assert info.model.target_modules == wrapped


def test_a_second_runner_is_refused_through_the_cli_and_the_runner_itself(tmp_path):
    """State can be stale (a copied run folder, a hand-edited state.json): the lock still decides."""
    run = _run(tmp_path)
    update_state(run, status="stopped")
    (run.path / "profile.yaml").write_text((PROFILES / "quickstart.yaml").read_text())
    holder = RunnerLock(run)
    assert holder.acquire()  # a runner holds the run dir
    try:
        before = sorted(p.name for p in run.path.iterdir())
        resumed = run_cli("resume", run.path)
        assert resumed.returncode == 2, resumed.stdout + resumed.stderr
        assert resumed.stderr.startswith("error: run r1 already has a runner\n")
        assert "hint: `tuiwiz attach r1` follows it" in resumed.stderr and "Traceback" not in resumed.stderr
        direct = subprocess.run([sys.executable, "-m", "tuiwiz.train", str(run.path), "--resume"],
                                capture_output=True, text=True, timeout=60)
        assert direct.returncode == 3 and f"another runner already holds {run.path}" in direct.stderr
        assert sorted(p.name for p in run.path.iterdir()) == before  # nothing written by either
        assert read_state(run).status == "stopped"
    finally:
        holder.release()

