"""Out-of-memory recovery under a real memory limit, on the CPU: no injected exception.

The run: LoRA on the demo model, 48 alpaca rows of the demo data, micro-batch 16, eager attention, 3 steps.
The sixteen rows the trainer's seeded sampler deals to step 3 have their answer repeated past data.max_length
(512 tokens), the others are about 30 tokens long; so steps 1 and 2 are light, a checkpoint is saved at
step 2, and step 3 needs about 0.8 GB more address space than the trainer holds when training starts,
about 0.5 GB at micro-batch 8 (see HEADROOM_MB). Once the trainer has loaded, its address space (RLIMIT_AS) is
limited to what it holds then plus a headroom, as `ulimit -v` would: step 3 fails in torch's CPU allocator
("DefaultCPUAllocator: can't allocate memory") and training.auto_recover halves the micro-batch; the
resuming trainer (the same process, exec'd, so under the same limit) does step 3 as two micro-batches of 8
and completes, or, with a headroom below even that, fails again and gives up.

Why the limit is set on the loaded trainer (prlimit) and not on the launcher: its base, about 2.4 GB of
address space here (torch, transformers, TRL and their thread stacks and malloc arenas), varies with the
machine and the libraries, and is only known once the trainer has loaded; it is read from the trainer
itself, so the limit stays the same distance above it on any machine. It is in place before step 3 begins
(checked: step 2 is not logged yet), as it is set when training starts.

Skipped where a GPU would take the run (an address-space limit does not limit GPU memory).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state

from .support.processes import wait_for
from .support.runs import make_profile

pytestmark = pytest.mark.slow

MICRO_BATCH, MAX_LENGTH, LONG_STEP, SEED = 16, 512, 3, 42
ROWS = LONG_STEP * MICRO_BATCH  # one epoch, the long rows last
# The headroom above the trainer's address space at run start, found by trying limits here (torch 2.13,
# transformers 5.25, TRL 1.16, the fused loss head in 256-position tiles on the CPU: train/modeling.py; the
# profile states it, since loss_head auto would read the machine's RAM, not this limit, and take the whole logits):
# step 3 at micro-batch 16 failed with 750 MB of headroom and below, and went through with 760 to 850 in some
# tries (the runner's fused LoRA layers made it lighter: it used to need more than 950); resumed at micro-batch 8 it
# completes with 480 MB and not with 450. HEADROOM_MB lies between, about 150 MB from each bound.
HEADROOM_MB = 600
# Less than step 3 needs even at micro-batch 8 (more than 450 MB), more than the light steps need.
TIGHT_HEADROOM_MB = 300


def _sampler_order(n: int, seed: int) -> list[int]:
    """The rows in the order the Trainer deals them in the first epoch: accelerate's SeedableRandomSampler,
    a torch.randperm seeded with data_seed (tuiwiz sets it to training.seed) plus the epoch."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _write_data(path: Path) -> None:
    from tuiwiz.demo.build import ensure_demo_dataset

    rows = [json.loads(line) for line in ensure_demo_dataset("alpaca").read_text().splitlines()][:ROWS]
    start = (LONG_STEP - 1) * MICRO_BATCH
    for i in _sampler_order(ROWS, SEED)[start:start + MICRO_BATCH]:  # about 620 tokens, cut at MAX_LENGTH
        rows[i] = {**rows[i], "output": " ".join([rows[i]["output"]] * 100)}
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _address_space(pid: int) -> int:
    """The process's address space (VmSize) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for process {pid}")


def _events(run: RunDir) -> list[dict]:
    return read_events(run.events) if run.events.exists() else []


def _resumed_or_ended(run: RunDir) -> str | None:
    if sum(e["type"] == "run_start" for e in _events(run)) >= 2:
        return "resumed"
    return "ended" if read_state(run).status in ("completed", "failed", "stopped") else None


def _has_gpu() -> bool:
    from tuiwiz.plan.hardware import probe

    return probe().has_gpu


def _run_under_limit(tmp_path: Path, headroom_mb: int, auto_recover: int):
    """`tuiwiz --profile` of the run above, its trainer limited to its address space at run start plus
    ``headroom_mb``: (the launcher's exit code, its output, the run, the limit)."""
    if not hasattr(resource, "prlimit") or not Path("/proc/self/status").exists():
        pytest.skip("needs Linux: prlimit and /proc/PID/status")
    if _has_gpu():
        pytest.skip("the run would go to the GPU: an address-space limit does not limit GPU memory")
    data = tmp_path / "long-at-step-3.jsonl"
    _write_data(data)
    profile = make_profile(
        tmp_path, "quickstart.yaml", model={"name_or_path": "demo", "attn_implementation": "eager"},
        data={"path": str(data), "max_length": MAX_LENGTH},
        training={"max_steps": LONG_STEP, "per_device_train_batch_size": MICRO_BATCH, "logging_steps": 1,
                  "save_steps": 2, "auto_recover": auto_recover, "seed": SEED,
                  "loss_head": "fused"},  # the head HEADROOM_MB was found with
    )
    # One OpenMP thread, whatever the machine: each thread more would add its stack and malloc arena
    # after the base is read.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "tuiwiz", "--profile", str(profile)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        runs = tmp_path / "runs"
        run = wait_for(lambda: next((RunDir(p) for p in runs.iterdir() if not p.name.startswith(".")), None)
                       if runs.is_dir() else None, timeout=300)
        wait_for(lambda: any(e["type"] == "run_start" for e in _events(run)), timeout=300)
        pid = read_state(run).pid
        limit = _address_space(pid) + headroom_mb * 2**20
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        logged = [e["step"] for e in _events(run) if e["type"] == "log"]
        assert not logged or max(logged) < LONG_STEP - 1, f"the limit came too late: step {max(logged)} was done"
        # The resuming trainer is the same process after exec: the limit is still its own.
        if wait_for(lambda: _resumed_or_ended(run), timeout=300) == "resumed":
            assert resource.prlimit(pid, resource.RLIMIT_AS) == (limit, limit)
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGKILL)
            launcher.wait()
    return launcher.returncode, output, run, limit


