"""Runs that fail: each ends `failed` (exit code 1) with the right error kind and hint, and leaves no process.

Real failing runs through the CLI and the detached runner, on the demo model:
- diverging full fine-tuning (learning rate 0.9, weight decay 1e6, no clipping) -> nan_loss (a nan gradient norm);
- exploding but finite loss (learning rate 0.9, no clipping, no weight decay) -> diverged;
- weights truncated or removed after the launch's checks -> model_corrupt / model_missing;
- the runner SIGKILLed mid-run -> `runs --json` and `attach` say failed, never running; under the launcher
  that follows it (its parent), killed by signal 9 with a hint;
- `import bitsandbytes` failing (a shadowing package on PYTHONPATH) for QLoRA -> dependency_missing;
- out of memory: an address-space limit (RLIMIT_AS, 8 GiB) on the runner and a single 17k-token
  packed sequence under eager attention, whose score matrix alone needs 4.6 GB: torch's CPU
  allocator really fails -> oom_cpu (skipped where a GPU would take the run);
- a full disk: a file-size limit (RLIMIT_FSIZE, 2 MB) makes the first checkpoint's write fail with
  EFBIG, the same path as ENOSPC (an OSError from deep inside safetensors). A real ENOSPC needs a
  full file system (root, or a tmpfs); it is unit-tested with a real write to /dev/full instead.
Every exception kind is also unit-tested on `classify` with real exceptions.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tuiwiz.errors import UserError
from tuiwiz.profile.io import load_profile
from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state
from tuiwiz.train.failures import PATIENCE, LossDiverged, LossWatch, NonFiniteLoss, classify

from .support import PROFILES
from .support.processes import process_gone, run_cli, wait_for
from .support.runs import make_profile, only_run


def group_members(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def assert_no_process_left(run: RunDir) -> None:
    state = read_state(run)
    assert state.pid, "the runner never recorded itself"
    wait_for(lambda: process_gone(state.pid), timeout=30)
    wait_for(lambda: not group_members(state.pgid or state.pid), timeout=30)


def assert_failed(result, run: RunDir, kind: str, hint: str) -> dict:
    log = run.log.read_text(errors="replace")
    assert result.returncode == 1, result.stdout + result.stderr + log
    assert "Traceback" not in result.stdout + result.stderr
    state = read_state(run)
    assert (state.status, state.exit_code) == ("failed", 1)
    errors = [e for e in read_events(run.events) if e["type"] == "error"]
    assert errors, log
    error = errors[-1]
    assert error["kind"] == kind, (error, log[-3000:])
    assert hint in error["hint"], error["hint"]
    assert f"error ({kind}): " in result.stdout
    assert_no_process_left(run)
    return error


# --- real failing runs -----------------------------------------------------------------


@pytest.mark.slow
def test_diverging_loss_stops_the_run_as_nan_loss(tmp_path):
    profile = make_profile(
        tmp_path, "quickstart.yaml", data={"max_length": 64}, method={"type": "full"},
        training={"max_steps": 6, "warmup_steps": 0, "learning_rate": 0.9, "weight_decay": 1e6,
                  "max_grad_norm": 0.0, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 100},
    )
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    error = assert_failed(result, run, "nan_loss", "lower training.learning_rate")
    # Weight decay 1e6 blows the weights up within a few steps (step 2 with earlier releases of the stack, 4 now):
    # the gradient norm is nan while the loss is still finite, and the run stops there.
    found = re.match(r"the gradient norm became nan at step (\d) \(the loss was still ([0-9.]+)\)", error["message"])
    assert found and 2 <= int(found[1]) < 6, error["message"]
    assert run.last_checkpoint() is None and not run.output.exists()


@pytest.mark.slow
def test_exploding_finite_loss_stops_the_run_as_diverged(tmp_path):
    # Measured (CPU, fp32): the loss goes 7.6, 15.6, 102, 105, 149, 84 (start 15.6, lowest 7.6), all finite;
    # steps 4 to 6 are each above 3x the start and 5x the lowest, so the run stops at step 6.
    profile = make_profile(
        tmp_path, "quickstart.yaml", data={"max_length": 64}, method={"type": "full"},
        training={"max_steps": 12, "warmup_steps": 0, "learning_rate": 0.9, "lr_scheduler_type": "constant",
                  "max_grad_norm": 0.0, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 3},
    )
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    error = assert_failed(result, run, "diverged", "lower training.learning_rate (try a third of it)")
    assert error["message"].startswith("the loss diverged: ") and "at step 6," in error["message"]
    events = read_events(run.events)
    curve = {e["step"]: e["loss"] for e in events if e["type"] == "log"}
    assert max(curve) == 6 and all(math.isfinite(loss) for loss in curve.values()), curve
    assert max(curve.values()) > 10 * curve[1]
    # The step-3 checkpoint stays; the save due at step 6 is cancelled (those weights have blown up).
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3]
    assert run.last_checkpoint().name == "checkpoint-3" and not run.output.exists()


def _watch(losses, grad_norm=1.0, scaled_fp16=False):
    """Feed logged losses to a LossWatch; the step (1-based) it stopped at and the failure, or (None, None)."""
    watch = LossWatch()
    for step, loss in enumerate(losses, 1):
        failure = watch.check(step, loss, grad_norm, scaled_fp16=scaled_fp16)
        if failure is not None:
            return step, failure
    return None, None


def test_loss_watch_stops_a_blow_up_after_patience_logs():
    step, failure = _watch([7.6, 15.6, 102.4, 104.6, 149.3, 83.7, 59.6])
    assert step == 3 + PATIENCE and isinstance(failure, LossDiverged)
    assert "149.3" not in str(failure) and "83.7 at step 6" in str(failure)
    assert classify(failure).kind == "diverged" and "bf16" in classify(failure).hint


def test_loss_watch_leaves_noisy_and_overfitting_runs_alone():
    # Overfitting to near zero, then single hard (mislabelled) examples at 100x the lowest and above the start.
    overfit = [2.0, 2.3, 1.8, 1.0, 0.4, 0.05, 0.01, 0.02, 7.5, 0.01, 0.03, 8.0, 0.02, 6.9, 0.02]
    assert _watch(overfit) == (None, None)
    # An easy first batch is not the anchor: the median of the first three logs is.
    assert _watch([0.1, 2.5, 2.4, 2.2, 2.6, 2.0, 1.9, 2.3]) == (None, None)
    # A spike that lasts fewer than PATIENCE logs.
    assert _watch([3.0, 2.8, 2.9, 2.0, 12.0, 14.0, 1.9, 1.8]) == (None, None)


def test_loss_watch_leaves_a_loss_around_zero_alone():
    # GRPO's policy-gradient loss wanders around zero and below: no ratio to its lowest means a blow-up.
    surrogate = [0.0, -0.01, 0.02, 0.0, 0.3, 0.4, 0.35, 0.5, -0.2, 0.45, 0.5, 0.6]
    assert _watch(surrogate) == (None, None)
    assert _watch([0.02, 0.01, 0.03, 0.5, 0.6, 0.7, 0.8]) != (None, None)  # a positive floor still counts


def test_loss_watch_infinite_gradient_norm():
    _, failure = _watch([3.0, 2.9], grad_norm=float("inf"))
    assert str(failure) == "the gradient norm became inf at step 1 (the loss was still 3)"
    assert classify(failure).kind == "nan_loss"
    assert _watch([3.0, 2.9], grad_norm=float("inf"), scaled_fp16=True) == (None, None)  # the scaler's skip


def test_loss_watch_keeps_its_references_across_a_resume():
    resumed = LossWatch()
    for loss in (7.6, 15.6, 8.0, 1.0, 0.5):  # the log history a checkpoint brings back
        resumed.observe(loss)
    # After the resume, loss 3.0 is 6x the lowest but under 3x the start (8.0): healthy, not a blow-up.
    assert all(resumed.check(step, 3.0, 1.0, scaled_fp16=False) is None for step in range(6, 12))
    assert [resumed.check(step, 30.0, 1.0, scaled_fp16=False) is None for step in range(12, 15)] == [True, True, False]


@pytest.fixture(scope="module")
def demo_model():
    from tuiwiz.demo.build import ensure_demo_model

    return ensure_demo_model()


def _launch_then_damage(tmp_path: Path, demo_model: Path, damage) -> tuple:
    """Start a run on a copy of the demo model, damage the copy while the runner imports torch, follow it."""
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    profile = make_profile(tmp_path, "quickstart.yaml", model={"name_or_path": str(model)},
                           training={"max_steps": 2})
    started = run_cli("--profile", profile, "--detach")
    assert started.returncode == 0, started.stderr
    damage(model / "model.safetensors")  # the runner takes seconds to import torch before it loads
    run = only_run(tmp_path)
    return run_cli("attach", run.run_id), run


@pytest.mark.slow
def test_truncated_weights_are_model_corrupt(tmp_path, demo_model):
    def truncate(path: Path) -> None:
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)

    result, run = _launch_then_damage(tmp_path, demo_model, truncate)
    error = assert_failed(result, run, "model_corrupt", "download the model again")
    assert "the model's weights cannot be read" in error["message"]


@pytest.mark.slow
def test_removed_weights_are_model_missing(tmp_path, demo_model):
    result, run = _launch_then_damage(tmp_path, demo_model, Path.unlink)
    error = assert_failed(result, run, "model_missing", "needs model.safetensors")
    assert "the model's weights are missing" in error["message"]


@pytest.mark.slow
def test_a_detached_runner_killed_by_a_signal_reads_killed_by_that_signal(tmp_path):
    """No launcher follows a detached run: its watcher, the trainer's parent, records the SIGKILL
    (as from the kernel's OOM killer) and ends the run's leftovers."""
    profile = make_profile(tmp_path, "quickstart.yaml",
                           training={"max_steps": 400, "logging_steps": 1, "save_steps": 1000})
    started = run_cli("--profile", profile, "--detach")
    assert started.returncode == 0, started.stderr
    run = only_run(tmp_path)
    wait_for(lambda: any(e["type"] == "log" for e in read_events(run.events)), timeout=240)
    state = read_state(run)
    assert state.status == "running"
    trainer = psutil.Process(state.pid)
    watcher = trainer.parent()
    assert watcher.cmdline()[-2:] == ["tuiwiz.train", str(run.path)]  # the runner's own parent, not a launcher
    trainer.kill()
    message = "killed by signal 9 (SIGKILL: often the kernel's out-of-memory killer; check dmesg)"
    wait_for(lambda: read_state(run).status == "failed", timeout=30)
    assert (read_state(run).error, read_state(run).exit_code) == (message, -signal.SIGKILL)
    assert_no_process_left(run)

    listed = run_cli("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    [summary] = [s for s in json.loads(listed.stdout) if s["run_id"] == run.run_id]
    assert (summary["status"], summary["error"]) == ("failed", message)
    attached = run_cli("attach", run.run_id)
    assert attached.returncode == 1, attached.stdout + attached.stderr
    assert f"error (killed): {message}" in attached.stdout and "hint: if memory ran out" in attached.stdout
    assert "Traceback" not in attached.stdout + attached.stderr


@pytest.mark.slow
def test_a_runner_killed_under_its_launcher_reads_killed_by_signal(tmp_path):
    """The launcher that follows its runner is its parent: it reads the signal, as the OOM killer's SIGKILL."""
    profile = make_profile(tmp_path, "quickstart.yaml",
                           training={"max_steps": 400, "logging_steps": 1, "save_steps": 1000})
    launcher = subprocess.Popen([sys.executable, "-m", "tuiwiz", "--profile", str(profile)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = RunDir(wait_for(lambda: next((tmp_path / "runs").glob("profile-*"), None)
                          if (tmp_path / "runs").exists() else None))
    wait_for(lambda: any(e["type"] == "log" for e in read_events(run.events)), timeout=240)
    os.kill(read_state(run).pid, signal.SIGKILL)  # the runner alone, as the kernel's OOM killer would
    out, err = launcher.communicate(timeout=60)
    message = "killed by signal 9 (SIGKILL: often the kernel's out-of-memory killer; check dmesg)"
    assert launcher.returncode == 1, out + err
    assert f"error (killed): {message}" in out and "hint: if memory ran out" in out, out
    assert "Traceback" not in out + err
    state = read_state(run)
    assert (state.status, state.exit_code, state.error) == ("failed", -signal.SIGKILL, message)
    assert_no_process_left(run)

    listed = run_cli("runs", "--json")
    [summary] = [s for s in json.loads(listed.stdout) if s["run_id"] == run.run_id]
    assert (summary["status"], summary["error"]) == ("failed", message)
    attached = run_cli("attach", run.run_id)
    assert attached.returncode == 1 and f"error (killed): {message}" in attached.stdout, attached.stdout


def test_record_exit_only_for_a_signal_that_ended_a_live_status(tmp_path):
    from tuiwiz.run.rundir import RunState, unrecorded_end, update_state, write_state
    from tuiwiz.train.watcher import record_exit

    run = RunDir(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(run, RunState(run_id="r", status="running", pid=int(gone.stdout)))
    assert not record_exit(run, 0) and not record_exit(run, None) and read_state(run).status == "running"
    assert record_exit(run, -signal.SIGSEGV)
    assert read_state(run).error == "killed by signal 11 (SIGSEGV: a crash in native code)"
    [error] = [e for e in read_events(run.events) if e["type"] == "error"]
    assert error["kind"] == "killed" and f"tuiwiz resume {run.run_id}" in error["hint"]
    assert not record_exit(run, -signal.SIGKILL)  # the final status is written once
    update_state(run, status="running")
    assert record_exit(run, -77) and read_state(run).error == "killed by signal 77"
    update_state(run, status="stopped", error="killed by the user")  # a forced stop is no failure
    assert not record_exit(run, -signal.SIGKILL) and read_state(run).status == "stopped"
    # a front end only shows an end nobody recorded (the trainer and its watcher killed together), never writes
    update_state(run, status="running", pid=os.getpid(), create_time=psutil.Process().create_time())
    assert unrecorded_end(run, -signal.SIGKILL) is None  # the watcher killed alone: the trainer lives on
    update_state(run, pid=int(gone.stdout), create_time=None)
    assert unrecorded_end(run, -signal.SIGKILL).kind == "killed" and read_state(run).status == "running"


@pytest.mark.slow
def test_missing_bitsandbytes_for_qlora_is_dependency_missing(tmp_path):
    shadow = tmp_path / "shadow" / "bitsandbytes"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'bitsandbytes'\", name='bitsandbytes')\n")
    profile = make_profile(tmp_path, "demo-qlora-4bit.yaml", training={"max_steps": 2})
    result = run_cli("--profile", profile, env={"PYTHONPATH": str(shadow.parent)})
    run = only_run(tmp_path)
    error = assert_failed(result, run, "dependency_missing", "pip install bitsandbytes")
    assert error["message"].endswith(": bitsandbytes")
    assert "tuiwiz[qlora]" in error["hint"]


def _has_gpu() -> bool:
    from tuiwiz.plan.hardware import probe

    return probe().has_gpu


def _run_limited(args, limit: int, which: int):  # the launcher and, inherited, its runner
    def apply():
        resource.setrlimit(which, (limit, limit))

    return subprocess.run([sys.executable, "-m", "tuiwiz", *map(str, args)], preexec_fn=apply,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_disk_full(tmp_path, demo_model):
    profile = make_profile(tmp_path, "quickstart.yaml", method={"type": "full"},
                           training={"max_steps": 1, "save_steps": 1, "logging_steps": 1})
    # The full model's checkpoint (4 MB) cannot be written under a 2 MB file-size limit; the launcher,
    # the event log and train.log stay far below it.
    result = _run_limited(["--profile", profile], 2 * 10**6, resource.RLIMIT_FSIZE)
    run = only_run(tmp_path)
    error = assert_failed(result, run, "disk_full", "lower training.save_total_limit")
    assert error["message"].startswith("a file grew past the size the file system (or a limit) allows")


# --- classify on real exceptions ----------------------------------------------------------


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


def test_classify_a_real_full_disk():
    full = Path("/dev/full")
    if not (full.exists() and stat.S_ISCHR(full.stat().st_mode)):
        pytest.skip("no /dev/full character device here")

    def write():
        with open(full, "wb") as handle:  # a handle, never a path: a library could replace the node
            handle.write(b"x" * 65536)

    exc = _raised(write)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    failure = classify(exc)
    assert (failure.kind, failure.message.split(":")[0]) == ("disk_full", "the disk is full")

    import torch

    def save():
        with open(full, "wb") as handle:
            torch.save(torch.zeros(100_000), handle)

    assert classify(_raised(save)).kind == "disk_full"


def test_classify_disk_errors_wrapped_by_libraries():
    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                           'message: "No space left on device" })')
    assert classify(wrapped).kind == "disk_full"
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert classify(quota).message.startswith("the disk quota is used up")
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert "the disk is probably full" in classify(short).message


def test_classify_truncated_safetensors(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    failure = classify(_raised(lambda: load_file(str(path))))
    assert failure.kind == "model_corrupt" and "download the model again" in failure.hint


def test_classify_out_of_memory():
    import torch

    assert classify(_raised(lambda: bytearray(2**62))).kind == "oom_cpu"  # a real MemoryError
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                       "memory: you tried to allocate 4625632144 bytes. Error code 12 (Cannot allocate memory)")
    assert classify(cpu).kind == "oom_cpu"
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert classify(gpu).kind == "oom_gpu"


def test_classify_missing_packages():
    def wrapped_import():  # as transformers' lazy module re-raises a failed import
        try:
            import no_such_package_for_tests  # noqa: F401
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("Could not import module 'validate_bnb_backend_availability'") from exc

    failure = classify(_raised(wrapped_import))
    assert failure.kind == "dependency_missing"
    assert failure.message.endswith(": no_such_package_for_tests")
    assert failure.hint == "pip install no_such_package_for_tests"
    requires = ImportError("Using `bitsandbytes` 4-bit quantization requires bitsandbytes: "
                           "`pip install -U bitsandbytes>=0.46.1`")
    failure = classify(requires)
    assert failure.kind == "dependency_missing" and "tuiwiz[qlora]" in failure.hint
    ours = ModuleNotFoundError("No module named 'tuiwiz.nothing'", name="tuiwiz.nothing")
    assert classify(ours).kind == "crash"  # our own import failing is a bug


def test_classify_keeps_user_errors_and_marks_bugs():
    user = UserError("label 'x' is not among the training labels", file="v.jsonl", line=3, field="label",
                     hint="fix it", kind="data")
    failure = classify(user)
    assert (failure.kind, failure.message, failure.hint) == ("data", "v.jsonl:3: label: label 'x' is not "
                                                             "among the training labels", "fix it")
    assert failure.traceback is None

    def nested():
        try:
            raise NonFiniteLoss(7, float("nan"))
        except NonFiniteLoss as exc:
            raise RuntimeError("trainer wrapped it") from exc

    assert classify(_raised(nested)).kind == "nan_loss"
    bug = classify(_raised(lambda: {}["missing"]))
    assert bug.kind == "crash" and "bug" in bug.hint and "KeyError" in bug.traceback


# --- preflight: damaged weights are refused before a run exists ---------------------------


def test_check_model_files(tmp_path, demo_model):
    from tuiwiz.run.preflight import check_model_files

    check_model_files(demo_model)
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    with pytest.raises(UserError, match="truncated safetensors file") as info:
        check_model_files(model)
    assert info.value.file == str(weights) and info.value.kind == "model"
    weights.unlink()
    with pytest.raises(UserError, match="has no weights") as info:
        check_model_files(model)
    assert info.value.field == "model.name_or_path"


# --- preflight: disk and RAM a run would run out of -------------------------------------------

GB = 10**9


def _profile(**sections):
    from tuiwiz.profile.schema import Profile

    return Profile.model_validate(sections)


def test_disk_need_for_full_fine_tuning_counts_weights_and_adam_states():
    from tuiwiz.run.resources import SMALL_FILES, estimate_disk

    profile = _profile(method={"type": "full"}, training={"save_total_limit": 2})
    need = estimate_disk(profile, 14 * GB, parameters=7 * GB)  # a 7B model stored in bf16
    # fp32 weights (the runner trains full fine-tunes in fp32) and two fp32 Adam moments per parameter
    assert need.checkpoint == 7 * GB * 4 + 7 * GB * 8 + SMALL_FILES
    assert need.output == 7 * GB * 4 + SMALL_FILES
    assert need.checkpoints == 3  # the Trainer writes the new checkpoint before it deletes the oldest
    assert need.total == 3 * need.checkpoint + need.output
    sgd = estimate_disk(_profile(method={"type": "full"}, training={"optim": "sgd"}), 14 * GB, parameters=7 * GB)
    assert sgd.checkpoint == 7 * GB * 4 + SMALL_FILES


def test_disk_need_for_an_adapter_is_small_and_counts_saves():
    from tuiwiz.run.resources import SMALL_FILES, estimate_disk

    lora = _profile(method={"type": "lora"}, training={"max_steps": 1000, "save_steps": 500})
    need = estimate_disk(lora, 14 * GB, parameters=7 * GB, trainable=40_000_000)
    assert need.checkpoint == 40_000_000 * (4 + 8) + SMALL_FILES  # fp32 adapter and its Adam moments
    assert need.output == 40_000_000 * 4 + SMALL_FILES
    assert need.checkpoints == 3  # 2 saves + a stop's, but at most save_total_limit + 1
    few = estimate_disk(_profile(training={"max_steps": 10, "save_steps": 500}), 14 * GB)
    assert few.checkpoints == 1
    unbounded = estimate_disk(_profile(training={"save_total_limit": None}), 14 * GB)
    assert (unbounded.checkpoints, unbounded.exact_count) == (1, False)


def test_check_disk_refuses_with_the_numbers(tmp_path):
    from tuiwiz.run.resources import check_disk

    profile = _profile(method={"type": "full"})
    with pytest.raises(UserError) as info:
        check_disk(profile, 988 * 10**6, tmp_path / "runs", parameters=494 * 10**6, free_bytes=5 * GB)
    error = info.value
    assert error.message == (f"the run needs 20.0 GB free on the disk of {tmp_path / 'runs'} (3 checkpoints of "
                             "6.0 GB at once, and a 2.0 GB output); 5.0 GB is free")
    assert (error.field, error.kind) == ("output.runs_dir", "resources")
    assert "lower training.save_total_limit (now 2)" in error.hint
    assert check_disk(profile, 988 * 10**6, tmp_path / "runs", parameters=494 * 10**6, free_bytes=21 * GB)
    check_disk(_profile(), 4_000_000, tmp_path / "not" / "yet")  # the real disk; the folder need not exist


def test_check_ram_refuses_with_the_numbers():
    from tuiwiz.run.resources import RUNTIME_RAM, check_ram, estimate_ram

    full = _profile(method={"type": "full"})
    n = 494 * 10**6
    assert estimate_ram(full, 0, device="cpu", parameters=n) == RUNTIME_RAM + n * 4 + n * 4 + n * 8
    assert estimate_ram(_profile(), 0, device="cuda", parameters=n) == RUNTIME_RAM + n * 2
    qlora = _profile(method={"type": "qlora", "bits": 4})
    assert estimate_ram(qlora, 0, device="cuda", parameters=n) == RUNTIME_RAM + n // 2
    with pytest.raises(UserError) as info:
        check_ram(full, 0, device="cpu", parameters=n, available_bytes=2 * GB)
    assert info.value.message == "the run needs 8.6 GB of RAM to train on the CPU; 2.0 GB is available"
    assert info.value.kind == "resources" and "lora or qlora instead of full" in info.value.hint
    with pytest.raises(UserError, match="to load the model before it moves to the GPU"):
        check_ram(_profile(), 0, device="cuda", needed_bytes=3 * GB, available_bytes=GB)
    assert check_ram(full, 0, parameters=n, available_bytes=9 * GB) == RUNTIME_RAM + 16 * n


def test_check_resources_on_a_real_model_folder(tmp_path, demo_model, monkeypatch):
    from tuiwiz.run import resources

    profile = load_profile(PROFILES / "demo-full.yaml").profile
    resources.check_resources(profile, demo_model, tmp_path / "runs", device="cpu")
    real = shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=10 * 2**20)

    monkeypatch.setattr(resources.shutil, "disk_usage", tiny)
    with pytest.raises(UserError, match=r"the run needs 0\.3 GB free .* 0\.0 GB is free"):
        resources.check_resources(profile, demo_model, tmp_path / "runs", device="cpu")
