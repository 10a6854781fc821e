"""Step 4: how to fine-tune. The recommender's options, ranked: those that fit first, each with a fit
bar against the free memory, what it needs and why; the ones that do not fit say why not.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from tuiwiz.errors import UserError
from tuiwiz.methods import UNAVAILABLE
from tuiwiz.ui.choices import recommend_for
from tuiwiz.ui.screens.base import StepScreen
from tuiwiz.ui.widgets import fit_bar
from tuiwiz.units import count, size

TERMS = (
    ("weights", "weights"), ("adapter", "adapter"), ("gradients", "gradients"), ("optimizer", "optimizer states"),
    ("activations", "activations"), ("logits", "logits / loss"), ("optimizer_step", "optimizer step"),
    ("buffers", "buffers"), ("reference", "reference model"), ("reference_forward", "reference forward"),
    ("generation", "generation (KV cache)"), ("overhead", "allocator slack"), ("context", "CUDA context"),
)


def _worst(option):
    """The device with the least room for this option: what decides whether it fits."""
    if not option.fit:
        return None
    return min(option.fit, key=lambda f: f.available - f.needed)


def option_detail(option, recommendation, machine) -> Group:
    parts = []
    title = Text(option.title, style="bold")
    title.append("  fits" if option.fits else "  does not fit", style="green" if option.fits else "red")
    parts.append(title)
    parts.append(Text(option.reason))
    if option.rejected:
        parts.append(Text(f"Why not: {option.rejected}", style="red"))
    fits = Table.grid(padding=(0, 1))
    fits.add_column(no_wrap=True)
    fits.add_column(no_wrap=True)
    fits.add_column(no_wrap=True)
    for f in option.fit:
        where = "RAM" if f.index is None else f"GPU {f.index}"
        fits.add_row(where, fit_bar(f.needed, f.available, 20), f"{size(f.needed)} of {size(f.available)} usable")
    if option.fit:
        parts.append(Text())
        parts.append(fits)
    est = option.estimate
    breakdown = Table.grid(padding=(0, 2))
    breakdown.add_column(no_wrap=True)
    breakdown.add_column(justify="right", no_wrap=True)
    terms = est.per_device.terms()
    context_name = "CUDA context" if est.device == "cuda" else "process"
    for key, label in TERMS:
        value = terms.get(key, 0)
        if value:
            breakdown.add_row(context_name if key == "context" else label, size(value))
    breakdown.add_row(Text("peak per device", style="bold"), Text(size(est.total), style="bold"))
    plan = option.plan
    facts = Table.grid(padding=(0, 2))
    facts.add_column(no_wrap=True, style="bold")
    facts.add_column()
    facts.add_row("trainable", f"{count(est.trainable_parameters)} of {count(est.total_parameters)} parameters")
    facts.add_row("batch", f"micro-batch {plan.micro_batch} × accumulation {plan.gradient_accumulation}"
                           f"{' × ' + str(len(option.gpu_indices)) + ' GPUs' if len(option.gpu_indices) > 1 else ''}"
                           f" = {option.effective_batch}")
    facts.add_row("precision", f"{plan.precision}{', gradient checkpointing' if plan.gradient_checkpointing else ''}"
                               f", optimizer {plan.optimizer}")
    facts.add_row("max length", f"{recommendation.seq_len} tokens: {recommendation.seq_len_reason}")
    facts.add_row("disk", f"{size(est.disk_total)} for the output and checkpoints")
    if plan.strategy != "single":
        gpus = ", ".join(str(i) for i in option.gpu_indices)
        facts.add_row("strategy", f"{plan.strategy} on GPUs {gpus}")
    parts += [Text(), Text("Memory at the peak of a step", style="bold"), breakdown, Text(), facts]
    for warning in option.warnings:
        parts.append(Text(f"note: {warning}", style="yellow"))
    for missing in UNAVAILABLE:
        parts.append(Text(f"Not offered: {missing.name}: {missing.why}.", style="dim"))
    return Group(*parts)


class MethodScreen(StepScreen):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #method-main {
        height: 1fr;
    }

    #method-table {
        height: auto;
        max-height: 9;
        margin: 0 1;
    }

    #method-detail {
        height: 1fr;
    }

    MethodScreen.-wide #method-main {
        layout: horizontal;
    }

    MethodScreen.-wide #method-table {
        width: 1fr;
        max-height: 100%;
    }

    MethodScreen.-wide #method-detail {
        width: 1fr;
    }
    """
    STEP = "method"
    AUTO_FOCUS = "#method-table"

    def body(self) -> ComposeResult:
        with Vertical(id="method-main"):
            yield DataTable(id="method-table", cursor_type="row", zebra_stripes=False)
            with VerticalScroll(id="method-detail", classes="panel") as detail:
                detail.border_title = "Memory and reason"
                yield Static("Planning…", id="method-info")

    def on_mount(self) -> None:
        super().on_mount()
        if self.state.recommendation is None:
            self._plan()
        else:
            self._fill(self.state.recommendation)

    def ready(self) -> bool:
        option = self.state.option()
        return option is not None and option.fits

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _plan(self) -> None:
        try:
            rec = recommend_for(self.state)
        except UserError as exc:
            self.app.call_from_thread(self._failed, exc)
            return
        self.app.call_from_thread(self._fill, rec)

    def _failed(self, exc: UserError) -> None:
        self.query_one("#method-info", Static).update(Text(f"{exc.message}\nhint: {exc.hint or ''}", style="red"))
        self.say("no plan")

    def _fill(self, rec) -> None:
        if not self.is_attached:
            return
        self.state.recommendation = rec
        table = self.query_one("#method-table", DataTable)
        # Columns sized from the content: auto-sized ones let the header keep its labels' widths
        # while the rows took their content's (the header no longer lined up with the rows).
        table.clear(columns=True)
        table.add_column(" ", key="mark", width=1)
        table.add_column("Option", key="option", width=max([6, *(len(o.title) for o in rec.options)]))
        table.add_column("Fit", key="fit", width=12)
        table.add_column("Needs", key="needs", width=max([5, *(len(size(o.needed)) for o in rec.options)]))
        table.add_column("Trainable", key="trainable",
                         width=max([9, *(len(count(o.trainable_parameters)) for o in rec.options)]))
        best = rec.best
        for option in rec.options:
            worst = _worst(option)
            mark = Text("★" if option is best else "✓" if option.fits else "✗",
                        style="bold green" if option.fits else "red")
            title = Text(option.title, style="" if option.fits else "dim")
            fit = fit_bar(worst.needed, worst.available, 10) if worst else Text("n/a", style="dim")
            table.add_row(mark, title, fit, size(option.needed), count(option.trainable_parameters), key=option.key)
        if self.state.option_key is None and best is not None:
            self.state.option_key = best.key
        keys = [o.key for o in rec.options]
        if self.state.option_key in keys:
            table.move_cursor(row=keys.index(self.state.option_key))
        self._describe()
        warnings = "; ".join(rec.warnings)
        self.say(("★ recommended. " if best else "Nothing fits. ") + warnings)

    @on(DataTable.RowHighlighted, "#method-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value:
            self.state.option_key = event.row_key.value
            self._describe()

    @on(DataTable.RowSelected, "#method-table")
    async def _selected(self, event: DataTable.RowSelected) -> None:
        if self.ready():
            await self.action_next()

    def _describe(self) -> None:
        option = self.state.option()
        rec = self.state.recommendation
        if option is None or rec is None:
            return
        self.query_one("#method-info", Static).update(option_detail(option, rec, self.state.machine))
        self.update_nav()

    def commit(self) -> bool:
        self.state.profile = None  # the settings step starts from this option
        return True
