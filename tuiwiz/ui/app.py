"""The Textual app: a linear wizard (one coroutine), the train monitor and the runs list.

Start-up stays near a bare Textual app: screens are imported when first shown,
the core modules inside workers. The app owns the long jobs (launching a run,
building the demo model), so leaving a screen never cancels them. A run is a
detached process: quitting the app, or losing the terminal, never stops it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tuiwiz.ui.choices import STEPS, WizardState


def _active_runs() -> list:
    """Registered runs whose runner is alive, newest first (in a worker: psutil and a disk scan)."""
    from tuiwiz.run.rundir import ACTIVE, effective_status, is_probe_run, registered_runs

    return [run for run in reversed(registered_runs())
            if effective_status(run) in ACTIVE and not is_probe_run(run.path)]


class TuiwizApp(App[int]):
    """tuiwiz: plan, launch and follow a fine-tune."""

    TITLE = "tuiwiz"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("f1", "help", "Help", id="help"),
        Binding("question_mark", "help", "Help", show=False, id="help-alt"),
        Binding("f2", "runs", "Runs", id="runs"),
        Binding("ctrl+q", "quit", "Quit", priority=True, id="quit"),
    ]

    def __init__(
        self,
        state: WizardState | None = None,
        *,
        start: str = "hardware",
        attach: str | None = None,
        clock: Callable[[], float] = time.time,
        blink: bool = True,
        offer_attach: bool = True,
        watch_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.state = state or WizardState()
        self.start_step = start
        self.attach_on_start = attach
        self.clock = clock
        self.blink = blink
        self.offer_attach = offer_attach
        self.watch_interval = watch_interval
        self.launched: list = []  # runs started in this session (RunDir)
        self.processes: list = []  # their Popen objects, polled so a finished runner is reaped
        self.probe_runs: list = []  # probe runs started from the Review step (RunDir), ended when the app quits
        self._farewell: list[str] = []

    # ---------------------------------------------------------------- start and the wizard

    def on_worker_state_changed(self, event) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:  # the app's own workers (a screen reports its own)
            self.report_worker_error(event.worker)

    def report_worker_error(self, worker) -> None:
        """An unexpected exception in a background task: a bug, said plainly, with its traceback in the log."""
        import traceback

        error = worker.error
        self.log.error("".join(traceback.format_exception(error)) if error else f"worker {worker.name} failed")
        self.notify(f"{worker.name or 'a background task'} failed: {type(error).__name__}: {error}\n"
                    "This is a bug in tuiwiz; please report it with what you were doing.",
                    title="Internal error", severity="error", timeout=30)

    def on_mount(self) -> None:
        if self.attach_on_start:
            from tuiwiz.run.rundir import find_run

            self.action_attach(str(find_run(self.attach_on_start).path))
            return
        self.wizard(self.start_step)
        if self.offer_attach:
            self.set_timer(0.2, self._offer_attach)  # after the first frame: it scans every run

    @work(group="wizard", exclusive=True)
    async def wizard(self, start: str = "hardware") -> None:
        """The linear flow: each step is a Screen[str] answering "next" or "back"."""
        index = STEPS.index(start)
        while True:
            screen = self._step_screen(STEPS[index])
            answer = await self.push_screen_wait(screen)
            if answer == "back":
                index = max(0, index - 1)
            elif answer == "launched":
                self.open_monitor(self.launched[-1], after="runs")
                return
            else:
                index = min(len(STEPS) - 1, index + 1)

    def _step_screen(self, step: str) -> Screen:
        if step == "hardware":
            from tuiwiz.ui.screens.hardware import HardwareScreen as cls
        elif step == "model":
            from tuiwiz.ui.screens.model import ModelScreen as cls
        elif step == "data":
            from tuiwiz.ui.screens.data import DataScreen as cls
        elif step == "method":
            from tuiwiz.ui.screens.method import MethodScreen as cls
        elif step == "settings":
            from tuiwiz.ui.screens.settings import SettingsScreen as cls
        else:
            from tuiwiz.ui.screens.review import ReviewScreen as cls
        return cls(self.state)

    def restart_wizard(self, step: str = "model") -> None:
        """Back to the wizard (a new run), keeping the choices made so far."""
        self.workers.cancel_group(self, "wizard")
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.wizard(step)

    @work(thread=True, exit_on_error=False, group="attach-offer")
    def _offer_attach(self) -> None:
        running = _active_runs()
        if running:
            self.call_from_thread(self._ask_attach, running)

    def _ask_attach(self, running: list) -> None:
        from tuiwiz.ui.screens.dialogs import AttachDialog

        def answered(choice: str | None) -> None:
            if choice == "attach":
                self.open_monitor(running[0])
            elif choice == "runs":
                self.action_runs()

        self.push_screen(AttachDialog([run.run_id for run in running]), answered)

    # ---------------------------------------------------------------- runs and the monitor

    def open_monitor(self, run, after: str | None = None) -> None:
        """Follow ``run``. On detach: back to the screen below, or to the runs list when there is none."""
        from tuiwiz.ui.screens.monitor import MonitorScreen

        def closed(answer: str | None) -> None:
            if answer == "new":
                self.restart_wizard("model")
            elif answer == "runs" or (after == "runs" and answer == "detach") or len(self.screen_stack) <= 1:
                if not any(type(s).__name__ == "RunsScreen" for s in self.screen_stack):
                    self.action_runs()

        self.push_screen(MonitorScreen(run), closed)

    def action_attach(self, path: str) -> None:
        from tuiwiz.run.rundir import RunDir

        self.open_monitor(RunDir(Path(path)))

    def action_runs(self) -> None:
        from tuiwiz.ui.screens.runs import RunsScreen

        if isinstance(self.screen, RunsScreen):
            return
        self.push_screen(RunsScreen())

    def action_help(self) -> None:
        from tuiwiz.ui.screens.help import HelpScreen

        if type(self.screen).__name__ == "HelpScreen":
            return
        self.push_screen(HelpScreen(self.screen))

    def action_new_run(self) -> None:
        self.restart_wizard("model")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Runs", "Every run on this machine: attach, resume, stop, delete", self.action_runs)
        yield SystemCommand("New run", "Start the wizard again from the model step", self.action_new_run)
        yield SystemCommand("Hardware", "Back to the first step: GPUs, CPU, RAM, disk",
                            lambda: self.restart_wizard("hardware"))
        yield SystemCommand("Help", "Keys and what each step does", self.action_help)
        if self.launched:
            last = self.launched[-1]
            yield SystemCommand(f"Attach to {last.run_id}", "Follow the run started in this session",
                                lambda: self.open_monitor(last))
        yield from super().get_system_commands(screen)

    # ---------------------------------------------------------------- quitting

    def stop_probes(self) -> None:
        """A probe run measures a fit for this session only: it ends with the app (its folder goes with it)."""
        import shutil

        from tuiwiz.run.launch import stop_run

        for run in self.probe_runs:
            stop_run(run, force=True)
            shutil.rmtree(run.path, ignore_errors=True)
        self.probe_runs.clear()

    async def action_quit(self) -> None:
        self.stop_probes()
        running = [run for run in _active_runs()]
        if not running:
            self.exit(0)
            return
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        names = ", ".join(run.run_id for run in running[:3]) + (" and more" if len(running) > 3 else "")
        message = (f"{names} keep{'s' if len(running) == 1 else ''} training: the runner does not depend on "
                   "this terminal. Follow it again with `tuiwiz attach RUN`, or run `tuiwiz`.")

        def answered(quit_: bool | None) -> None:
            if quit_:
                self._farewell = [f"still training: {run.run_id} (tuiwiz attach {run.run_id})" for run in running]
                self.exit(0)

        self.push_screen(ConfirmDialog("Quit tuiwiz?", message, yes="Quit", no="Stay"), answered)

    def farewell(self) -> list[str]:
        """Lines to print after the app has left the terminal."""
        return list(self._farewell)
