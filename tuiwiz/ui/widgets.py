"""Small widgets shared by the screens: the step bar, the Back/Next bar, meters."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Static

from tuiwiz.ui.choices import STEP_TITLES, STEPS
from tuiwiz.units import bar


class StepBar(Static):
    """One line: where the user is in the wizard (or the title of a non-wizard screen)."""

    DEFAULT_CSS = """
    StepBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, step: str | None = None, title: str | None = None, *, id: str | None = "step-bar") -> None:
        super().__init__(id=id)
        self.step = step
        self.title_text = title

    def render(self) -> Text:
        text = Text.assemble(("tuiwiz ", "bold"))
        if self.step is None:
            text.append(self.title_text or "", style="bold")
            return text
        narrow = self.size.width and self.size.width < 70
        for i, step in enumerate(STEPS):
            if i:
                text.append(" › ")
            label = STEP_TITLES[step]
            if step == self.step:
                text.append(f"{i + 1} {label}", style="bold reverse")
            else:
                text.append(label[:4] if narrow else label)
        return text


class NavBar(Horizontal):
    """Back, a one-line status message, Next: the mouse route to what Escape and Ctrl+N do."""

    DEFAULT_CSS = """
    NavBar { height: 1; dock: bottom; margin-bottom: 1; }
    NavBar #nav-message { width: 1fr; height: 1; padding: 0 1; color: $text-muted; }
    NavBar Button { min-width: 10; }
    """

    def __init__(self, *, back: bool = True, next_label: str = "Next ›") -> None:
        super().__init__(id="nav")
        self.back = back
        self.next_label = next_label

    def compose(self) -> ComposeResult:
        yield Button("‹ Back", id="nav-back", compact=True, disabled=not self.back)
        yield Static("", id="nav-message")
        yield Button(self.next_label, id="nav-next", compact=True, variant="primary")


def meter(used: float, total: float, width: int = 20) -> Text:
    """A used/total bar, coloured by how full it is."""
    fraction = used / total if total else 0.0
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text().append(bar(fraction, width), style=style)


def fit_bar(needed: float, available: float, width: int = 16) -> Text:
    """How much of the available memory a plan needs; over the edge in red."""
    if available <= 0:
        return Text("─" * width, style="dim")
    fraction = needed / available
    style = "green" if fraction <= 0.8 else "yellow" if fraction <= 1.0 else "red"
    return Text().append(bar(min(1.0, fraction), width), style=style)


def cached_plot(**kwargs):
    """A textual-plotext plot that builds its picture once per data change or size, not on every repaint.

    PlotextPlot.render rebuilds the whole chart each time the screen repaints (a dialog over it, a
    neighbour updating): with a few hundred points that is tens of milliseconds a time.
    """
    from textual_plotext import PlotextPlot

    class CachedPlot(PlotextPlot):
        def __init__(self, **options) -> None:
            super().__init__(**options)
            self.version = 0
            self._picture = None
            self._key = None

        def replot(self) -> None:
            """Call after changing the data through ``plt``."""
            self.version += 1
            self.refresh()

        def render(self):
            key = (self.version, self.size, self.app.theme)
            if key != self._key:
                self._picture, self._key = super().render(), key
            return self._picture

    return CachedPlot(**kwargs)
