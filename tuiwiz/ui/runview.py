"""What the train monitor shows, read from a run dir. No Textual here.

``RunReader`` opens a run in bounded time whatever its length: a small log is
read whole; a long one is read as its head (run_start), about ``STRIDE_SAMPLES``
evenly spaced lines of the middle (the chart's history), and its last
``TAIL_BYTES`` in full. After that it follows the log incrementally. Series are
thinned by doubling their stride, so memory and drawing stay bounded too.
A thread worker calls ``poll()``; the screen calls ``take()``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuiwiz.run.event_types import (
    CheckpointEvent,
    ErrorEvent,
    EvalEvent,
    Event,
    LogEvent,
    RunEndEvent,
    RunStartEvent,
    SamplesEvent,
    StatusEvent,
    WarningEvent,
    parse_event,
)
from tuiwiz.run.events import EventTail
from tuiwiz.run.rundir import FINISHED, RunDir, effective_status, read_state, unrecorded_end
from tuiwiz.tasks import TASKS

SMALL_LOG = 2 * 1024 * 1024  # read whole below this size
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 1024 * 1024
STRIDE_SAMPLES = 2000
SERIES_CAP = 1000  # points kept per series (a chart is at most a few hundred cells wide)
LOG_TAIL_BYTES = 32 * 1024  # of train.log on open
LOG_LINES = 500  # lines a reader keeps between two takes
RATE_WINDOW = 20  # log events used for the step rate (ETA)
_SAMPLED = (LogEvent, EvalEvent, CheckpointEvent, RunStartEvent, ErrorEvent, WarningEvent,
            SamplesEvent)  # kept from a sample


def _parse(data: bytes) -> list[Event]:
    """Events in complete lines of ``data``; bad lines are skipped (EventTail counts them, we need not)."""
    events = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(parse_event(event))
    return events


class Series:
    """(x, y) points thinned to at most ``cap`` by keeping every ``stride``-th; the last one always shows."""

    def __init__(self, cap: int = SERIES_CAP) -> None:
        self.cap = cap
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self._seen = 0
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        if y is None or not isinstance(y, (int, float)) or not math.isfinite(y):
            return
        self.last = (x, y)
        if self.xs and x <= self.xs[-1]:  # a resumed run repeats steps: keep the newest value
            while self.xs and x <= self.xs[-1]:
                self.xs.pop()
                self.ys.pop()
        self._seen += 1
        if self._seen % self.stride:
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.cap:
            self.xs, self.ys = self.xs[1::2], self.ys[1::2]
            self.stride *= 2

    def points(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        xs, ys = list(self.xs), list(self.ys)
        if self.last and (not xs or xs[-1] != self.last[0]):
            xs.append(self.last[0])
            ys.append(self.last[1])
        return tuple(xs), tuple(ys)

    def __len__(self) -> int:
        return len(self.xs)


@dataclass(frozen=True)
class GpuLive:
    index: int
    memory_used_mb: int
    memory_total_mb: int
    utilization_pct: int | None
    temperature_c: int | None


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the monitor draws, at one moment."""

    run_id: str
    path: str
    status: str
    model: str | None = None
    method: str | None = None
    task: str | None = None
    device: str | None = None
    precision: str | None = None
    params_trainable: int | None = None
    params_total: int | None = None
    train_examples: int | None = None
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    tokens_seen: int | None = None
    rss_mb: float | None = None
    gpu_allocated_mb: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    loss_points: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    eval_points: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    lr_points: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    eval_loss: float | None = None
    eval_metrics: dict = field(default_factory=dict)
    last_checkpoint: str | None = None
    status_message: str | None = None
    errors: tuple[ErrorEvent, ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. a rank that died on its way out after the run had finished
    run_end: RunEndEvent | None = None
    state_error: str | None = None
    sampled: bool = False  # the history in the chart is a sample of a long log
    events: int = 0
    gpus: tuple[GpuLive, ...] = ()
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    tensorboard: str | None = None  # the finished run's TensorBoard folder, when it wrote one
    # The task's own curves (tuiwiz/tasks.py metrics): DPO's rewards/margins, GRPO's reward, ...
    task_points: dict = field(default_factory=dict)  # name -> points, in the table's order
    task_values: dict = field(default_factory=dict)  # name -> the last value
    samples: tuple[dict, ...] = ()  # GRPO's latest sampled completions with their rewards
    samples_step: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def progress(self) -> float | None:
        if not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)


