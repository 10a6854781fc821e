"""Run directories, their state file, and the registry of every run on this machine.

A run dir holds ``profile.yaml`` (frozen, paths absolute), ``events.jsonl``,
``train.log``, ``state.json``, ``checkpoints/`` and ``output/``. The status a
front end shows is checked against the process, not only read from the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.files import write_text_atomic
from tuiwiz.paths import state_dir
from tuiwiz.run.event_types import ErrorEvent, LogEvent, parse_event
from tuiwiz.run.events import iter_tail_events

ACTIVE = ("created", "starting", "loading", "running", "stopping")
STARTING_GRACE = 30.0  # seconds a launcher may take from "starting" to recording the runner's pid
FINISHED = ("completed", "stopped", "failed")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def profile(self) -> Path:
        return self.path / "profile.yaml"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.path / ".runner.lock"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def output(self) -> Path:
        return self.path / "output"

    @property
    def trainer_args(self) -> Path:
        """The Trainer's arguments as it resolved them (TRL's config included), written when training starts."""
        return self.path / "trainer-args.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files (``output.report_to: [tensorboard]``, the default)."""
        return self.path / "tensorboard"

    def last_checkpoint(self) -> Path | None:
        """The checkpoint with the highest step that has a trainer state."""
        best: tuple[int, Path] | None = None
        if self.checkpoints.is_dir():
            for child in self.checkpoints.iterdir():
                name = child.name
                if name.startswith("checkpoint-") and name[11:].isdigit() and (child / "trainer_state.json").exists():
                    step = int(name[11:])
                    if best is None or step > best[0]:
                        best = (step, child)
        return best[1] if best else None


