"""Runs outlive their launcher, stop with a checkpoint, and resume on the same curve."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.launch import stop_run, wait_finished
from tuiwiz.run.rundir import RunDir, read_state

from .inject import inject
from .support.processes import process_gone, run_cli, wait_for
from .support.runs import last_step, losses, make_profile, only_run, write_profile

pytestmark = pytest.mark.slow

# Loss after resuming matches the uninterrupted run within this, on CPU fp32. Measured: identical (0.0),
# since the same data order and RNG state come back from the checkpoint.
RESUME_TOLERANCE = 1e-4


def learning_rates(run: RunDir) -> dict[int, float]:
    return {e["step"]: e["learning_rate"] for e in read_events(run.events) if e["type"] == "log"}


# A step's log event is written just after that step's stop check (about a millisecond; steps take 30 ms here).
LOG_LATENCY = 0.01


def run_processes(run: RunDir) -> list[psutil.Process]:
    """The run's live processes: the runner, its descendants, and anything in its session or process group."""
    state = read_state(run)
    found = {}
    try:
        runner = psutil.Process(state.pid)
        found = {p.pid: p for p in (runner, *runner.children(recursive=True))}
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter():
        try:
            if state.pgid in (os.getsid(proc.pid), os.getpgid(proc.pid)):
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_detached(tmp_path, **settings) -> RunDir:
    started = run_cli("--profile", write_profile(tmp_path, "quickstart.yaml", **settings), "--detach")
    assert started.returncode == 0, started.stderr
    run = only_run(tmp_path)
    assert run.run_id == started.stdout.strip()
    return run


SETTINGS = dict(training__max_steps=60, training__logging_steps=1, training__save_steps=1000,
                training__per_device_train_batch_size=4)


def test_stop_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole_dir, parts_dir = tmp_path / "whole", tmp_path / "parts"
    whole_dir.mkdir(), parts_dir.mkdir()
    result = run_cli("--profile", write_profile(whole_dir, "quickstart.yaml", **SETTINGS))
    assert result.returncode == 0, result.stderr
    whole = only_run(whole_dir)

    run = start_detached(parts_dir, **SETTINGS)
    run_id = run.run_id
    wait_for(lambda: last_step(run) >= 10)
    # What `tuiwiz stop` does, in this process, so that the moment of the request is known to the millisecond.
    assert stop_run(run)
    asked = time.time()
    assert wait_finished(run, timeout=120) == "stopped"
    checkpoint = run.last_checkpoint()
    assert checkpoint is not None
    k = int(checkpoint.name.split("-")[1])
    events = read_events(run.events)
    seen = max(e["step"] for e in events if e["type"] == "log" and e["time"] <= asked + LOG_LATENCY)
    # The step under way when the request came is the one that ends with the checkpoint.
    assert 10 <= seen <= k <= seen + 1 < 60, (seen, k)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [k]
    assert max(e["step"] for e in events if e["type"] == "log") == k

    resumed = run_cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_state(run).status == "completed"
    starts = [e for e in read_events(run.events) if e["type"] == "run_start"]
    assert starts[-1]["resumed_from"].endswith(f"checkpoint-{k}")

    reference, curve, rates = losses(whole), losses(run), learning_rates(run)
    after = [step for step in reference if step > k]
    assert after and max(after) == 60 and max(curve) == 60
    worst = max(abs(curve[s] - reference[s]) for s in after)
    assert worst <= RESUME_TOLERANCE, f"resumed loss differs by {worst}"
    whole_rates = learning_rates(whole)
    assert all(math.isclose(rates[s], whole_rates[s], rel_tol=1e-6) for s in after)


