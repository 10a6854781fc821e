"""Every run on this machine: state, model, method, progress, last loss. Attach, resume, stop, delete."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tuiwiz.errors import UserError
from tuiwiz.ui.screens.base import ReportsWorkerErrors
from tuiwiz.ui.screens.monitor import STATUS_STYLE
from tuiwiz.ui.screens.post_flow import offered, post_action
from tuiwiz.ui.widgets import StepBar
from tuiwiz.units import duration, number

REFRESH_SECONDS = 2.0


class RunsScreen(ReportsWorkerErrors, Screen[str]):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #runs-table {
        height: 1fr;
    }

    #runs-detail {
        height: auto;
        max-height: 4;
        padding: 0 1;
        border-top: solid $surface-lighten-2;
    }
    """
    AUTO_FOCUS = "#runs-table"
    BINDINGS = [
        Binding("enter", "attach", "Attach", id="attach", show=True),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("s", "stop", "Stop", id="stop"),
        Binding("delete,x", "delete", "Delete", id="delete"),
        Binding("m", "post('merge')", "Merge", id="merge"),
        Binding("e", "post('export')", "Export", id="export"),
        Binding("c", "post('chat')", "Chat", id="chat"),
        Binding("n", "new_run", "New run", id="new-run"),
        Binding("escape", "back", "Back", id="back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: dict[str, object] = {}  # path -> RunSummary

    def compose(self) -> ComposeResult:
        yield StepBar(title="Runs on this machine")
        yield DataTable(id="runs-table", cursor_type="row")
        yield Static("", id="runs-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        run_width = max(16, min(44, (self.app.size.width or 80) - 58))
        for label, key in (("Run", "run"), ("State", "state"), ("Model", "model"), ("Method", "method"),
                           ("Progress", "progress"), ("Loss", "loss"), ("Started", "started")):
            table.add_column(label, key=key, width=run_width if key == "run" else None)
        self.refresh_runs()
        self.set_interval(REFRESH_SECONDS, self.refresh_runs)

    # ---------------------------------------------------------------- the list

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def refresh_runs(self) -> None:
        from tuiwiz.run.rundir import registered_runs, summarize

        summaries = []
        for run in reversed(registered_runs()):
            try:
                summaries.append(summarize(run))
            except OSError:
                continue  # deleted while we looked
        self.app.call_from_thread(self._fill, summaries)

    def _fill(self, summaries) -> None:
        if not self.is_attached:
            return
        table = self.query_one("#runs-table", DataTable)
        now = getattr(self.app, "clock", time.time)()
        selected = self.selected_path()
        self.summaries = {s.path: s for s in summaries}
        table.clear()
        for s in summaries:
            state = Text(s.status, style=STATUS_STYLE.get(s.status.rstrip("?"), ""))
            progress = f"{s.step}/{s.max_steps}" if s.step is not None and s.max_steps else (
                str(s.step) if s.step is not None else "-")
            started = f"{duration(now - s.started)} ago" if s.started else "-"
            table.add_row(Text(s.run_id, overflow="ellipsis", no_wrap=True), state, s.model or "?", s.method or "?",
                          progress, number(s.loss) if s.loss is not None else "-", started, key=s.path)
        if not summaries:
            self.query_one("#runs-detail", Static).update(
                "No runs yet. n starts the wizard; `tuiwiz --profile profiles/quickstart.yaml` runs the demo.")
        paths = [s.path for s in summaries]
        if selected in paths:
            table.move_cursor(row=paths.index(selected))
        self._describe()
        self.refresh_bindings()

    def selected_path(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the table is being refilled
            return None

    def selected(self):
        path = self.selected_path()
        return self.summaries.get(path) if path else None

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe()
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_attach()

    def _describe(self) -> None:
        s = self.selected()
        detail = self.query_one("#runs-detail", Static)
        if s is None:
            return
        text = Text.assemble((s.run_id, "bold"), f"  {s.task or '?'} · {s.model} · {s.method}")
        if s.error:
            text.append(f"\n{s.error}", style="red")
        detail.update(text)

    # ---------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        from tuiwiz.run.rundir import ACTIVE, FINISHED

        s = self.selected() if self.is_mounted else None
        status = s.status.rstrip("?") if s else None
        if action == "attach":
            return s is not None or None
        if action == "resume":
            return (status in FINISHED and status != "completed") or None
        if action == "stop":
            return status in ACTIVE or None
        if action == "delete":
            return status in FINISHED or None
        if action == "post":  # hidden unless the run completed (the footer is short at 80 columns)
            return offered(str(parameters[0]) if parameters else "", status, s.method if s else None)
        if action == "back":
            return len(self.app.screen_stack) > 2 or None
        return True

    def _run(self):
        from tuiwiz.run.rundir import RunDir

        s = self.selected()
        return RunDir(Path(s.path)) if s else None

    def action_attach(self) -> None:
        run = self._run()
        if run is not None:
            self.app.open_monitor(run)

    def action_resume(self) -> None:
        run = self._run()
        if run is None:
            return
        from tuiwiz.run.launch import start_runner

        try:
            self.app.processes.append(start_runner(run, resume=True))
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.open_monitor(run)

    @work
    async def action_stop(self) -> None:
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        run = self._run()
        if run is None:
            return
        if await self.app.push_screen_wait(ConfirmDialog(
                "Stop the run?", f"{run.run_id} saves a checkpoint and stops; r resumes it.", yes="Stop",
                danger=True)):
            from tuiwiz.run.launch import stop_run

            stop_run(run)
            self.refresh_runs()

    @work
    async def action_delete(self) -> None:
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        run = self._run()
        if run is None:
            return
        if await self.app.push_screen_wait(ConfirmDialog(
                "Delete the run?", f"This deletes {run.run_id} and everything in its folder: checkpoints, "
                "the trained model, logs. It cannot be undone.", yes="Delete", danger=True)):
            shutil.rmtree(run.path, ignore_errors=True)
            self.notify(f"deleted {run.run_id}")
            self.refresh_runs()

    @work
    async def action_post(self, what: str) -> None:
        """Merge, export or chat the selected completed run (see ui/screens/post_flow.py)."""
        run = self._run()
        if run is not None:
            await post_action(self.app, what, str(run.path), run.run_id)

    def action_new_run(self) -> None:
        self.app.restart_wizard("model")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.dismiss("back")
