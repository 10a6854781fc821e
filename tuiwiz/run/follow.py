"""Following a run from its event log, for the headless commands.

A rich progress bar on a terminal; one plain line per logged step otherwise.
The end of a run is read from the state file checked against the process,
never from the log alone (a resumed run's log holds earlier endings).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from tuiwiz.run.event_types import (
    CheckpointEvent,
    ErrorEvent,
    EvalEvent,
    Event,
    LogEvent,
    RunEndEvent,
    RunStartEvent,
    StatusEvent,
    WarningEvent,
    parse_event,
)
from tuiwiz.run.events import EventTail
from tuiwiz.run.launch import stop_run
from tuiwiz.run.next_steps import next_commands
from tuiwiz.run.rundir import ACTIVE, FINISHED, RunDir, effective_status, read_state, unrecorded_end, watcher_alive

EXIT_CODES = {"completed": 0, "failed": 1, "stopped": 130}


@dataclass
class FollowResult:
    status: str
    last_log: LogEvent | None = None
    run_end: RunEndEvent | None = None
    errors: list[ErrorEvent] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def format_log(event: LogEvent) -> str:
    parts = [f"step {event.step}/{event.max_steps}"]
    if event.epoch is not None:
        parts.append(f"epoch {event.epoch:.2f}")
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    if event.learning_rate is not None:
        parts.append(f"lr {event.learning_rate:.2e}")
    if event.tokens_per_second:
        parts.append(f"{event.tokens_per_second:.0f} tok/s")
    return "  ".join(parts)


def _describe(event: Event) -> str | None:
    if isinstance(event, LogEvent):
        return format_log(event)
    if isinstance(event, StatusEvent):
        extra = f" ({event.message})" if event.message else ""
        return f"status: {event.status}{extra}"
    if isinstance(event, RunStartEvent):
        resumed = f", resumed from {event.resumed_from}" if event.resumed_from else ""
        return (
            f"training {event.model} with {event.method} on {event.device} "
            f"({event.precision}, world size {event.world_size}): "
            f"{event.params_trainable:,} of {event.params_total:,} parameters trainable, "
            f"{event.train_examples} examples{resumed}"
        )
    if isinstance(event, EvalEvent):
        metrics = ", ".join(f"{k[5:]} {v:.4f}" for k, v in event.metrics.items() if isinstance(v, float))
        return f"eval at step {event.step}: {metrics}"
    if isinstance(event, CheckpointEvent):
        return f"checkpoint saved at step {event.step}"
    if isinstance(event, ErrorEvent):
        hint = f"\n  hint: {event.hint}" if event.hint else ""
        return f"error ({event.kind}): {event.message}{hint}"
    if isinstance(event, WarningEvent):
        return f"warning: {event.message}"
    return None


def _finished(run: RunDir, proc: subprocess.Popen | None) -> bool:
    if proc is not None and proc.poll() is None:
        return False
    state = read_state(run)
    if state is None:
        return True
    if state.status in ACTIVE and watcher_alive(state):
        return False  # the trainer is gone and its watcher is recording how
    return effective_status(run, state) in FINISHED


def _wait(proc: subprocess.Popen | None, seconds: float) -> None:
    """Until the next look at the run: ``seconds``, or less when the process this command started ends (the
    command then ends with it rather than up to a poll later)."""
    if proc is None:
        time.sleep(seconds)
        return
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def follow(run: RunDir, proc: subprocess.Popen | None = None, *, out: TextIO | None = None,
           live: bool | None = None, poll: float = 0.25) -> FollowResult:
    """Show a run's events until it ends. Ctrl-C asks it to stop; twice kills it."""
    out = out or sys.stdout  # the stream in force now, not at import
    live = out.isatty() if live is None else live
    tail = EventTail(run.events)
    result = FollowResult(status="unknown")
    interrupts = 0
    progress = task = None
    if live:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        console = Console(file=out)
        # At 80 columns the step count and the time left stay whole; the loss/lr/throughput line is cut.
        progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=8)),
            BarColumn(bar_width=12), MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=11)),
            TextColumn("{task.fields[info]}", table_column=Column(
                no_wrap=True, overflow="ellipsis", max_width=max(10, console.width - 44))),
            TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)), console=console, transient=False,
        )
        progress.start()
        task = progress.add_task("loading", total=None, info="")

    def say(text: str) -> None:
        if progress is not None:
            progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=out, flush=True)

    try:
        while True:
            try:
                done = _finished(run, proc)
                events = [parse_event(raw) for raw in tail.read()]
                if done and proc is not None:
                    # the runner and its watcher killed together: shown, not recorded (no writer is left)
                    events += filter(None, [unrecorded_end(run, proc.returncode)])
                for event in events:
                    if isinstance(event, LogEvent):
                        result.last_log = event
                        if progress is not None:
                            info = format_log(event).split("  ", 1)[-1]
                            progress.update(task, description="training", completed=event.step or 0,
                                            total=event.max_steps or None, info=info)
                            continue
                    elif isinstance(event, RunEndEvent):
                        result.run_end = event
                    elif isinstance(event, ErrorEvent):
                        result.errors.append(event)
                    text = _describe(event)
                    if text:
                        say(text)
                if done:
                    break
                _wait(proc, poll)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    say("stopping: the run saves a checkpoint and ends (Ctrl-C again to kill it at once)")
                    stop_run(run)
                else:
                    say("killing the run")
                    stop_run(run, force=True)
    finally:
        if progress is not None:
            progress.stop()
    result.status = effective_status(run)
    return result