@dataclass(frozen=True)
class RunState:
    """The small state file. Written by the launcher, then by the runner."""

    run_id: str
    status: str
    host: str = field(default_factory=socket.gethostname)
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None  # the process's start time: guards against pid reuse
    watcher_pid: int | None = None  # the runner's waiting parent (train/watcher.py), which ends just after it
    watcher_create_time: float | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    exit_code: int | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def read_state(run: RunDir) -> RunState | None:
    try:
        data = json.loads(run.state_file.read_text(encoding="utf-8"))
        return RunState(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(run: RunDir, state: RunState) -> None:
    write_text_atomic(run.state_file, state.to_json())


def update_state(run: RunDir, *, only_from: tuple[str, ...] | None = None, **changes) -> RunState | None:
    """Change fields of the state file under a lock; returns the new state.

    With ``only_from``, nothing changes unless the current status is one of those,
    so a late writer never overwrites a newer status.
    """
    from dataclasses import replace

    lock_path = run.path / ".state.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_state(run) or RunState(run_id=run.run_id, status="created")
        if only_from is not None and current.status not in only_from:
            return None
        new = replace(current, updated=time.time(), **changes)
        write_state(run, new)
        return new


def process_alive(state: RunState) -> bool | None:
    """Whether the run's process is alive; None when it ran on another host."""
    if state.host != socket.gethostname():
        return None
    if not state.pid:
        # between "starting" and the launcher writing the pid it has just been given: not gone yet
        return None if state.status == "starting" and time.time() - state.updated < STARTING_GRACE else False
    import psutil

    try:
        proc = psutil.Process(state.pid)
        if state.create_time is not None and abs(proc.create_time() - state.create_time) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def watcher_alive(state: RunState) -> bool:
    """Whether the runner's waiting parent is still there (it records the end, then exits)."""
    if not state.watcher_pid or state.host != socket.gethostname():
        return False
    return bool(process_alive(RunState(run_id=state.run_id, status=state.status, pid=state.watcher_pid,
                                       create_time=state.watcher_create_time)))


def effective_status(run: RunDir, state: RunState | None = None) -> str:
    """The status to show: an active run whose process is gone has failed."""
    state = state or read_state(run)
    if state is None:
        return "unknown"
    if state.status in ACTIVE and state.status != "created":
        alive = process_alive(state)
        if alive is False:
            return "failed"
        if alive is None:
            return f"{state.status}?"
    return state.status


# What a signal that ended a runner most often means, for the message.
_SIGNAL_CAUSES = {"SIGKILL": "often the kernel's out-of-memory killer; check dmesg",
                  "SIGSEGV": "a crash in native code", "SIGBUS": "a crash in native code, or a file cut short",
                  "SIGTERM": "ended from outside before it could checkpoint", "SIGABRT": "a library aborted"}


def killed_by_signal(run: RunDir, returncode: int) -> ErrorEvent:
    """The error of a runner that signal ``-returncode`` ended: what its watcher records (train/watcher.py),
    and what a front end that saw the runner and its watcher go at once may show (nobody is left to record it).
    """
    import signal

    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = None
    cause = _SIGNAL_CAUSES.get(name)
    message = f"killed by signal {number}" + (f" ({name}: {cause})" if cause else f" ({name})" if name else "")
    if name == "SIGKILL":
        hint = ("if memory ran out, lower training.per_device_train_batch_size or data.max_length, or free RAM; "
                f"`tuiwiz resume {run.run_id}` continues from the last checkpoint")
    else:
        hint = f"see train.log in the run folder; `tuiwiz resume {run.run_id}` continues from the last checkpoint"
    return ErrorEvent(kind="killed", message=message, hint=hint, traceback=None)


def unrecorded_end(run: RunDir, returncode: int | None, state: RunState | None = None) -> ErrorEvent | None:
    """For display only: the end of a runner this process started and saw end by a signal (``returncode``
    < 0) when nobody recorded it, as when the runner and its watcher were killed together; else None."""
    if returncode is None or returncode >= 0:
        return None
    state = state or read_state(run)
    if state is None or state.status not in ACTIVE or process_alive(state) is not False or watcher_alive(state):
        return None
    return killed_by_signal(run, returncode)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    path: str
    status: str
    model: str | None
    method: str | None
    task: str | None
    step: int | None
    max_steps: int | None
    loss: float | None
    started: float | None
    error: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(run: RunDir) -> RunSummary:
    state = read_state(run)
    status = effective_status(run, state)
    model = method = task = None
    step = max_steps = None
    loss = None
    error = state.error if state else None
    for event in map(parse_event, iter_tail_events(run.events)):
        if isinstance(event, LogEvent):
            step, max_steps, loss = event.step, event.max_steps, event.loss
        elif isinstance(event, ErrorEvent):
            error = event.message
    try:
        import yaml

        profile = yaml.safe_load(run.profile.read_text(encoding="utf-8")) or {}
        model = profile.get("model", {}).get("name_or_path")
        method = profile.get("method", {}).get("type")
        task = profile.get("task")
    except (OSError, ValueError, AttributeError):
        pass
    started = state.created if state else None
    if status == "failed" and state and state.status in ACTIVE and not error:
        error = "the runner process is gone without a final status (killed, or the machine restarted)"
    return RunSummary(run.run_id, str(run.path), status, model, method, task, step, max_steps, loss, started, error)


# --- the registry: one absolute run dir path per line -------------------------

def _registry() -> Path:
    return state_dir() / "runs.txt"


def register(run: RunDir) -> None:
    path = _registry()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(str(run.path.resolve()) + "\n")


def is_probe_run(path: str | Path) -> bool:
    """A probe's run dir (RUNS_DIR/.probes/...): not a run to list, attach to, or keep."""
    return Path(path).parent.name == ".probes"


def registered_folders() -> list[Path]:
    """Every registered folder (runs, and pipelines of runs), once each, newest registration last."""
    try:
        lines = _registry().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [Path(line) for line in dict.fromkeys(line.strip() for line in lines) if line]


def registered_runs() -> list[RunDir]:
    """Every registered run dir that still exists, newest registration last."""
    return [RunDir(path) for path in registered_folders() if (path / "state.json").exists()]


def find_run(ref: str) -> RunDir:
    """A run by its id (from the registry) or by its folder's path."""
    candidate = Path(ref).expanduser()
    if (candidate / "state.json").exists():
        return RunDir(candidate.resolve())
    matches = [run for run in registered_runs() if run.run_id == ref]
    if not matches:
        prefixed = [run for run in registered_runs() if run.run_id.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0]
        matches = prefixed
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(
            f"'{ref}' matches {len(matches)} runs",
            hint="give the full run id or the run folder's path: " + ", ".join(m.run_id for m in matches[:5]),
            kind="run",
        )
    raise UserError(f"no run '{ref}'", hint="`tuiwiz runs` lists them; a run folder's path works too", kind="run")


class RunnerLock:
    """One runner per run dir: an exclusive flock held for the runner's life."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held_elsewhere(self) -> bool:
        if self.acquire():
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
