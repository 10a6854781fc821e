"""Small typed dialogs: confirm (ModalScreen[bool]), attach-or-not (ModalScreen[str]), a path picker."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Label, Static


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question. Enter on a button, Escape says no."""

    BINDINGS = [Binding("escape", "no", "Cancel", id="cancel"), Binding("y", "yes", "Yes", show=False, id="yes")]
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical { width: 64; max-width: 95%; height: auto; border: thick $primary; background: $surface;
                               padding: 0 1; }
    ConfirmDialog #dialog-title { text-style: bold; margin-bottom: 1; }
    ConfirmDialog Horizontal { height: auto; align: right middle; margin-top: 1; }
    ConfirmDialog Button { margin-left: 2; }
    """

    def __init__(self, title: str, message: str, *, yes: str = "Yes", no: str = "Cancel", danger: bool = False) -> None:
        super().__init__()
        self.title_text, self.message, self.yes, self.no, self.danger = title, message, yes, no, danger

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.message, id="dialog-message", markup=False)
            with Horizontal():
                yield Button(self.no, id="no", compact=True)
                yield Button(self.yes, id="yes", compact=True, variant="error" if self.danger else "primary")

    def on_mount(self) -> None:
        self.query_one("#no" if self.danger else "#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class AttachDialog(ModalScreen[str]):
    """Runs are training: follow one, see them all, or start a new one."""

    BINDINGS = [Binding("escape", "choose('new')", "New run", id="new")]
    DEFAULT_CSS = """
    AttachDialog { align: center middle; }
    AttachDialog > Vertical { width: 60; max-width: 95%; height: auto; border: thick $primary; background: $surface;
                              padding: 0 1; }
    AttachDialog Horizontal { height: auto; align: right middle; margin-top: 1; }
    AttachDialog Button { margin-left: 2; }
    """

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = run_ids

    def compose(self) -> ComposeResult:
        n = len(self.run_ids)
        with Vertical():
            yield Label(f"{n} run{'s are' if n > 1 else ' is'} training; attach to the newest?", classes="bold")
            yield Static("\n".join(self.run_ids[:5]) + ("\n…" if n > 5 else ""), markup=False)
            with Horizontal():
                yield Button("New run", id="new", compact=True)
                yield Button("All runs", id="runs", compact=True)
                yield Button("Attach", id="attach", compact=True, variant="primary")

    def on_mount(self) -> None:
        self.query_one("#attach", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class _Tree(DirectoryTree):
    def __init__(self, path: Path, files: tuple[str, ...] | None) -> None:
        super().__init__(path, id="picker-tree")
        self.files = files

    def filter_paths(self, paths):
        shown = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or (self.files is not None and p.suffix.lower() in self.files):
                    shown.append(p)
            except OSError:
                continue
        return shown


class PathPicker(ModalScreen[Path | None]):
    """Pick a file (with one of ``suffixes``) or, without suffixes, a folder. Enter picks, Escape cancels."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="cancel"),
        Binding("ctrl+o", "pick_folder", "Pick this folder", id="pick-folder"),
        Binding("backspace", "up", "Parent folder", id="up"),
    ]
    DEFAULT_CSS = """
    PathPicker { align: center middle; }
    PathPicker > Vertical { width: 90%; height: 90%; border: thick $primary; background: $surface; }
    PathPicker #picker-where { height: 1; color: $text-muted; padding: 0 1; }
    PathPicker #picker-tree { height: 1fr; }
    """

    def __init__(self, start: Path, *, suffixes: tuple[str, ...] | None = None, title: str = "Pick") -> None:
        super().__init__()
        self.start = start if start.is_dir() else start.parent
        self.suffixes = suffixes
        self.title_text = title
        self.current: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            hint = "Enter opens a folder or picks a file" if self.suffixes else "Ctrl+O picks the highlighted folder"
            yield Static(f"{self.start}  ·  {hint}  ·  Backspace: parent folder", id="picker-where", markup=False)
            yield _Tree(self.start, self.suffixes)

    def on_mount(self) -> None:
        self.query_one(_Tree).focus()

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(Path(event.path))

    def on_tree_node_highlighted(self, event) -> None:
        data = getattr(event.node, "data", None)
        self.current = getattr(data, "path", None)

    def action_pick_folder(self) -> None:
        path = self.current or self.start
        self.dismiss(path if path.is_dir() else path.parent)

    def action_up(self) -> None:
        tree = self.query_one(_Tree)
        parent = Path(tree.path).resolve().parent
        tree.path = parent
        self.query_one("#picker-where", Static).update(str(parent))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceDialog(ModalScreen[str | None]):
    """Pick one of a few labelled values (Enter), or Escape for none."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]
    DEFAULT_CSS = """
    ChoiceDialog { align: center middle; }
    ChoiceDialog > Vertical { width: 60; max-width: 95%; height: auto; max-height: 80%; border: thick $primary;
                              background: $surface; padding: 0 1; }
    ChoiceDialog OptionList { height: auto; max-height: 12; border: none; }
    """

    def __init__(self, title: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices  # (value, label)

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        with Vertical():
            yield Label(self.title_text)
            yield OptionList(*(Option(label, id=value) for value, label in self.choices), id="choices")

    def on_mount(self) -> None:
        self.query_one("#choices").focus()

    def on_option_list_option_selected(self, event) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextDialog(ModalScreen[str | None]):
    """Ask for one line of text (Enter), or Escape for none. ``check`` returns an error message or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]
    DEFAULT_CSS = """
    TextDialog { align: center middle; }
    TextDialog > Vertical { width: 64; max-width: 95%; height: auto; border: thick $primary; background: $surface;
                            padding: 0 1; }
    TextDialog #text-error { color: $error; height: auto; }
    """

    def __init__(self, title: str, message: str = "", *, placeholder: str = "", check=None) -> None:
        super().__init__()
        self.title_text, self.message, self.placeholder, self.check = title, message, placeholder, check

    def compose(self) -> ComposeResult:
        from textual.widgets import Input

        with Vertical():
            yield Label(self.title_text)
            if self.message:
                yield Static(self.message, markup=False)
            yield Input(placeholder=self.placeholder, id="text-value")
            yield Static("", id="text-error")

    def on_mount(self) -> None:
        self.query_one("#text-value").focus()

    def on_input_submitted(self, event) -> None:
        event.stop()
        value = event.value.strip()
        problem = self.check(value) if self.check else (None if value else "type a value, or Escape")
        if problem:
            self.query_one("#text-error", Static).update(problem)
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