def start_in_own_terminal(tmp_path, profile):
    """`tuiwiz --profile` as from a terminal of its own (its own session); returns it and its run."""
    launcher = subprocess.Popen([sys.executable, "-m", "tuiwiz", "--profile", str(profile)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = wait_for(lambda: next((RunDir(p) for p in (tmp_path / "runs").glob("quickstart-*")), None)
                   if (tmp_path / "runs").exists() else None)
    return launcher, run


def test_killing_the_launcher_leaves_the_run_going(tmp_path):
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=120, training__logging_steps=1,
                            training__per_device_train_batch_size=4)
    launcher, run = start_in_own_terminal(tmp_path, profile)
    wait_for(lambda: last_step(run) >= 5)
    runner_pid = read_state(run).pid
    assert runner_pid != launcher.pid
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its whole terminal session
    launcher.wait(timeout=10)
    wait_for(lambda: read_state(run).status in ("completed", "failed", "stopped"), timeout=300)
    assert read_state(run).status == "completed"
    assert max(losses(run)) == 120
    wait_for(lambda: process_gone(runner_pid), timeout=30)  # it ends by itself once the output is written
    attached = run_cli("attach", run.run_id)
    assert attached.returncode == 0 and "step 120/120" in attached.stdout


# Out-of-memory recovery on the CPU, under a real memory limit (it resumes lighter and completes, or gives up
# after training.auto_recover's limit): tests/test_oom_real.py. The tests below inject a CUDA out-of-memory
# error (tests/inject): a machine without a GPU cannot run out of GPU memory, and the demo model's full
# fine-tuning holds only about 15 MB more than LoRA (gradients and Adam states of 1.2M weights), too little
# for a real limit to tell the two apart.


def test_auto_recover_from_full_to_lora_starts_lora_afresh_and_keeps_the_full_checkpoint(tmp_path):
    profile = make_profile(tmp_path, "quickstart.yaml", method={"type": "full"},
                           training={"max_steps": 6, "logging_steps": 1, "save_steps": 2, "auto_recover": 1,
                                     "per_device_train_batch_size": 1, "gradient_checkpointing": True,
                                     "learning_rate": 1e-4})
    # Out of memory while every weight trains: nothing lighter of full fine-tuning is left but LoRA.
    result = run_cli("--profile", profile, env=inject(TUIWIZ_INJECT_OOM_FULL="1"))
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"
    events = read_events(run.events)
    [recovering] = [e for e in events if e["type"] == "status" and e["status"] == "recovering"]
    assert recovering["message"].startswith("full → lora: ")
    assert recovering["message"].endswith("; the full checkpoint at step 2 cannot be resumed as lora, so it starts "
                                          "at step 0 (the old checkpoints are kept in checkpoints.before-recovery-1)")
    assert recovering["checkpoint"] is None
    kept = run.path / "checkpoints.before-recovery-1" / "checkpoint-2"
    assert (kept / "model.safetensors").is_file()  # the full weights at step 2, untouched
    starts = [e for e in events if e["type"] == "run_start"]
    assert [s["method"] for s in starts] == ["full", "lora"] and starts[-1]["resumed_from"] is None
    assert yaml.safe_load(run.profile.read_text())["method"]["type"] == "lora"
    assert (run.output / "adapter_config.json").is_file()
    assert max(losses(run)) == 6


def test_without_auto_recover_out_of_memory_fails_with_a_hint(tmp_path):
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=6, training__save_steps=2)
    result = run_cli("--profile", profile, env=inject(TUIWIZ_INJECT_OOM_ABOVE_BATCH="4"))
    run = only_run(tmp_path)
    assert result.returncode == 1
    assert read_state(run).status == "failed"
    error = [e for e in read_events(run.events) if e["type"] == "error"][-1]
    assert error["kind"] == "oom_gpu" and "gradient_accumulation_steps" in error["hint"]


def test_hangup_of_the_launcher_and_two_viewers_at_once(tmp_path):
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=80, training__logging_steps=1,
                            training__per_device_train_batch_size=4)
    launcher, run = start_in_own_terminal(tmp_path, profile)
    wait_for(lambda: last_step(run) >= 3)
    os.killpg(launcher.pid, signal.SIGHUP)  # the terminal hangs up
    launcher.wait(timeout=10)
    viewers = [subprocess.Popen([sys.executable, "-m", "tuiwiz", "attach", run.run_id], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [viewer.communicate(timeout=300) for viewer in viewers]
    for viewer, (out, err) in zip(viewers, outputs):
        assert viewer.returncode == 0, err
        assert "step 80/80" in out and "completed" in out
    assert read_state(run).status == "completed"


def test_stop_while_the_model_loads_ends_stopped_not_failed(tmp_path):
    started = run_cli("--profile", write_profile(tmp_path, "quickstart.yaml"), "--detach")
    assert started.returncode == 0, started.stderr
    run = only_run(tmp_path)
    stopped = run_cli("stop", run.run_id)  # at once: the runner is still importing and loading
    assert stopped.returncode == 0, stopped.stderr
    assert read_state(run).status == "stopped"
    final = [e for e in read_events(run.events) if e["type"] == "status"][-1]
    assert final["status"] == "stopped"
    assert not [e for e in read_events(run.events) if e["type"] == "error"]


def test_a_graceful_stop_leaves_no_process_of_the_run(tmp_path):
    run = start_detached(tmp_path, training__max_steps=400, training__logging_steps=1, training__save_steps=1000)
    wait_for(lambda: last_step(run) >= 2)
    assert read_state(run).status == "running" and run_processes(run)
    stopped = run_cli("stop", run.run_id)
    assert stopped.returncode == 0 and f"run {run.run_id}: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert run_processes(run) == []  # `stop` waits for the runner; by then nothing of the run is left
    assert read_state(run).status == "stopped" and run.last_checkpoint() is not None


def test_a_forced_stop_kills_every_process_and_reads_stopped(tmp_path):
    run = start_detached(tmp_path, training__max_steps=400, training__logging_steps=1, training__save_steps=1000)
    wait_for(lambda: last_step(run) >= 2)
    processes = run_processes(run)
    assert processes
    killed = run_cli("stop", run.run_id, "--force")
    assert killed.returncode == 0 and f"run {run.run_id}: stopped" in killed.stdout, killed.stdout + killed.stderr
    assert run_processes(run) == [] and not any(_alive(p) for p in processes)
    state = read_state(run)
    assert (state.status, state.error) == ("stopped", "killed by the user")
    assert run.last_checkpoint() is None  # no time to save one
    listed = run_cli("runs", "--json")
    [summary] = [s for s in json.loads(listed.stdout) if s["run_id"] == run.run_id]
    assert summary["status"] == "stopped"