def print_result(run: RunDir, result: FollowResult, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    state = read_state(run)
    if result.status == "completed" and result.run_end:
        metrics = result.run_end.metrics or {}
        print(
            f"completed: train loss {metrics.get('train_loss', float('nan')):.4f}, "
            f"{metrics.get('train_runtime', 0):.1f} s, {metrics.get('train_tokens_per_second', 0):.0f} tokens/s",
            file=out,
        )
        print(f"output: {result.run_end.output}", file=out)
    elif result.status == "stopped":
        checkpoint = run.last_checkpoint()
        where = f" at {checkpoint}" if checkpoint else ""
        print(f"stopped; checkpoint{where}. Continue with: tuiwiz resume {run.run_id}", file=out)
    elif result.status == "failed":
        if not result.errors:
            message = (state.error if state and state.error else
                       "the runner process ended without a final status (killed, or it crashed)")
            print(f"failed: {message}", file=out)
        print(f"log: {run.log}", file=out)
    print(f"run: {run.run_id} ({run.path})", file=out)
    steps = next_commands(run, result.status)
    if steps:
        print("next:", file=out)
        for what, command in steps:  # a comment, then the command to copy: each fits 80 columns
            print(f"  # {what}\n  {command}", file=out)


def follow_pipeline(pipe, *, out: TextIO | None = None, live: bool | None = None, poll: float = 0.25) -> int:
    """Show each stage of a pipeline (tuiwiz/run/pipeline.py) as it runs, until the pipeline ends.
    Ctrl-C stops the stage that runs, and so the pipeline. Returns the exit code."""
    from pathlib import Path

    from tuiwiz.run.pipeline import pipeline_status, stop_pipeline

    out = out or sys.stdout
    followed: set[str] = set()
    last: tuple[RunDir, FollowResult] | None = None
    while True:
        try:
            state = pipe.read()
            for entry in state.stages:
                if entry.run and entry.name not in followed:
                    run = RunDir(Path(entry.run))
                    print(f"== stage {entry.name} ({entry.task}): run {run.run_id}", file=out, flush=True)
                    result = follow(run, out=out, live=live, poll=poll)
                    print(f"== stage {entry.name}: {result.status}", file=out, flush=True)
                    followed.add(entry.name)
                    last = (run, result)
            status = pipeline_status(pipe)
            if status in FINISHED:
                break
            time.sleep(poll)
        except KeyboardInterrupt:
            print("stopping the pipeline: its running stage saves a checkpoint and ends", file=out, flush=True)
            stop_pipeline(pipe)
    state = pipe.read()
    if last is not None and (status != "completed" or last[0].path == Path(state.stages[-1].run or "")):
        print_result(last[0], last[1], out)
    done = [s.name for s in state.stages if s.status == "completed"]
    print(f"pipeline {pipe.pipeline_id}: {status} ({len(done)} of {len(state.stages)} stages completed"
          + (f": {', '.join(done)}" if done else "") + ")", file=out)
    if state.error:
        print(f"  {state.error}", file=out)
    if status in ("stopped", "failed"):
        print(f"  continue with: tuiwiz resume {pipe.pipeline_id}", file=out)
    return EXIT_CODES.get(status, 1)
