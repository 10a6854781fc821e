"""Rich renderables shared by the app and the plain prompts (no Textual here)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

PROMPT_STYLE = "dim"
TRAINED_STYLE = "bold green"


def rendered_text(rendered) -> Text:
    """An example's pieces: the prompt dim, what carries the loss highlighted. Data is never markup."""
    text = Text()
    for piece, trained in rendered.pieces:
        text.append(piece, style=TRAINED_STYLE if trained else PROMPT_STYLE)
    return text


def problem_text(exc, base: Path | None = None) -> Text:
    """A UserError: where (file:line, field; the file relative to ``base``), what, and the hint."""
    text = Text()
    where = exc.where
    if exc.file and base is not None:
        try:
            shown = str(Path(exc.file).resolve().relative_to(Path(base).resolve()))
        except ValueError:
            shown = exc.file
        where = where.replace(exc.file, shown, 1)
    if where:
        text.append(where, style="bold")
        text.append("\n")
    text.append(exc.message, style="red")
    if exc.hint:
        text.append(f"\nhint: {exc.hint}")
    return text