def _steps_and_errors(events: list[dict]) -> list:
    return [e["step"] if e["type"] == "log" else e["kind"] for e in events if e["type"] in ("log", "error")]


def test_out_of_memory_under_a_real_limit_recovers_lighter_and_completes(tmp_path, demo_built):
    code, output, run, limit = _run_under_limit(tmp_path, HEADROOM_MB, auto_recover=1)
    log = run.log.read_text(errors="replace")
    where = f"limit {limit >> 20} MB\n{output}\n{log[-3000:]}"
    assert code == 0, where
    assert read_state(run).status == "completed", where

    events = read_events(run.events)
    assert "DefaultCPUAllocator: can't allocate memory" in log  # a real allocation failure, in step 3
    # Steps 1 and 2 at micro-batch 16, then out of memory; the resumed run did step 3, the long rows.
    assert _steps_and_errors(events) == [1, 2, "oom_cpu", 3], where
    tokens = {e["step"]: e["tokens_seen"] for e in events if e["type"] == "log"}
    assert tokens[3] - tokens[2] > (MICRO_BATCH - 1) * MAX_LENGTH, \
        "the long rows did not come at step 3: has the sampler changed?"
    [error] = [e for e in events if e["type"] == "error"]
    assert error["message"] == "the machine ran out of RAM" and "lower the micro-batch" in error["hint"]
    [recovering] = [e for e in events if e["type"] == "status" and e["status"] == "recovering"]
    assert recovering["recovery"] == 1 and recovering["kept"] is None
    assert recovering["message"] == "micro-batch 16 → 8, gradient accumulation 1 → 2 (effective batch 16)"
    assert recovering["checkpoint"].endswith("checkpoint-2")
    starts = [e for e in events if e["type"] == "run_start"]
    assert starts[0]["resumed_from"] is None and starts[1]["resumed_from"].endswith("checkpoint-2")
    assert [e["status"] for e in events if e["type"] == "run_end"] == ["completed"]

    frozen = yaml.safe_load(run.profile.read_text())["training"]
    assert (frozen["per_device_train_batch_size"], frozen["gradient_accumulation_steps"]) == (MICRO_BATCH // 2, 2)
    before = yaml.safe_load((run.path / "profile.before-recovery-1.yaml").read_text())["training"]
    assert before["per_device_train_batch_size"] == MICRO_BATCH
    assert (run.output / "adapter_config.json").is_file()
    assert "recovering (micro-batch 16 → 8" in output


def test_out_of_memory_again_after_the_recoveries_allowed_fails_and_keeps_the_checkpoint(tmp_path, demo_built):
    code, output, run, limit = _run_under_limit(tmp_path, TIGHT_HEADROOM_MB, auto_recover=1)
    where = f"limit {limit >> 20} MB\n{output}\n{run.log.read_text(errors='replace')[-3000:]}"
    assert code == 1, where
    assert "Traceback" not in output
    assert read_state(run).status == "failed"
    events = read_events(run.events)
    assert _steps_and_errors(events) == [1, 2, "oom_cpu", "oom_cpu"], where
    assert len([e for e in events if e["type"] == "status" and e["status"] == "recovering"]) == 1
    error = [e for e in events if e["type"] == "error"][-1]
    assert error["message"] == ("the machine ran out of RAM "
                                "(after 1 automatic recovery, the most training.auto_recover: 1 allows)")
    assert error["hint"].startswith("the settings tried before are in profile.before-recovery-*.yaml; ")
    assert "the most training.auto_recover: 1 allows" in output
    assert yaml.safe_load(run.profile.read_text())["training"]["per_device_train_batch_size"] == MICRO_BATCH // 2
    assert run.last_checkpoint().name == "checkpoint-2"  # nothing trained is lost


# --- the kernel's out-of-memory killer, told apart from a user's kill -9 -------------------------------------

OOM_KILL_SCRIPT = """
import json, os, signal, time
from tuiwiz.train.failures import oom_kills

def ended(child):
    pid = os.fork()
    if pid == 0:
        child()
        os._exit(0)
    if child is asleep:
        os.kill(pid, signal.SIGKILL)  # as a user's kill -9 would
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, oom_kills()

def allocate():
    b"x" * (1 << 30)

def asleep():
    time.sleep(60)

print(json.dumps([oom_kills(), ended(allocate), ended(asleep)]))
"""


def _memory_cgroup(tmp_name: str, limit: int) -> tuple[Path, str] | str:
    """A new memory cgroup below this process's, limited to ``limit`` bytes of RAM (and no swap): (its folder,
    the file to write a process id into), or why there is none here."""
    from tuiwiz.train import failures

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to make a memory cgroup"
    mounts = failures.cgroup_mounts()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" and "cgroup2" in mounts:
            parent = mounts["cgroup2"][1] / path.lstrip("/")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                continue  # enabling it is refused where the parent holds processes
            files = [("memory.max", limit), ("memory.swap.max", 0)]
        elif "memory" in controllers.split(",") and "memory" in mounts:
            parent = mounts["memory"][1] / path.lstrip("/")
            files = [("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit)]
        else:
            continue
        folder = parent / tmp_name
        try:
            folder.mkdir()
        except OSError as exc:
            return f"cannot make a memory cgroup in {parent}: {exc}"
        for name, value in files:
            if (folder / name).exists():
                (folder / name).write_text(str(value))
        return folder, "cgroup.procs"
    return "no writable memory cgroup here (cgroup v2 without the memory controller for children, and no v1 memory)"


def test_a_kernel_out_of_memory_kill_is_told_from_a_users_kill(tmp_path):
    made = _memory_cgroup(f"tuiwiz-test-{os.getpid()}", 200 * 2**20)
    if isinstance(made, str):
        pytest.skip(made)
    folder, procs = made
    try:
        result = subprocess.run(
            [sys.executable, "-c", OOM_KILL_SCRIPT], capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: (folder / procs).write_text(str(os.getpid())),
        )
    finally:
        folder.rmdir()
    assert result.returncode == 0, result.stderr
    before, (oom_signal, after_oom), (user_signal, after_user) = json.loads(result.stdout)
    # Both ended by SIGKILL; only the out-of-memory kill raised the cgroup's count.
    assert (oom_signal, user_signal) == (signal.SIGKILL, signal.SIGKILL)
    assert (before, after_oom, after_user) == (0, 1, 1)


WATCHED_SCRIPT = """
import os, sys, time
from pathlib import Path
from tuiwiz.run.rundir import RunDir, update_state
from tuiwiz.train.watcher import fork_watcher

run = RunDir(Path(sys.argv[1]))
if fork_watcher(run) is None:  # the child: the trainer's place
    update_state(run, status="running", pid=os.getpid())
    if sys.argv[2] == "allocate":
        b"x" * (1 << 30)  # past the cgroup's limit: the kernel's out-of-memory killer ends it
    time.sleep(120)  # a user's kill -9 ends it
"""


@pytest.mark.parametrize("how, kind", [("allocate", "oom_cpu"), ("kill", "killed")])
def test_the_watcher_records_a_kernel_out_of_memory_kill_as_oom_cpu_and_a_users_as_killed(tmp_path, how, kind):
    from tuiwiz.run.events import read_events
    from tuiwiz.run.rundir import RunDir, read_state

    from .support.processes import wait_for
    from .support.testing import write_fixture_run

    made = _memory_cgroup(f"tuiwiz-watch-{os.getpid()}-{how}", 200 * 2**20)
    if isinstance(made, str):
        pytest.skip(made)
    folder, procs = made
    run = RunDir(write_fixture_run(tmp_path / "runs", status="running", register=False))
    try:
        proc = subprocess.Popen([sys.executable, "-c", WATCHED_SCRIPT, str(run.path), how],
                                preexec_fn=lambda: (folder / procs).write_text(str(os.getpid())))
        if how == "kill":
            wait_for(lambda: read_state(run).pid not in (None, proc.pid), timeout=60)
            os.kill(read_state(run).pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        folder.rmdir()
    assert proc.returncode == -signal.SIGKILL  # the watcher ends as its child did, for whoever follows it
    state = read_state(run)
    error = [e for e in read_events(run.events) if e["type"] == "error"][-1]
    assert (state.status, error["kind"]) == ("failed", kind), (state, error)
    if kind == "oom_cpu":
        assert "out-of-memory killer" in error["message"] and "lower the micro-batch" in error["hint"]
    else:
        assert "SIGKILL" in error["message"]
