"""Rich renderables shared by the app and the plain prompts (no Textual here)."""

from __future__ import annotations

from rich.text import Text

PROMPT_STYLE = "dim"
TRAINED_STYLE = "bold green"


def rendered_text(rendered) -> Text:
    """An example's pieces: the prompt dim, what carries the loss highlighted. Data is never markup."""
    text = Text()
    for piece, trained in rendered.pieces:
        text.append(piece, style=TRAINED_STYLE if trained else PROMPT_STYLE)
    return text


def problem_text(exc) -> Text:
    """A UserError: where (file:line, field), what, and the hint."""
    text = Text()
    if exc.where:
        text.append(exc.where, style="bold")
        text.append("\n")
    text.append(exc.message, style="red")
    if exc.hint:
        text.append(f"\nhint: {exc.hint}")
    return text
