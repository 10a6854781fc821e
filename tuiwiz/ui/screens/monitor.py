"""The train monitor: follows a run from its run dir, never through a pipe to the trainer.

A thread worker reads events.jsonl and train.log incrementally (and GPUs at
about 1 Hz) and posts a coalescing message; the screen redraws at most twice
a second inside batch_update, whatever the event rate. Stop asks the runner to
checkpoint and end; Detach leaves it running.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from tuiwiz.ui.runview import RunReader, RunSnapshot
from tuiwiz.ui.screens.base import ReportsWorkerErrors
from tuiwiz.ui.screens.post_flow import offered, post_action
from tuiwiz.ui.widgets import StepBar, cached_plot, meter
from tuiwiz.units import bar, duration, mib, number

REDRAW_SECONDS = 0.5  # charts and panels at most 2 Hz
LOG_MAX_LINES = 1000
STATUS_STYLE = {"running": "bold green", "completed": "bold green", "failed": "bold red", "stopped": "bold yellow",
                "stopping": "bold yellow", "loading": "bold cyan", "starting": "bold cyan", "created": "cyan"}


def _fit(points: tuple[tuple[float, ...], tuple[float, ...]], width: int) -> tuple[list, list]:
    """At most two points per column of the chart (braille has two dots across a cell); the last kept."""
    xs, ys = points
    step = max(1, len(xs) // max(1, 2 * width))
    if step == 1:
        return list(xs), list(ys)
    keep = list(range(0, len(xs), step))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


class RunUpdated(Message):
    """The reader has news. One pending message stands for all: they coalesce."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated)


def status_lines(s: RunSnapshot, width: int) -> Group:
    """Progress, metrics, memory: the top of the monitor."""
    bar_width = max(10, min(40, width - 56))
    status = Text(f" {s.status.upper()} ", style=STATUS_STYLE.get(s.status.rstrip("?"), "bold"))
    line1 = Text.assemble(status, " ")
    if s.max_steps:
        line1.append(f"step {s.step:,}/{s.max_steps:,} ")
        line1.append(bar(s.progress or 0.0, bar_width), style="cyan")
        line1.append(f" {100 * (s.progress or 0):.0f}%")
    else:
        line1.append(f"step {s.step:,}")
    if s.eta_s is not None:
        line1.append(f"  ETA {duration(s.eta_s)}")
    line1.append(f"  elapsed {duration(s.elapsed_s)}")
    line2 = Text()
    line2.append("loss ", style="bold")
    line2.append(number(s.loss))
    if s.eval_loss is not None:
        line2.append("  ")  # plain gap: an SVG export drops a styled one
        line2.append("eval ", style="bold")
        line2.append(number(s.eval_loss))
    line2.append("  ")
    line2.append("lr ", style="bold")
    line2.append(number(s.learning_rate))
    line2.append("  ")
    line2.append("tok/s ", style="bold")
    line2.append(f"{s.tokens_per_second:,.0f}" if s.tokens_per_second else "-")
    if s.epoch is not None:
        line2.append("  ")
        line2.append("epoch ", style="bold")
        line2.append(f"{s.epoch:.2f}")
    lines = [line1, line2]
    if s.task_values:  # the task's own numbers: DPO's reward margin, GRPO's mean reward, ...
        task_line = Text()
        for name, value in s.task_values.items():
            if task_line:
                task_line.append("  ")
            task_line.append(f"{short_metric(name)} ", style="bold")
            task_line.append(number(value))
        lines.append(task_line)
    mem = Text()
    if s.ram_total_mb:
        mem.append("RAM ", style="bold")
        mem.append_text(meter(s.ram_used_mb or 0, s.ram_total_mb, 10))
        mem.append(f" {mib(s.ram_used_mb)}/{mib(s.ram_total_mb)}")
    if s.rss_mb:
        mem.append("  ")
        mem.append("runner ", style="bold")
        mem.append(mib(s.rss_mb))
    if s.gpu_allocated_mb:
        mem.append("  ")
        mem.append("torch peak ", style="bold")
        mem.append(mib(s.gpu_allocated_mb))
    if s.device or s.method:
        mem.append("  ")
        mem.append(f"{s.method or '?'} on {s.device or '?'}", style="dim")
    lines.append(mem)
    for gpu in s.gpus[:8]:
        g = Text(f"GPU {gpu.index} ", style="bold")
        g.append_text(meter(gpu.memory_used_mb, gpu.memory_total_mb, 10))
        g.append(f" {mib(gpu.memory_used_mb)}/{mib(gpu.memory_total_mb)}")
        g.append(f"  util {gpu.utilization_pct}%" if gpu.utilization_pct is not None else "  util ?")
        if gpu.temperature_c is not None:
            g.append(f"  {gpu.temperature_c}°C")
        lines.append(g)
    if len(s.gpus) > 8:
        lines.append(Text(f"… and {len(s.gpus) - 8} more GPUs", style="dim"))
    return Group(*lines)


