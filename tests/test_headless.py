"""`tuiwiz --profile` in the foreground, as a user at a terminal runs it: Ctrl-C, and what it prints."""

import contextlib
import json
import math
import re
import signal
import subprocess
import sys

import pytest

from tuiwiz.profile.io import load_profile
from tuiwiz.run.events import read_events
from tuiwiz.run.launch import stop_run
from tuiwiz.run.rundir import RunDir, read_state

from .support.processes import as_foreground, process_gone, run_cli, wait_for
from .support.runs import last_step, only_run, write_profile

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def followed_run(tmp_path):
    """`tuiwiz --profile` in the foreground on a long quickstart, once its first step is logged:
    (launcher, run). Whatever the test does, no runner is left behind."""
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=400, training__logging_steps=1,
                            training__save_steps=1000, training__per_device_train_batch_size=4)
    with open(tmp_path / "out.txt", "w") as out:  # a file, not a pipe nobody drains
        launcher = subprocess.Popen([sys.executable, "-m", "tuiwiz", "--profile", str(profile)],
                                    stdout=out, stderr=subprocess.STDOUT, preexec_fn=as_foreground)
    run = None
    try:
        run = wait_for(lambda: next((RunDir(p) for p in (tmp_path / "runs").glob("quickstart-*")), None))
        wait_for(lambda: last_step(run) >= 1)
        yield launcher, run
    finally:
        if launcher.poll() is None:  # the test failed: leave no runner behind
            launcher.kill()
            if run is not None:
                stop_run(run, force=True)


def test_ctrl_c_stops_the_run_with_a_checkpoint(tmp_path):
    with followed_run(tmp_path) as (launcher, run):
        runner_pid = read_state(run).pid
        assert runner_pid != launcher.pid
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground command
        assert launcher.wait(timeout=120) == 130, (tmp_path / "out.txt").read_text()
    state = read_state(run)
    assert state.status == "stopped"
    checkpoint = run.last_checkpoint()
    assert checkpoint is not None and (checkpoint / "adapter_model.safetensors").exists()
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 400
    assert process_gone(runner_pid)  # the launcher waited for its runner to end
    text = (tmp_path / "out.txt").read_text()
    assert "stopping" in text and f"tuiwiz resume {run.run_id}" in text

    logs = [e for e in read_events(run.events) if e["type"] == "log"]
    assert logs
    for event in logs:
        assert event["epoch"] > 0
        assert math.isfinite(event["grad_norm"]) and event["grad_norm"] > 0
        assert event["tokens_per_second"] > 0
        assert event["memory"]["rss_mb"] > 0


def test_final_output_names_the_output_folder_and_the_train_loss(tmp_path):
    profile = write_profile(tmp_path, "quickstart.yaml", training__max_steps=4,
                            training__per_device_train_batch_size=4)
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    end = next(e for e in read_events(run.events) if e["type"] == "run_end")
    lines = result.stdout.strip().splitlines()
    done = lines.index(next(line for line in lines if line.startswith("completed: ")))
    loss = re.search(r"train loss (\d+\.\d+)", lines[done])
    assert loss and math.isclose(float(loss.group(1)), end["metrics"]["train_loss"], abs_tol=1e-4), lines
    assert lines[done + 1] == f"output: {run.output}"
    assert lines[done + 3] == "next:" and f"  tuiwiz chat {run.run_id}" in lines[done + 4:]  # what to do with it
    assert (run.output / "adapter_config.json").exists()
    # what the run does not use is not imported (tuiwiz/train/imports.py), and the run never missed it
    assert "tuiwiz: not importing bitsandbytes, wandb, deepspeed: this run does not use them" in run.log.read_text()
    resolved = json.loads(run.trainer_args.read_text())  # the Trainer's own arguments, as it resolved them
    assert (resolved["max_steps"], resolved["per_device_train_batch_size"]) == (4, 4)
    assert resolved["learning_rate"] == load_profile(profile).profile.learning_rate


def test_a_forced_stop_of_a_followed_run_reads_stopped_not_killed(tmp_path):
    """`tuiwiz stop --force` from another terminal while `tuiwiz --profile` follows the run: the launcher
    sees its runner end by SIGKILL, but the user asked for it, so the run is stopped, not failed."""
    with followed_run(tmp_path) as (launcher, run):
        forced = run_cli("stop", run.run_id, "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert launcher.wait(timeout=120) == 130, (tmp_path / "out.txt").read_text()
    state = read_state(run)
    assert (state.status, state.error) == ("stopped", "killed by the user")
    assert not [e for e in read_events(run.events) if e["type"] == "error" and e.get("kind") == "killed"]
