"""``tuiwiz score``: what a reward model (a run of task ``reward``) thinks of texts or of replies to prompts.

A prompt and its completion are rendered as the reward model trained on them (tuiwiz/run/reward_model.py);
a ``text`` is scored as it is, already rendered. A file holds one item a record (JSON Lines, JSON, CSV or
Parquet): ``{"prompt": ..., "completion": ...}`` or ``{"text": ...}``. Everything is checked (the run, the
file) before the model loads. Light at import: torch comes in with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuiwiz.data.files import data_error, read_rows
from tuiwiz.errors import UserError
from tuiwiz.run.outputs import RunOutput
from tuiwiz.run.reward_checks import reward_run


@dataclass(frozen=True)
class ScoreItem:
    """One thing to score: a prompt (text or chat messages) with its completion, or a whole rendered text."""

    prompt: str | list[dict] | None = None
    completion: str | None = None
    text: str | None = None


def reward_output(ref: str) -> RunOutput:
    """The reward run to score with; any other run is refused with what to do instead."""
    return reward_run(ref, hint=f"`tuiwiz chat {ref}` talks with a language model; `tuiwiz score` takes a run "
                                "trained with task: reward")


def _field(row: dict, name: str, path: Path, line: int, messages_ok: bool = False):
    value = row[name]
    if isinstance(value, str) and value.strip():
        return value
    if messages_ok and isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    wanted = "text or a list of chat messages" if messages_ok else "text"
    raise data_error(f"'{name}' should be non-empty {wanted}", path, line, name)


def read_items(path: Path | str) -> list[ScoreItem]:
    """The items of a file, each line checked: a prompt with a completion, or a text."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise data_error("the file has nothing to score", path, hint='one {"prompt", "completion"} or {"text"} a line')
    items = []
    for line, row in rows:
        if isinstance(row, dict) and "prompt" in row and "completion" in row:
            items.append(ScoreItem(prompt=_field(row, "prompt", path, line, messages_ok=True),
                                   completion=_field(row, "completion", path, line)))
        elif isinstance(row, dict) and "text" in row:
            items.append(ScoreItem(text=_field(row, "text", path, line)))
        else:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else "not an object"
            raise data_error(f"a record to score has prompt and completion, or text; this one has {keys}", path, line,
                             hint='{"prompt": "...", "completion": "..."} or {"text": "..."}')
    return items


class Scorer:
    """A reward model loaded once, scoring items as they come."""

    def __init__(self, output: RunOutput) -> None:
        import torch

        from tuiwiz.run.reward_model import load_reward_model

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tokenizer = load_reward_model(output, self.device)

    def score(self, items: list[ScoreItem]) -> list[float]:
        from tuiwiz.run.reward_model import reward_text, score_texts

        texts = [item.text if item.text is not None else reward_text(self.tokenizer, item.prompt, item.completion)
                 for item in items]
        return score_texts(self.model, self.tokenizer, texts)


def score_items(output: RunOutput, items: list[ScoreItem]) -> list[float]:
    """The reward model's score of each item, in order."""
    return Scorer(output).score(items)


def _request_item(request: dict) -> ScoreItem:
    """The item of a ``score`` request; ValueError names what is wrong."""
    fields = {name: request.get(name) for name in ("prompt", "completion", "text")}
    if isinstance(fields["text"], str) and fields["text"].strip():
        return ScoreItem(text=fields["text"])
    prompt, completion = fields["prompt"], fields["completion"]
    if not (isinstance(prompt, str) and prompt.strip()):
        raise ValueError("'prompt' should be non-empty text (or give 'text')")
    if not (isinstance(completion, str) and completion.strip()):
        raise ValueError("'completion' should be non-empty text")
    return ScoreItem(prompt=prompt, completion=completion)


def run_jsonl(ref: str) -> int:
    """Serve scores over stdin/stdout, a JSON object a line, the model loaded once (the app's Score screen).

    Requests: ``score`` (id, prompt and completion, or text), ``quit``. Events: ``loading``, ``ready``,
    ``score`` (id, score), ``error`` (with the request's id when it answers one). End of input ends it too.
    """
    from tuiwiz.post.jsonl import Channel, read_requests

    channel = Channel()
    try:
        output = reward_output(ref)
        channel.emit("loading", label=str(output.path))
        scorer = Scorer(output)
    except BaseException as exc:
        channel.error(exc)
        return exc.exit_code if isinstance(exc, UserError) else 1
    channel.emit("ready", label=str(output.path), device=scorer.device)
    for request in read_requests(channel, ("score",)):
        rid = request.get("id")
        try:
            item = _request_item(request)
        except ValueError as exc:
            channel.emit("error", id=rid, kind="input", message=f"bad request: {exc}", hint=None)
            continue
        try:
            channel.emit("score", id=rid, score=scorer.score([item])[0])
        except Exception as exc:  # what fails while scoring is reported as itself; the server goes on
            channel.error(exc, id=rid)
    return 0


def command_items(texts: list[str] | None, prompt: str | None, completions: list[str] | None,
                  file: str | None) -> list[ScoreItem]:
    """The items the command line names: --text (each), --prompt with --completion (each), or --file."""
    if file is not None:
        return read_items(file)
    if prompt is not None or completions:
        if prompt is None or not completions:
            raise UserError("--prompt and --completion go together", kind="input",
                            hint='tuiwiz score RUN --prompt "a question" --completion "a reply" [--completion ...]')
        return [ScoreItem(prompt=prompt, completion=completion) for completion in completions]
    if not texts:
        raise UserError("nothing to score", kind="input", hint="give --text, --prompt with --completion, or --file")
    return [ScoreItem(text=text) for text in texts]
