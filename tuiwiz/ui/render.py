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


def example_view(record: dict, format: str, model_text):
    """One example of the Data step as the model sees it: a preference pair side by side (chosen | rejected,
    each with its token count), a GRPO prompt with its reference answer, or the rendered example.
    ``model_text`` is a rendering.ModelText, or None when the model has no tokenizer to render with."""
    from rich.table import Table

    if model_text is None:
        return Text(str(record))
    if format == "preference":
        pair = model_text.render_pair(record)
        chosen, rejected = model_text.count([r.text for r in pair])
        table = Table(box=None, expand=True, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column(Text(f"chosen · {chosen} tokens", style="bold green"), ratio=1)
        table.add_column(Text(f"rejected · {rejected} tokens", style="bold red"), ratio=1)
        table.add_row(*(rendered_text(r) for r in pair))
        return table
    body = rendered_text(model_text.render(record, format))
    if format == "prompt":
        answer = record.get("answer")
        body.append("\nreference answer: ", style="bold")
        body.append(answer if answer is not None else "none (rewards that need one cannot score this prompt)",
                    style="cyan" if answer is not None else "yellow")
    if format == "unpaired":
        body.append("\ndesirable" if record["label"] else "\nundesirable",
                    style="bold green" if record["label"] else "bold red")
    return body
