"""Step 3: the data. A file, a hub dataset id or demo:NAME; its format and columns; three examples as
the model will see them (chat template applied, trained part highlighted); token lengths against the
max length; and the problems, each with its line number (the first 50 by line, and a count of the rest).

Files are read and tokenized (the ``tokenizers`` library on tokenizer.json) in a worker.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static, TabbedContent, TabPane

from tuiwiz.data.stats import DataStats
from tuiwiz.ui.choices import (
    COLUMN_ROLES,
    DEMO_DATA_FOR_TASK,
    FOLLOW_UP_TASKS,
    FORMATS,
    TASKS,
    check_data,
    column_map,
    default_start,
    start_candidates,
    suggested_max_length,
)
from tuiwiz.ui.render import PROMPT_STYLE, TRAINED_STYLE, example_view, problem_text
from tuiwiz.ui.screens.base import StepScreen
from tuiwiz.ui.widgets import cached_plot

SAMPLES = 3


PADDING_BATCH = 8  # the micro-batch assumed before the Method step chooses one


def _packing_saves(stats, limit: int | None, task: str) -> float | None:
    """The share of padded batches' tokens packing would not compute (None where packing does not apply)."""
    if stats is None or not stats.lengths or task not in ("sft", "pretrain"):
        return None
    return DataStats.from_lengths(stats.lengths).work(limit or stats.max_length, PADDING_BATCH).packing_saves


