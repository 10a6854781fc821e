"""Creating a checked profile's run dir, starting its runner, stopping it.

The runner is a subprocess in its own session (a terminal hangup does not reach
it) whose output goes to ``train.log``: no pipe that a front end must drain.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import staged_folder
from tuiwiz.profile.io import LoadedProfile, dump_profile
from tuiwiz.profile.schema import Profile
from tuiwiz.run.preflight import preflight
from tuiwiz.run.rundir import (
    ACTIVE,
    FINISHED,
    RunDir,
    RunnerLock,
    RunState,
    is_probe_run,
    process_alive,
    read_state,
    register,
    update_state,
    watcher_alive,
    write_state,
)

# Environment the runner always gets: NVML and CUDA agree on GPU numbering.
RUNNER_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def new_run_id(profile: Profile, source: Path | None) -> str:
    stem = profile.output.run_name or (source.stem if source else "run")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{stamp}-{secrets.token_hex(2)}"


def create_run(loaded: LoadedProfile, *, folder: Path | None = None) -> RunDir:
    """Check the profile, then make its run dir in one step (no half-made runs): in ``output.runs_dir``
    under a new id, or as ``folder`` (a pipeline's stage)."""
    preflight(loaded)
    runs_dir = folder.parent if folder is not None else Path(loaded.profile.output.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the runs folder {runs_dir}: {exc.strerror}",
            hint="set output.runs_dir to a folder you can write", field="output.runs_dir", kind="run",
        ) from None
    run_id = folder.name if folder is not None else new_run_id(loaded.profile, loaded.source)
    final = runs_dir / run_id
    with staged_folder(final) as staging:  # a run dir appears whole, or not at all
        header = f"# tuiwiz run {run_id}\n# from {loaded.source}\n" if loaded.source else f"# tuiwiz run {run_id}\n"
        (staging / "profile.yaml").write_text(header + dump_profile(loaded.profile), encoding="utf-8")
        write_state(RunDir(staging), RunState(run_id=run_id, status="created"))
    run = RunDir(final.resolve())
    if not is_probe_run(run.path):  # a probe's run is the probe's business, gone when it ends
        register(run)
    return run


def start_runner(run: RunDir, *, resume: bool = False, extra_env: dict[str, str] | None = None,
                 node_rank: int | None = None) -> subprocess.Popen:
    """Start the training subprocess for ``run``; returns at once."""
    if RunnerLock(run).held_elsewhere():
        raise UserError(f"run {run.run_id} already has a runner", hint=f"`tuiwiz attach {run.run_id}` follows it",
                        kind="run")
    env = {**os.environ, **RUNNER_ENV, **(extra_env or {})}
    argv = [sys.executable, "-m", "tuiwiz.train", str(run.path)]
    if resume:
        argv.append("--resume")
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    update_state(run, status="starting", pid=None, pgid=None, exit_code=None, error=None)
    with open(run.log, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=run.path, env=env, start_new_session=True, close_fds=True,
        )
    import psutil

    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = None
    # The runner records itself too; this covers the moment before it does.
    update_state(run, only_from=("starting",), pid=proc.pid, pgid=proc.pid, create_time=created)
    return proc


def kill_tree(pid: int, pgid: int | None = None) -> bool:
    """SIGKILL a runner, its process group, and every descendant (ranks live in sessions of their own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pgid or pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    psutil.wait_procs(procs, timeout=10)
    return True


def stop_run(run: RunDir, *, force: bool = False) -> bool:
    """Ask the runner to checkpoint and stop (SIGTERM), or kill its process group.

    Returns False when the run has no live process.
    """
    state = read_state(run)
    if state is None or state.status in FINISHED or not process_alive(state):
        return False
    if force:
        # marked first: a launcher following the run sees the SIGKILL and must not record it as a failure
        update_state(run, only_from=ACTIVE, status="stopped", error="killed by the user")
        return kill_tree(state.pid, state.pgid)
    # A runner still starting has no SIGTERM handler yet; it says "loading" once it has.
    deadline = time.monotonic() + 15
    while state.status == "starting" and process_alive(state) and time.monotonic() < deadline:
        time.sleep(0.05)
        state = read_state(run) or state
    update_state(run, only_from=("starting", "loading", "running"), status="stopping")
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait_finished(run: RunDir, timeout: float, poll: float = 0.2) -> str | None:
    """Wait until the runner process is gone; returns the final status or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run)
        if state is None or not (process_alive(state) or watcher_alive(state)):
            return read_state(run).status if read_state(run) else None
        time.sleep(poll)
    return None