def short_metric(name: str) -> str:
    """A logged metric's name as a legend shows it: ``rewards/margins`` -> ``margins``."""
    name = name.removeprefix("rewards/").removeprefix("completions/")
    return ("eval " + name[5:] if name.startswith("eval_") else name).replace("_", " ")


TASK_COLORS = ("green", "red", "cyan", "yellow", "magenta", "blue")


def samples_text(s: RunSnapshot, width: int) -> Text:
    """GRPO's latest sampled completions, one line each: the reward, the prompt, the completion."""
    text = Text(f"sampled at step {s.samples_step}:", style="bold")
    for sample in s.samples:
        reward = sample.get("reward")
        prompt = " ".join(str(sample.get("prompt", "")).split())
        completion = " ".join(str(sample.get("completion", "")).split())
        line = Text("\n")
        line.append(f"{reward:+.2f} " if isinstance(reward, (int, float)) else "  ?   ",
                    style="green" if isinstance(reward, (int, float)) and reward > 0 else "red")
        line.append(prompt[:max(8, width // 3)], style="dim")
        line.append(" → ")
        line.append(completion)
        line.truncate(width + 1, overflow="ellipsis")
        text.append_text(line)
    return text


def _tensorboard(text: Text, s: RunSnapshot) -> None:
    if s.tensorboard:  # output.report_to: [tensorboard], the default (looked for by the reader's thread)
        text.append(f"\nCurves: tensorboard --logdir {s.tensorboard}", style="dim")


def result_text(s: RunSnapshot) -> Text:
    """How the run ended, and what to do next."""
    if s.status == "completed":
        metrics = (s.run_end.metrics if s.run_end else None) or {}
        text = Text("✓ Completed", style="bold green")
        text.append(f" at step {s.step:,}")
        if metrics.get("train_loss") is not None:
            text.append(f": train loss {number(metrics['train_loss'])}")
        if s.eval_loss is not None:
            text.append(f", eval loss {number(s.eval_loss)}")
        if metrics.get("train_runtime"):
            text.append(f", {duration(metrics['train_runtime'])}")
        if metrics.get("train_tokens_per_second"):
            text.append(f", {metrics['train_tokens_per_second']:,.0f} tok/s")
        text.append(f"\nThe model is in {s.run_id}/output.")
        _tensorboard(text, s)
        _warnings(text, s)
        text.append("\nNext: m merge · e export · c chat · n new run · f2 runs", style="cyan")
        return text
    if s.status == "stopped":
        text = Text("■ Stopped", style="bold yellow")
        text.append(f" at step {s.step:,}")
        if s.last_checkpoint:
            text.append(f"; checkpoint {s.last_checkpoint.rsplit('/', 1)[-1]} saved")
        text.append(f".\nContinue with `tuiwiz resume {s.run_id}` or from the runs list (f2, then r).")
        _tensorboard(text, s)
        _warnings(text, s)
        text.append("\nNext: n new run · f2 runs", style="cyan")
        return text
    text = Text("✗ Failed", style="bold red")
    error = s.errors[-1] if s.errors else None
    if error:
        text.append(f" ({error.kind or 'error'}): {error.message or ''}")
        if error.hint:
            text.append(f"\nhint: {error.hint}", style="yellow")
    else:
        text.append(f": {s.state_error or 'the runner ended without a final status (killed, or it crashed)'}")
    text.append(f"\nThe whole log is {s.run_id}/train.log.")
    text.append("\nNext: n new run · f2 runs (resume from the last checkpoint)", style="cyan")
    return text


def _warnings(text: Text, s: RunSnapshot) -> None:
    for warning in s.warnings:
        text.append(f"\n⚠ {warning}", style="yellow")


class MonitorScreen(ReportsWorkerErrors, Screen[str]):
    """Follow one run. Answers "detach", "new" or "runs"."""
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #mon-status {
        height: auto;
        padding: 0 1;
    }

    #mon-charts {
        height: 1fr;
        min-height: 6;
    }

    #mon-loss-box {
        width: 1fr;
    }

    #mon-lr-box {
        display: none;
        width: 1fr;
    }

    MonitorScreen.-wide #mon-lr-box {
        display: block;
        width: 2fr;
    }

    MonitorScreen.-task #mon-lr-box {  /* the task's curves take the learning rate's place, at every width */
        display: block;
    }

    #mon-samples {
        height: auto;
        max-height: 5;
        padding: 0 1;
        display: none;
    }

    MonitorScreen.-wide #mon-loss-box {
        width: 3fr;
    }

    #mon-result {
        height: auto;
        border: round $success;
        padding: 0 1;
    }

    #mon-result.failed {
        border: round $error;
    }

    #mon-log {
        height: 6;
        border: round $surface-lighten-2;
        border-title-color: $text-muted;
    }

    MonitorScreen.-tall #mon-log {
        height: 12;
    }

    MonitorScreen.-short #mon-result {
        border: none;
        background: $boost;
    }
    """

    BINDINGS = [
        Binding("s", "stop", "Stop", id="stop"),
        Binding("k", "kill", "Kill", id="kill"),
        Binding("d,escape", "detach", "Detach", id="detach"),
        Binding("m", "post('merge')", "Merge", id="merge"),
        Binding("e", "post('export')", "Export", id="export"),
        Binding("c", "post('chat')", "Chat", id="chat"),
        Binding("n", "new_run", "New run", id="new-run"),
    ]

    def __init__(self, run) -> None:
        super().__init__()
        self.run = run
        self.snapshot: RunSnapshot | None = None
        self.redraws = 0  # chart redraws, for tests and bench/ui_events.py
        self._dirty = False
        self._chart_key = None

    def compose(self) -> ComposeResult:
        yield StepBar(title=f"Train monitor · {self.run.run_id}")
        yield Static("Opening the run…", id="mon-status")
        with Horizontal(id="mon-charts"):
            yield Vertical(id="mon-loss-box")
            yield Vertical(id="mon-lr-box")
        yield Static("", id="mon-samples")
        yield Static("", id="mon-result")
        yield Log(max_lines=LOG_MAX_LINES, id="mon-log", auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.loss_plot = cached_plot(id="mon-loss")
        self.lr_plot = cached_plot(id="mon-lr")
        self.query_one("#mon-loss-box").mount(self.loss_plot)
        self.query_one("#mon-lr-box").mount(self.lr_plot)
        self.query_one("#mon-result").display = False
        self.query_one("#mon-log", Log).border_title = "train.log"
        self.reader = RunReader(self.run, clock=getattr(self.app, "clock", time.time))
        self.set_interval(REDRAW_SECONDS, self._redraw)
        self._follow()

    # ---------------------------------------------------------------- reading (worker thread)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reader")
    def _follow(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        interval = getattr(self.app, "watch_interval", 0.5)
        while not worker.is_cancelled:
            self._note_exits()
            if self.reader.poll():
                self.post_message(RunUpdated())
            time.sleep(interval)

    def _note_exits(self) -> None:
        """Reap the runners this app started that ended (no zombies), and tell the reader how this run's
        ended: its watcher records a killed trainer; when both were killed at once, the monitor shows it."""
        from tuiwiz.run.rundir import read_state

        for proc in getattr(self.app, "processes", ()):
            code = proc.poll()
            if code is not None and self.reader.runner_exit is None:
                state = read_state(self.run)
                if state is not None and proc.pid in (state.pid, state.pgid):  # this run's runner, not another's
                    self.reader.runner_exit = code

    def on_run_updated(self, message: RunUpdated) -> None:
        self._dirty = True
        if self.snapshot is None:
            self._redraw()  # the first frame of a run comes at once

    # ---------------------------------------------------------------- drawing (at most 2 Hz)

    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        snapshot, lines = self.reader.take()
        if snapshot is None:
            return
        before = self.snapshot
        self.snapshot = snapshot
        width = self.size.width or 80
        with self.app.batch_update():
            self.query_one("#mon-status", Static).update(status_lines(snapshot, width))
            self._draw_charts(snapshot)
            samples = self.query_one("#mon-samples", Static)
            samples.display = bool(snapshot.samples)
            if snapshot.samples:
                samples.update(samples_text(snapshot, width - 2))
            if lines:
                self.query_one("#mon-log", Log).write_lines(lines)
            result = self.query_one("#mon-result", Static)
            if snapshot.finished:
                result.update(result_text(snapshot))
                result.display = True
                result.set_class(snapshot.status == "failed", "failed")
            else:
                result.display = False
        if before is None or before.status != snapshot.status:
            self.refresh_bindings()

    def _draw_charts(self, s: RunSnapshot) -> None:
        key = (s.loss_points[0][-1:], len(s.loss_points[0]), len(s.eval_points[0]), self.size,
               tuple(len(points[0]) for points in s.task_points.values()))
        if key == self._chart_key:
            return
        self._chart_key = key
        self.redraws += 1
        plt = self.loss_plot.plt
        plt.clear_data()
        plt.clear_figure()
        width = self.loss_plot.size.width or 80
        xs, ys = _fit(s.loss_points, width)
        if xs:
            plt.plot(xs, ys, label="train", color="cyan", marker="braille")
        exs, eys = _fit(s.eval_points, width)
        if exs:
            plt.plot(exs, eys, label="eval", color="magenta", marker="braille")
        plt.title("loss" + ("  (history sampled)" if s.sampled else ""))
        self.loss_plot.replot()
        self.set_class(bool(s.task_points), "-task")
        lr = self.lr_plot.plt
        lr.clear_data()
        lr.clear_figure()
        if s.task_points:
            for (name, points), color in zip(s.task_points.items(), TASK_COLORS):
                txs, tys = _fit(points, self.lr_plot.size.width or 40)
                if txs:
                    lr.plot(txs, tys, label=short_metric(name), color=color, marker="braille")
            lr.title(s.task or "task")
        else:
            lxs, lys = _fit(s.lr_points, self.lr_plot.size.width or 40)
            if lxs and self.lr_plot.parent.display:  # hidden below the wide breakpoint
                lr.plot(lxs, lys, color="yellow", marker="braille")
            lr.title("learning rate")
        self.lr_plot.replot()

    # ---------------------------------------------------------------- keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        s = self.snapshot
        status = s.status if s else "unknown"
        if action == "stop":
            return status in ("starting", "loading", "running")
        if action == "kill":
            return status == "stopping"
        if action == "post":
            return offered(str(parameters[0]) if parameters else "", status, s.method if s else None)
        if action == "new_run":
            return s is not None and s.finished
        return True

    @work
    async def action_stop(self) -> None:
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        sure = await self.app.push_screen_wait(ConfirmDialog(
            "Stop the run?", "The runner saves a checkpoint at the end of the current step and stops. "
            f"`tuiwiz resume {self.run.run_id}` continues it later.", yes="Stop", danger=True))
        if sure:
            self._stop(False)

    @work
    async def action_kill(self) -> None:
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        sure = await self.app.push_screen_wait(ConfirmDialog(
            "Kill the run now?", "The runner is killed at once, without saving a checkpoint: the steps since the "
            "last checkpoint are lost.", yes="Kill", danger=True))
        if sure:
            self._stop(True)

    @work(thread=True, exit_on_error=False, group="stop")
    def _stop(self, force: bool) -> None:
        from tuiwiz.run.launch import stop_run

        asked = stop_run(self.run, force=force)
        message = ("killed" if force else "asked the runner to checkpoint and stop") if asked else "not running"
        self.app.call_from_thread(self.notify, message, title=self.run.run_id)

    def action_detach(self) -> None:
        self.dismiss("detach")

    def action_new_run(self) -> None:
        self.dismiss("new")

    @work
    async def action_post(self, what: str) -> None:
        """Merge, export or chat: screens that drive the real commands in a subprocess (no torch here)."""
        await post_action(self.app, what, str(self.run.path), self.run.run_id)