class DataScreen(StepScreen):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #data-start-row {
        height: 1;
        margin: 0 1;
        display: none;
    }

    #data-start-row.follow-up {
        display: block;
    }

    #data-start {
        width: 1fr;
    }

    #data-source, #data-options, #length-row {
        height: 1;
        margin: 0 1;
    }

    #data-path {
        width: 1fr;
    }

    #data-browse {
        margin-left: 1;
    }

    #data-options Select {
        width: 20;
    }

    #data-summary {
        width: 1fr;
        color: $text-muted;
    }

    #data-tabs {
        height: 1fr;
    }

    #data-tabs TabPane {
        padding: 0 1;
    }

    .sample {
        margin-top: 1;
    }

    #data-max-length {
        width: 12;
    }

    #length-row {
        height: auto;  /* the statistics, and under them what packing would save */
    }

    #length-stats {
        width: 1fr;
    }

    #length-plot {
        height: 1fr;
    }

    #columns-grid {
        grid-size: 2;
        grid-columns: 14 1fr;
        grid-rows: 1;
        grid-gutter: 0 1;
        height: auto;
        margin-top: 1;
    }
    """
    STEP = "data"
    AUTO_FOCUS = "#data-path"
    BINDINGS = [Binding("ctrl+o", "browse", "Browse", id="browse")]

    def body(self) -> ComposeResult:
        with Horizontal(id="data-source"):
            yield Input(self.state.data_path, placeholder="data file, hub dataset id, or demo:NAME",
                        id="data-path", compact=True)
            yield Button("Browse…", id="data-browse", compact=True)
        with Horizontal(id="data-options"):
            yield Label("Task ")
            yield Select([(t, t) for t in TASKS], value=self.state.task, allow_blank=False, id="data-task",
                         compact=True)
            yield Label(" Format ")
            yield Select([(f, f) for f in FORMATS], value=self.state.data_format, allow_blank=False,
                         id="data-format", compact=True)
            yield Static("", id="data-summary")
        with Horizontal(id="data-start-row"):
            yield Label("Start from ")
            yield Select([], prompt="the model itself", id="data-start", compact=True)
        with TabbedContent(id="data-tabs"):
            with TabPane("Samples", id="tab-samples"):
                with VerticalScroll(id="data-samples"):
                    yield Static("", id="data-legend")
                    for i in range(SAMPLES):
                        yield Static("", id=f"sample-{i}", classes="sample")
            with TabPane("Lengths", id="tab-lengths"):
                with Horizontal(id="length-row"):
                    yield Label("Max length ")
                    yield Input(str(self.state.max_length or ""), placeholder="auto", id="data-max-length",
                                compact=True, type="integer")
                    yield Static("", id="length-stats")
                yield Static("", id="length-plot-holder")
            with TabPane("Columns", id="tab-columns"):
                with VerticalScroll():
                    yield Static("", id="data-keys")
                    with Grid(id="columns-grid"):
                        for role in COLUMN_ROLES:
                            yield Label(role)
                            yield Input(self.state.columns.get(role) or "", placeholder="default",
                                        id=f"col-{role}", compact=True)
            with TabPane("Problems", id="tab-problems"):
                with VerticalScroll():
                    yield Static("", id="data-problems")

    def __init__(self, state) -> None:
        super().__init__(state)
        self.checked = None  # DataCheck of the current choices
        self.problems = None  # data.DataProblems: all of them, where check_data stopped at the first
        self.loading = False
        self.suggested = None
        self.sample_texts = []
        self._plot = None

    def on_mount(self) -> None:
        super().on_mount()
        self.reload()
        self._find_starts()

    @work(thread=True, exclusive=True, exit_on_error=False, group="starts")
    def _find_starts(self) -> None:
        """Completed runs a follow-up task (DPO after SFT) may start from: read off the event loop."""
        candidates = start_candidates(self.state)
        self.app.call_from_thread(self._show_starts, candidates)

    def _show_starts(self, candidates) -> None:
        if not self.is_attached:
            return
        row = self.query_one("#data-start-row")
        row.set_class(self.state.task in FOLLOW_UP_TASKS, "follow-up")
        select = self.query_one("#data-start", Select)
        self._starting = True  # the options below change the value; that is not the user's choice
        select.set_options([(c.label, c.path) for c in candidates])
        if self.state.task not in FOLLOW_UP_TASKS:
            self.state.start_from = None
        elif self.state.start_from is None or self.state.start_from not in {c.path for c in candidates}:
            self.state.start_from = default_start(self.state, candidates)
        if self.state.start_from:
            select.value = self.state.start_from
        else:
            select.clear()
        self._starting = False

    @on(Select.Changed, "#data-start")
    def _start_changed(self, event: Select.Changed) -> None:
        if getattr(self, "_starting", False):
            return
        self.state.start_from = None if event.value in (Select.BLANK, Select.NULL) else str(event.value)

    # ---------------------------------------------------------------- reading

    def ready(self) -> bool:
        check = getattr(self, "checked", None)
        return bool(check is not None and not self.loading and check.error is None)

    def reload(self) -> None:
        self.loading = True
        self.update_nav()
        self.say(f"reading {self.state.data_path}…")
        self._check(self._max_length_choice())

    def _max_length_choice(self) -> int | None:
        value = self.query_one("#data-max-length", Input).value.strip()
        return int(value) if value.isdigit() and int(value) >= 8 else None

    @work(thread=True, exclusive=True, exit_on_error=False, group="check")
    def _check(self, chosen: int | None) -> None:
        check = check_data(self.state, max_length=chosen or 2048)
        suggested = None
        if check.stats is not None:
            self.state.length_stats = check.stats
            suggested = suggested_max_length(self.state)
            if chosen is None and suggested != check.stats.max_length:
                check = check_data(self.state, max_length=suggested)
        saves = _packing_saves(check.stats, chosen or suggested, self.state.task)  # here, off the event loop
        self.app.call_from_thread(self._show, check, chosen, suggested, self._all_problems(check.error), saves)

    def _all_problems(self, error):
        """The file read again going past each bad line (only when it has one): check_data, like the
        runner, stops at the first."""
        if error is None or error.kind != "data" or not error.file:
            return None
        from tuiwiz.data.datasets import find_problems

        return find_problems(error.file, format=self.state.data_format, columns=column_map(self.state.columns),
                             task=self.state.task)

    def _show(self, check, chosen: int | None, suggested: int | None, problems=None,
              saves: float | None = None) -> None:
        if not self.is_attached:
            return
        self.checked = check
        self.problems = problems
        self.loading = False
        self.state.data = check.data
        self.state.length_stats = check.stats
        self.state.data_error = check.error
        self.suggested = suggested
        with self.app.batch_update():
            self._show_summary(check)
            self._show_samples(check)
            self._show_lengths(check, chosen, suggested, saves)
            self._show_problems(check)
        self.update_nav()

    def _show_summary(self, check) -> None:
        summary = self.query_one("#data-summary", Static)
        if check.data is not None:
            summary.update(f" {len(check.data):,} rows, {check.data.format}")
            self.say(check.note or f"{len(check.data):,} examples read")
        elif check.error is not None:
            summary.update(Text(" cannot be read", style="red"))
            self.say("see Problems: the data cannot be used as it is")
        else:
            summary.update(" hub dataset")
            self.say(check.note or "")
        keys = self.query_one("#data-keys", Static)
        if check.data is not None and check.data.records:
            keys.update(Text.assemble(("Format ", "bold"), check.data.format, "  ·  leave a field empty for the "
                                      "usual names (instruction/prompt, output/response, messages, text, label)"))
        else:
            keys.update("")

    def _show_samples(self, check) -> None:
        legend = self.query_one("#data-legend", Static)
        samples = [self.query_one(f"#sample-{i}", Static) for i in range(SAMPLES)]
        self.sample_texts: list[Text] = []
        if check.data is None:
            legend.update(Text(check.note or (check.error.message if check.error else ""), style="italic"))
            for s in samples:
                s.update("")
            return
        folder = getattr(self.state.model_info, "path", None)
        legend.update(Text.assemble("As the model sees them: ", ("prompt (no loss)", PROMPT_STYLE), " · ",
                                    ("trained part", TRAINED_STYLE)))
        model_text = None
        if folder:
            from tuiwiz.data.rendering import ModelText

            model_text = ModelText(folder)
        for i, widget in enumerate(samples):
            if i >= len(check.data.records):
                widget.update("")
                continue
            record = check.data.records[i]
            head = Text(f"example {i + 1} · line {check.data.source_lines[i]}\n", style="bold")
            try:
                body = example_view(record, check.data.format, model_text)
            except Exception as exc:  # a template that rejects this record: say so, in place
                body = Text(f"cannot render: {exc}", style="red")
            self.sample_texts.append(body)
            widget.update(Group(head, body))

    def _show_lengths(self, check, chosen: int | None, suggested: int | None, saves: float | None) -> None:
        stats = check.stats
        line = self.query_one("#length-stats", Static)
        input_ = self.query_one("#data-max-length", Input)
        input_.placeholder = f"auto: {suggested}" if suggested else "auto"
        holder = self.query_one("#length-plot-holder", Static)
        if stats is None:
            line.update(Text(check.note or "no token counts", style="italic"))
            if self._plot is not None:
                self._plot.display = False
            return
        limit = chosen or suggested or stats.max_length
        over = sum(1 for n in stats.lengths if n > limit)
        text = Text(f" p50 {stats.p50}  p95 {stats.p95}  max {stats.max} tokens")
        if stats.sampled < stats.rows:
            text.append(f" (sample of {stats.sampled:,})", style="dim")
        if over:
            text.append(f"  {over} over the limit: truncated", style="yellow")
        if stats.prompt_too_long:
            text.append(f"  {stats.prompt_too_long} with nothing left to learn", style="red")
        if saves is not None:
            text.append(f"\n packing saves {saves:.0%} of the tokens of batches of {PADDING_BATCH} padded to their "
                        "longest" if saves >= 0.05 else "\n even lengths: packing would save little", style="dim")
        line.update(text)
        self._draw_histogram(holder, stats.lengths, limit)

    def _draw_histogram(self, holder, lengths, limit: int) -> None:
        if self._plot is None:
            self._plot = cached_plot(id="length-plot")
            holder.display = False
            holder.parent.mount(self._plot)
        plot = self._plot
        plot.display = True
        plt = plot.plt
        plt.clear_figure()
        plt.hist(list(lengths), bins=min(30, max(5, len(set(lengths)))), color="cyan")
        plt.vertical_line(limit, color="red")
        plt.xlabel(f"tokens per example (red: max length {limit})")
        plot.replot()

    def _show_problems(self, check) -> None:
        pane = self.query_one("#data-problems", Static)
        tabs = self.query_one("#data-tabs", TabbedContent)
        problems, count = [], 0
        if check.error is not None:
            found = self.problems
            errors = found.problems if found is not None and found.total else (check.error,)
            for i, exc in enumerate(errors):
                if i:
                    problems.append(Text(""))  # a blank line between problems
                problems.append(problem_text(exc, self.state.workdir))
            count = found.total if found is not None and found.total else 1
            if found is not None and found.more:
                problems.append(Text(f"\n…and {found.more:,} more (the first {len(found.problems)} by line are shown)",
                                     style="yellow"))
        stats = check.stats
        if stats is not None and stats.prompt_too_long:
            count += 1
            problems.append(Text(f"{stats.prompt_too_long} example(s) have a prompt of at least the max length: "
                                 "no answer token of theirs would be trained. Raise the max length.",
                                 style="yellow"))
        if check.note and check.data is not None:
            count += 1
            problems.append(Text(check.note, style="yellow"))
        pane.update(Group(*problems) if problems else Text("No problems found.", style="green"))
        label = f"Problems ({count:,})" if problems else "Problems"
        tabs.get_tab("tab-problems").label = label
        if check.error is not None:
            tabs.active = "tab-problems"

    # ---------------------------------------------------------------- the user's edits

    @on(Input.Submitted, "#data-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        self._set_path(event.value)

    @on(Input.Blurred, "#data-path")
    def _path_blurred(self, event: Input.Blurred) -> None:
        if event.value.strip() != self.state.data_path:
            self._set_path(event.value)

    def _set_path(self, value: str) -> None:
        self.state.data_path = value.strip()
        self.reload()

    @on(Select.Changed, "#data-task")
    def _task_changed(self, event: Select.Changed) -> None:
        if event.value == self.state.task:
            return
        self.state.task = str(event.value)
        if self.state.data_path.startswith("demo:"):
            self.state.data_path = DEMO_DATA_FOR_TASK[self.state.task]
            self.query_one("#data-path", Input).value = self.state.data_path
        self.reload()
        self._find_starts()

    @on(Select.Changed, "#data-format")
    def _format_changed(self, event: Select.Changed) -> None:
        if event.value != self.state.data_format:
            self.state.data_format = str(event.value)
            self.reload()

    @on(Input.Changed, "#columns-grid Input")
    def _column_changed(self, event: Input.Changed) -> None:
        role = event.input.id.removeprefix("col-")
        self.state.columns[role] = event.value.strip() or None
        self._debounced_reload()

    @on(Input.Changed, "#data-max-length")
    def _max_length_changed(self, event: Input.Changed) -> None:
        self._debounced_reload()

    def _debounced_reload(self) -> None:
        timer = getattr(self, "_reload_timer", None)
        if timer is not None:
            timer.stop()
        self._reload_timer = self.set_timer(0.4, self.reload)

    @on(Button.Pressed, "#data-browse")
    def _browse_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_browse()

    @work
    async def action_browse(self) -> None:
        from tuiwiz.profile.io import DATA_SUFFIXES
        from tuiwiz.ui.screens.dialogs import PathPicker

        picked = await self.app.push_screen_wait(
            PathPicker(self.state.workdir, suffixes=DATA_SUFFIXES, title="Data file"))
        if picked is not None:
            self.query_one("#data-path", Input).value = str(picked)
            self._set_path(str(picked))

    def commit(self) -> bool:
        self.state.max_length = self._max_length_choice()
        self.state.recommendation = None  # the method step plans again for this data
        self.state.option_key = None
        return True