class RunReader:
    """Reads a run dir for the monitor. ``poll`` runs in a worker thread; ``take`` on the UI thread."""

    def __init__(self, run: RunDir, *, clock: Callable[[], float] = time.time, gpus: bool = True) -> None:
        self.run = run
        self.clock = clock
        self.watch_gpus = gpus
        self._lock = threading.Lock()
        self._tail: EventTail | None = None
        self._log_offset: int | None = None
        self._log_partial = b""
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self.loss = Series()
        self.eval_loss = Series()
        self.lr = Series()
        self.task_series: dict[str, Series] = {}  # the task's logged numbers, created as they first appear
        self.samples: SamplesEvent | None = None
        self.run_start: RunStartEvent | None = None
        self.last_log: LogEvent | None = None
        self.last_eval: EvalEvent | None = None
        self.run_end: RunEndEvent | None = None
        self.errors: list[ErrorEvent] = []
        self.warnings: list[str] = []
        self.status_event: StatusEvent | None = None
        self.runner_exit: int | None = None  # how the runner this front end started ended, once it has
        self.last_checkpoint: str | None = None
        self.sampled = False
        self.events = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self._rate: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._gpus: tuple[GpuLive, ...] = ()
        self._ram: tuple[int, int] | None = None
        self._last_gpu_poll = 0.0
        self._snapshot: RunSnapshot | None = None
        self._version = 0
        self._taken = -1

    # ---------------------------------------------------------------- reading events

    def apply(self, event: Event) -> None:
        self.events += 1
        when = event.time
        if isinstance(when, (int, float)):
            self.first_time = when if self.first_time is None else self.first_time
            self.last_time = when
        if isinstance(event, LogEvent):
            step = event.step or 0
            self.last_log = event
            self.loss.add(step, event.loss)
            self.lr.add(step, event.learning_rate)
            for name, value in (event.task_metrics or {}).items():
                if name in self._task_metrics():
                    self.task_series.setdefault(name, Series()).add(step, value)
            if isinstance(when, (int, float)):
                if self._rate and step < self._rate[-1][1]:
                    self._rate.clear()  # resumed from an earlier checkpoint
                self._rate.append((when, step))
        elif isinstance(event, EvalEvent):
            self.last_eval = event
            self.eval_loss.add(event.step or 0, event.metrics.get("eval_loss"))
            for name, value in event.metrics.items():  # a task's evaluation curves (seq2seq's exact match, ...)
                if name in self._task_metrics():
                    self.task_series.setdefault(name, Series()).add(event.step or 0, value)
        elif isinstance(event, RunStartEvent):
            self.run_start = event
            self.run_end = None
            self.errors = []
            self.warnings = []
        elif isinstance(event, StatusEvent):
            self.status_event = event
        elif isinstance(event, SamplesEvent):
            self.samples = event
        elif isinstance(event, CheckpointEvent):
            self.last_checkpoint = event.path
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)
            self.errors = self.errors[-5:]
        elif isinstance(event, WarningEvent):
            self.warnings = [*self.warnings, str(event.message or "")][-3:]
        elif isinstance(event, RunEndEvent):
            self.run_end = event

    def _task_metrics(self) -> tuple[str, ...]:
        """The curves the run's task draws (none before its run_start, or for a task this reader does not know)."""
        task = TASKS.get(self.run_start.task) if self.run_start and isinstance(self.run_start.task, str) else None
        return task.metrics if task else ()

    def _open_events(self) -> None:
        path = self.run.events
        self._tail = EventTail(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size > SMALL_LOG:
            with open(path, "rb") as handle:
                head = handle.read(HEAD_BYTES)
            for event in _parse(head[: head.rfind(b"\n") + 1]):
                self.apply(event)
            self._catch_up(HEAD_BYTES, size)
        self._read_events()

    def _catch_up(self, start: int, size: int) -> None:
        """Skip a long stretch of the log: sample its lines evenly, then follow from its last TAIL_BYTES."""
        self.sampled = True
        tail_start = size - TAIL_BYTES
        span = tail_start - start
        with open(self.run.events, "rb") as handle:
            for i in range(STRIDE_SAMPLES):
                handle.seek(start + span * i // STRIDE_SAMPLES)
                if i or start:
                    handle.readline()  # the rest of a line cut by the seek
                line = handle.readline()
                if line.endswith(b"\n"):
                    for event in _parse(line):
                        if isinstance(event, _SAMPLED):
                            self.apply(event)
            handle.seek(tail_start - 1)
            handle.readline()
            self._tail.offset = handle.tell()

    def _read_events(self) -> None:
        """What is new in events.jsonl; a backlog longer than the tail (a flood, a long absence) is skipped over."""
        try:
            size = self.run.events.stat().st_size
        except FileNotFoundError:
            return
        if size - self._tail.offset > 2 * TAIL_BYTES:
            self._catch_up(self._tail.offset, size)
        for event in self._tail.read(max_bytes=2 * TAIL_BYTES):
            self.apply(parse_event(event))

    def _read_log(self) -> None:
        path = self.run.log
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if self._log_offset is None:
            self._log_offset = max(0, size - LOG_TAIL_BYTES)
        if size < self._log_offset:  # truncated: start again
            self._log_offset, self._log_partial = 0, b""
        if size == self._log_offset:
            return
        if size - self._log_offset > LOG_TAIL_BYTES:  # only the last lines can show: skip the rest
            self._log_offset, self._log_partial = size - LOG_TAIL_BYTES, b""
        with open(path, "rb") as handle:
            handle.seek(self._log_offset)
            chunk = handle.read(size - self._log_offset)
        self._log_offset += len(chunk)
        data = self._log_partial + chunk
        cut = data.rfind(b"\n")
        self._log_partial = data[cut + 1:]
        if cut < 0:
            return
        text = data[:cut].decode("utf-8", "replace")
        for line in text.splitlines():
            # progress bars redraw with carriage returns: keep the last state of a line
            self._lines.append(line.rsplit("\r", 1)[-1])

    def _poll_machine(self) -> None:
        now = time.monotonic()
        if now - self._last_gpu_poll < 1.0:
            return
        self._last_gpu_poll = now
        from tuiwiz.plan import hardware

        if self.watch_gpus:
            self._gpus = tuple(GpuLive(r.index, r.memory_used_mb, r.memory_total_mb, r.utilization_pct,
                                       r.temperature_c) for r in hardware.poll_gpus())
        if os.environ.get(hardware.ENV_VAR):
            # a recorded machine is in force: its RAM too, so the panel agrees with its GPUs
            machine = hardware.probe()
            self._ram = (machine.ram_total_mb - machine.ram_available_mb, machine.ram_total_mb)
            return
        try:
            import psutil

            memory = psutil.virtual_memory()
            self._ram = ((memory.total - memory.available) // 2**20, memory.total // 2**20)
        except Exception:  # psutil missing on an odd platform: the panel says "?"
            self._ram = None

    def poll(self) -> bool:
        """Read what is new. Returns True when the snapshot changed."""
        first = self._tail is None
        before = (self.events, len(self._lines), self._log_offset)
        if first:
            self._open_events()
        else:
            self._read_events()
        self._read_log()
        self._poll_machine()
        snapshot = self._build()
        with self._lock:
            changed = first or before != (self.events, len(self._lines), self._log_offset) or snapshot != self._snapshot
            if changed:
                self._snapshot = snapshot
                self._version += 1
        return changed

    def take(self) -> tuple[RunSnapshot | None, list[str]]:
        """The latest snapshot and the log lines since the last take."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
            return self._snapshot, lines

    # ---------------------------------------------------------------- the snapshot

    def _eta(self, step: int, max_steps: int | None) -> float | None:
        if not max_steps or len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return (max_steps - step) * (t1 - t0) / (s1 - s0)

    def _build(self) -> RunSnapshot:
        state = read_state(self.run)
        status = effective_status(self.run, state)
        start = self.run_start or RunStartEvent.blank()
        log = self.last_log or LogEvent.blank()
        said = self.status_event or StatusEvent.blank()
        memory = log.memory or {}
        step = log.step or said.step or 0
        max_steps = log.max_steps or said.max_steps
        if self.run_end and self.run_end.step is not None:
            step = self.run_end.step
        begun = state.created if state else self.first_time
        if status in FINISHED or status == "unknown":
            elapsed = (self.last_time - begun) if (self.last_time and begun) else None
        else:
            elapsed = self.clock() - begun if begun else None
        evaluation = self.last_eval.metrics if self.last_eval else {}
        metrics = {k[5:]: v for k, v in evaluation.items() if isinstance(v, (int, float))}
        errors = self.errors
        if status == "failed" and not errors:  # the runner and its watcher killed together: nobody recorded it
            errors = list(filter(None, [unrecorded_end(self.run, self.runner_exit, state)]))
        return RunSnapshot(
            run_id=self.run.run_id, path=str(self.run.path), status=status,
            model=start.model, method=start.method, task=start.task, device=start.device, precision=start.precision,
            params_trainable=start.params_trainable, params_total=start.params_total,
            train_examples=start.train_examples,
            step=int(step), max_steps=max_steps, epoch=log.epoch, loss=log.loss,
            learning_rate=log.learning_rate, tokens_per_second=log.tokens_per_second,
            tokens_seen=log.tokens_seen, rss_mb=memory.get("rss_mb"),
            gpu_allocated_mb=memory.get("gpu_allocated_mb"),
            eta_s=None if status in FINISHED else self._eta(int(step), max_steps), elapsed_s=elapsed,
            loss_points=self.loss.points(), eval_points=self.eval_loss.points(), lr_points=self.lr.points(),
            eval_loss=metrics.get("loss"), eval_metrics=metrics, last_checkpoint=self.last_checkpoint,
            status_message=said.message, errors=tuple(errors), warnings=tuple(self.warnings),
            run_end=self.run_end,
            state_error=state.error if state else None, sampled=self.sampled, events=self.events,
            gpus=self._gpus, ram_used_mb=self._ram[0] if self._ram else None,
            ram_total_mb=self._ram[1] if self._ram else None,
            tensorboard=str(self.run.tensorboard) if status in FINISHED and self.run.tensorboard.is_dir() else None,
            task_points={name: self.task_series[name].points() for name in self._task_metrics()
                         if name in self.task_series},
            task_values={name: self.task_series[name].last[1] for name in self._task_metrics()
                         if name in self.task_series and self.task_series[name].last},
            samples=tuple(s for s in (self.samples.samples if self.samples else ()) if isinstance(s, dict)),
            samples_step=self.samples.step if self.samples else None,
        )


def open_time(run_dir: str | os.PathLike) -> float:
    """Seconds to open a run and build its first snapshot (for bench/ui_events.py)."""
    start = time.perf_counter()
    reader = RunReader(RunDir(Path(run_dir)), gpus=False)
    reader.poll()
    return time.perf_counter() - start
