"""Every run on this machine: state, model, method, progress, last loss. Attach, resume, stop, delete."""

from __future__ import annotations

import asyncio
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
PIPELINE = "pipeline"  # the task column of a pipeline's own row (tuiwiz.run.pipeline.with_pipelines)


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
        self.summaries: dict[str, object] = {}  # row key (a folder) -> RunSummary
        self.pipeline_of: dict[str, str] = {}  # a stage's row key -> its pipeline's folder

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
        from tuiwiz.run.pipeline import with_pipelines
        from tuiwiz.run.rundir import registered_runs, summarize

        summaries = []
        for run in reversed(registered_runs()):
            try:
                summaries.append(summarize(run))
            except OSError:
                continue  # deleted while we looked
        self.app.call_from_thread(self._fill, with_pipelines(summaries))

    def _fill(self, summaries) -> None:
        if not self.is_attached:
            return
        table = self.query_one("#runs-table", DataTable)
        now = getattr(self.app, "clock", time.time)()
        selected = self.selected_path()
        self.summaries, self.pipeline_of = {}, {}
        pipeline = None
        table.clear()
        for s in summaries:
            if s.task == PIPELINE:
                pipeline = s.path
            elif not s.run_id.startswith("  "):
                pipeline = None
            key = s.path or f"{pipeline}#{s.run_id.strip()}"  # a pending stage has no folder yet
            self.summaries[key] = s
            if pipeline is not None and s.task != PIPELINE:
                self.pipeline_of[key] = pipeline
            state = Text(s.status, style=STATUS_STYLE.get(s.status.rstrip("?"), ""))
            progress = f"{s.step}/{s.max_steps}" if s.step is not None and s.max_steps else (
                str(s.step) if s.step is not None else "-")
            started = f"{duration(now - s.started)} ago" if s.started else "-"
            label = s.run_id
            if key in self.pipeline_of:  # a stage: its name under its pipeline's row, not the long run id again
                label = "  └ " + s.run_id.strip().removeprefix(Path(self.pipeline_of[key]).name + "-")
            table.add_row(Text(label, overflow="ellipsis", no_wrap=True), state, s.model or "?", s.method or "?",
                          progress, number(s.loss) if s.loss is not None else "-", started, key=key)
        if not summaries:
            self.query_one("#runs-detail", Static).update(
                "No runs yet. n starts the wizard; `tuiwiz --profile profiles/quickstart.yaml` runs the demo.")
        paths = list(self.summaries)
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
        if s.task == PIPELINE:
            stages = sum(owner == s.path for owner in self.pipeline_of.values())
            text = Text.assemble((s.run_id, "bold"), f"  pipeline of {stages} stages: {s.method.replace('>', ' → ')}")
        elif (self.selected_path() or "") in self.pipeline_of:
            owner = Path(self.pipeline_of[self.selected_path()]).name
            text = Text.assemble((s.run_id.strip(), "bold"), f"  stage of {owner} · {s.task or '?'} · {s.model or '-'}")
        else:
            text = Text.assemble((s.run_id, "bold"), f"  {s.task or '?'} · {s.model} · {s.method}")
        if s.error:
            text.append(f"\n{s.error}", style="red")
        detail.update(text)

    # ---------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        from tuiwiz.run.rundir import ACTIVE, FINISHED

        s = self.selected() if self.is_mounted else None
        status = s.status.rstrip("?") if s else None
        if s is not None and (s.task == PIPELINE or self.selected_path() in self.pipeline_of):
            return self._check_pipeline_action(action, parameters, s, status)
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

    def _check_pipeline_action(self, action: str, parameters: tuple[object, ...], s, status: str | None) -> bool | None:
        """A pipeline stops, resumes and is deleted whole: its stages only attach (and, once completed, offer
        what a finished run offers)."""
        from tuiwiz.run.rundir import FINISHED

        pipe = s.path if s.task == PIPELINE else self.pipeline_of[self.selected_path()]
        whole = self.summaries.get(pipe)
        whole_status = whole.status.rstrip("?") if whole else None
        if action == "attach":
            return (bool(self._stages(pipe)) if s.task == PIPELINE else bool(s.path)) or None
        if action == "resume":
            return whole_status in ("stopped", "failed") or None
        if action == "stop":
            return whole_status in ("running", "stopping") or None
        if action == "delete":
            return (s.task == PIPELINE and whole_status in FINISHED) or None
        if action == "post":  # a stage's trained model, like a lone run's; the pipeline's row has none
            if s.task == PIPELINE or not s.path:
                return None
            return offered(str(parameters[0]) if parameters else "", status, s.method)
        if action == "back":
            return len(self.app.screen_stack) > 2 or None
        return True

    def _stages(self, pipeline: str) -> list[str]:
        """The run folders of a pipeline's started stages, first to last."""
        return [key for key, owner in self.pipeline_of.items() if owner == pipeline and self.summaries[key].path]

    def _pipeline(self):
        """The selected pipeline, or the pipeline of the selected stage (None for a lone run)."""
        from tuiwiz.run.pipeline import PipelineDir

        s, key = self.selected(), self.selected_path()
        if s is None:
            return None
        if s.task == PIPELINE:
            return PipelineDir(Path(s.path))
        return PipelineDir(Path(self.pipeline_of[key])) if key in self.pipeline_of else None

    def _run(self):
        from tuiwiz.run.rundir import RunDir

        s = self.selected()
        if s is not None and s.task == PIPELINE:  # its latest started stage
            stages = self._stages(s.path)
            return RunDir(Path(stages[-1])) if stages else None
        return RunDir(Path(s.path)) if s and s.path else None

    def action_attach(self) -> None:
        run = self._run()
        if run is not None:
            self.app.open_monitor(run)

    def action_resume(self) -> None:
        pipe = self._pipeline()
        if pipe is not None:
            from tuiwiz.run.pipeline import start_driver

            try:
                self.app.processes.append(start_driver(pipe, resume=True))
            except UserError as exc:
                self.notify(str(exc), severity="error")
                return
            self.notify(f"resumed pipeline {pipe.pipeline_id}: it goes on from its first unfinished stage")
            self.refresh_runs()
            return
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
        """Stop the selected run, or the whole pipeline of the selected pipeline or stage."""
        pipe = self._pipeline()
        run = None if pipe is not None else self._run()
        if pipe is not None:
            title, text = "Stop the pipeline?", (f"{pipe.pipeline_id}: its running stage saves a checkpoint and "
                                                 "stops, and no later stage starts; r resumes it.")
        elif run is not None:
            title, text = "Stop the run?", f"{run.run_id} saves a checkpoint and stops; r resumes it."
        else:
            return
        if await self._confirm(title, text, "Stop"):
            from tuiwiz.run.launch import stop_run
            from tuiwiz.run.pipeline import stop_pipeline

            if pipe is not None:
                await asyncio.to_thread(stop_pipeline, pipe)
            else:
                await asyncio.to_thread(stop_run, run)
            self.refresh_runs()

    @work
    async def action_delete(self) -> None:
        """Delete the selected run's folder, or a pipeline's with every stage's run in it."""
        pipe = self._pipeline()
        run = None if pipe is not None else self._run()
        if pipe is not None:
            path, name, what = pipe.path, pipe.pipeline_id, "every stage's run in it: checkpoints, trained models, logs"
        elif run is not None:
            path, name, what = run.path, run.run_id, "everything in its folder: checkpoints, the trained model, logs"
        else:
            return
        kind = "pipeline" if pipe is not None else "run"
        if await self._confirm(f"Delete the {kind}?", f"This deletes {name} and {what}. It cannot be undone.",
                               "Delete"):
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)  # gigabytes of checkpoints, off the loop
            self.notify(f"deleted {name}")
            self.refresh_runs()

    async def _confirm(self, title: str, text: str, yes: str) -> bool:
        from tuiwiz.ui.screens.dialogs import ConfirmDialog

        return bool(await self.app.push_screen_wait(ConfirmDialog(title, text, yes=yes, danger=True)))

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
