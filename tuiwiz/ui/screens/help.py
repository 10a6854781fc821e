"""Help: the keys in force on the screen below, and what the wizard does."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = (
    "tuiwiz walks six steps: Hardware → Model → Data → Method → Settings → Review, then launches the run and "
    "follows it in the train monitor. Escape goes back a step, Ctrl+N goes on (or the Back/Next buttons). "
    "Tab and Shift+Tab move between controls; the mouse is optional.\n\n"
    "A run is its own process: quitting tuiwiz, detaching from the monitor or losing the terminal never stops it. "
    "`tuiwiz` offers to attach to running runs when it starts; F2 lists every run. Ctrl+P opens the command "
    "palette. Every wizard choice ends up in a profile file under profiles/, which `tuiwiz --profile FILE` "
    "runs again without the wizard."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close", id="close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 100; height: 90%; border: thick $primary;
                                  background: $surface; padding: 0 1; }
    """

    def __init__(self, below: Screen) -> None:
        super().__init__()
        self.below = below

    def _keys(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        seen = set()
        for active in self.below.active_bindings.values():
            binding = active.binding
            # the screen's and the app's own keys; widgets' scrolling keys are the usual ones
            if not isinstance(active.node, (App, Screen)):
                continue
            if not binding.description or (binding.action, binding.description) in seen:
                continue
            seen.add((binding.action, binding.description))
            keys = ", ".join(self.app.get_key_display(Binding(k.strip(), binding.action))
                             for k in binding.key.split(","))
            state = "" if active.enabled else "  (not now)"
            table.add_row(keys, binding.description + state)
        table.add_row("Tab / Shift+Tab", "next / previous control")
        table.add_row("Ctrl+P", "command palette: runs, new run, help, theme, quit")
        return table

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Help"
            box.border_subtitle = "Escape closes"
            yield Static(Text("Keys on this screen", style="bold"))
            yield Static(self._keys(), id="help-keys")
            yield Static(Text("\nHow it works", style="bold"))
            yield Static(ABOUT, markup=False, id="help-about")

    def action_close(self) -> None:
        self.dismiss(None)
