"""The wizard step: a Screen[str] answering "next" or "back", with Back/Next bindings.

Next is enabled by ``ready()`` through ``check_action``, so the footer, the
button and the key agree. Subclasses compose ``body()`` and store their
choice in the shared WizardState in ``commit()``.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from tuiwiz.ui.choices import STEPS, WizardState
from tuiwiz.ui.widgets import NavBar, StepBar


class ReportsWorkerErrors:
    """A worker that dies of an exception it did not expect (a bug, not bad input, which workers catch and
    show in place) is said at once, instead of leaving a screen that waits for it forever."""

    def on_worker_state_changed(self, event) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:
            self.app.report_worker_error(event.worker)
            self.worker_failed(event.worker)

    def worker_failed(self, worker) -> None:
        """What the screen shows in place of the result that will not come."""


class StepScreen(ReportsWorkerErrors, Screen[str]):
    STEP = "hardware"
    NEXT_LABEL = "Next ›"
    AUTO_FOCUS = "*"  # each step names its first control (Textual focuses it when the screen starts)
    BINDINGS = [
        Binding("escape", "back", "Back", id="back"),
        Binding("ctrl+n", "next", "Next", id="next"),
    ]

    def __init__(self, state: WizardState) -> None:
        super().__init__()
        self.state = state

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        yield from self.body()
        yield NavBar(back=STEPS.index(self.STEP) > 0, next_label=self.NEXT_LABEL)
        yield Footer(compact=True)

    def body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        if not getattr(self.app, "blink", True):
            for field in self.query(Input):
                field.cursor_blink = False
        self.update_nav()

    # ---------------------------------------------------------------- to override

    def ready(self) -> bool:
        """Whether the user may go on."""
        return True

    def commit(self) -> bool:
        """Store the step's choice in the state; False keeps the user here."""
        return True

    async def advance(self) -> None:
        """What Next does once committed: normally, answer "next"."""
        self.dismiss("next")

    # ---------------------------------------------------------------- navigation

    def say(self, message: str) -> None:
        """One line in the bar between Back and Next."""
        self.query_one("#nav-message", Static).update(message)

    def worker_failed(self, worker) -> None:
        if hasattr(self, "loading"):
            self.loading = False
        self.say(f"failed: {type(worker.error).__name__} (see the notice)")

    def update_nav(self) -> None:
        try:
            self.query_one("#nav-next", Button).disabled = not self.ready()
        except Exception:  # before the bar is mounted
            return
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return True if self.ready() else None
        if action == "back":
            return True if STEPS.index(self.STEP) > 0 else None
        return True

    async def action_next(self) -> None:
        if self.ready() and self.commit():
            await self.advance()

    def action_back(self) -> None:
        if STEPS.index(self.STEP) > 0:
            self.dismiss("back")

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "nav-next":
            event.stop()
            await self.action_next()
        elif event.button.id == "nav-back":
            event.stop()
            self.action_back()
