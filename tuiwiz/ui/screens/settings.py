"""Step 5: the settings, prefilled from the chosen option and checked as you type by the profile
schema itself (its messages, its field names). Advanced options are folded away.
"""

from __future__ import annotations

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Collapsible, Input, Label, Select, Static

from tuiwiz.errors import UserError
from tuiwiz.ui.choices import (
    FormField,
    check_profile_name,
    default_profile_name,
    draft_profile,
    form_fields,
    form_values,
    profile_from_form,
)
from tuiwiz.ui.screens.base import StepScreen


class SettingsScreen(StepScreen):
    SCOPED_CSS = False  # its rules name the screen: loaded with it, not at start-up
    DEFAULT_CSS = """
    #settings-form {
        height: 1fr;
        padding: 0 1;
    }

    .form-row {
        height: 1;
    }

    .form-label {
        width: 26;
        color: $text-muted;
    }

    .form-row Input {
        width: 1fr;
        max-width: 40;
    }

    .form-row Select {
        width: 30;
    }

    .form-error {
        display: none;
        padding-left: 26;
        height: auto;
    }

    #settings-problem {
        padding-left: 0;
    }

    #settings-advanced {
        padding: 0;
        margin-top: 1;
        border: none;
    }

    #settings-advanced Contents {
        padding: 0;
    }

    .form-row Checkbox {
        width: 8;
        padding: 0;
        border: none;
    }
    """
    STEP = "settings"
    AUTO_FOCUS = "#f-name"

    def __init__(self, state) -> None:
        super().__init__(state)
        try:
            self.base = state.profile if state.profile is not None else draft_profile(state)
            self.problem: UserError | None = None
        except UserError as exc:  # no option chosen: only reachable by skipping steps
            from tuiwiz.profile.schema import Profile

            self.base, self.problem = Profile(), exc
        self.fields = form_fields(self.base)
        self.values = form_values(self.base, self.fields)
        if not state.profile_name:
            state.profile_name = default_profile_name(state, self.base)

    def _row(self, f: FormField) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label(f.label, classes="form-label")
            value = self.values[f.key]
            if f.kind == "flag":
                yield Checkbox("", value=bool(value), id=f.widget_id, compact=True)
            elif f.kind == "choice":
                yield Select([(c, c) for c in f.choices], value=value if value in f.choices else Select.BLANK,
                             allow_blank=False, id=f.widget_id, compact=True)
            else:
                yield Input(str(value), placeholder="unset", id=f.widget_id, compact=True)
        yield Static("", id=f"{f.widget_id}-error", classes="form-error")

    def body(self) -> ComposeResult:
        with VerticalScroll(id="settings-form", can_focus=False):
            yield Static("", id="settings-problem", classes="form-error")
            with Horizontal(classes="form-row"):
                yield Label("Profile name", classes="form-label")
                yield Input(self.state.profile_name, id="f-name", compact=True)
            yield Static("", id="f-name-error", classes="form-error")
            for f in self.fields:
                if not f.advanced:
                    yield from self._row(f)
            with Collapsible(title="Advanced", id="settings-advanced", collapsed=True):
                for f in self.fields:
                    if f.advanced:
                        yield from self._row(f)

    def on_mount(self) -> None:
        super().on_mount()
        self.validate()

    # ---------------------------------------------------------------- checking as you type

    def _read(self) -> dict[str, object]:
        values = {}
        for f in self.fields:
            widget = self.query_one(f"#{f.widget_id}")
            if isinstance(widget, Checkbox):
                values[f.key] = widget.value
            elif isinstance(widget, Select):
                values[f.key] = "" if widget.value is Select.BLANK else str(widget.value)
            else:
                values[f.key] = widget.value
        return values

    def validate(self) -> None:
        for error in self.query(".form-error"):
            error.update("")
            error.display = False
        name = self.query_one("#f-name", Input).value.strip()
        self.state.profile_name = name
        name_problem = check_profile_name(name)
        if name_problem:
            self._error("f-name", name_problem)
        problem = self.problem
        profile = None
        if problem is None:
            try:
                profile = profile_from_form(self.base, self._read())
            except UserError as exc:
                problem = exc
        if problem is not None:
            target = next((f.widget_id for f in self.fields if f.key == problem.field), None)
            if target is None and not problem.field:
                # a rule across fields names them in its message: show it at the first one named
                named = [f for f in self.fields if f.key in problem.message]
                if named:
                    target = min(named, key=lambda f: problem.message.index(f.key)).widget_id
            message = problem.message + (f" ({problem.hint})" if problem.hint else "")
            if target:
                self._error(target, message)
                if target not in [f.widget_id for f in self.fields if not f.advanced]:
                    self.query_one("#settings-advanced", Collapsible).collapsed = False
            else:
                self._error("settings", (f"{problem.field}: " if problem.field else "") + message)
            self.state.profile = None
            self.say(Text(f"{problem.field or 'profile'}: {problem.message}", style="red").plain)
        else:
            self.state.profile = profile
            self.say("the profile is valid" if not name_problem else "check the profile name")
        self.update_nav()

    def _error(self, widget_id: str, message: str) -> None:
        target = "#settings-problem" if widget_id == "settings" else f"#{widget_id}-error"
        error = self.query_one(target, Static)
        error.update(Text(message, style="red"))
        error.display = True

    def ready(self) -> bool:
        return self.state.profile is not None and check_profile_name(self.state.profile_name or "") is None

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event) -> None:
        if self.is_mounted:
            self.validate()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        widget_id = event.widget.id or ""
        f = next((f for f in self.fields if f.widget_id == widget_id), None)
        if f is not None and not self.query_one(f"#{widget_id}-error", Static).display:
            self.say(f"{f.key}: {f.help}" if f.help else f.key)
