"""Examples as the model will see them, and their token counts, without transformers.

The wizard and the preflight need the rendered text (chat template applied, the
trained part marked) and token lengths, but must not pay for importing
transformers. This module reads ``tokenizer.json`` with the ``tokenizers``
library and renders ``chat_template`` with jinja2's sandbox, the way
transformers' ``apply_chat_template`` does (same environment options, the same
``{% generation %}`` tag). The trainer renders with transformers itself;
``tests/test_rendering.py`` checks the two agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tuiwiz.errors import UserError

# The prompt layout for models without a chat template (Alpaca's own). The trainer uses these too.
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def alpaca_user_text(record: dict) -> str:
    return f"{record['instruction']}\n\n{record['input']}" if record.get("input") else record["instruction"]


def alpaca_messages(record: dict) -> tuple[list[dict], list[dict]]:
    """An alpaca record as (prompt, completion) chat messages."""
    prompt = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    prompt.append({"role": "user", "content": alpaca_user_text(record)})
    return prompt, [{"role": "assistant", "content": record["output"]}]


@dataclass(frozen=True)
class Rendered:
    """One example's text as ``(text, trained)`` pieces; ``trained`` parts carry the loss."""

    pieces: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)

    @property
    def prompt(self) -> str:
        """Everything before the first trained piece."""
        out = []
        for text, trained in self.pieces:
            if trained:
                break
            out.append(text)
        return "".join(out)


def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}`` marks the assistant's text; we wrap it in sentinels."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return f"{_START}{caller()}{_END}"

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    return env.from_string(template)


_START, _END = "\x02gen\x02", "\x03gen\x03"


def _split_marked(text: str) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    rest = text
    while rest:
        start = rest.find(_START)
        if start < 0:
            pieces.append((rest, False))
            break
        if start:
            pieces.append((rest[:start], False))
        end = rest.find(_END, start)
        pieces.append((rest[start + len(_START): end], True))
        rest = rest[end + len(_END):]
    return [(t, trained) for t, trained in pieces if t]


class ModelText:
    """A model folder's tokenizer and chat template, loaded light."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        config_path = self.folder / "tokenizer_config.json"
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        except ValueError as exc:
            raise UserError(f"tokenizer_config.json is not valid JSON: {exc}", file=config_path, kind="model") from None
        template = self.config.get("chat_template")
        jinja_file = self.folder / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template: str | None = template

    @staticmethod
    def _token_text(value) -> str:
        return value.get("content", "") if isinstance(value, dict) else (value or "")

    @property
    def eos_token(self) -> str:
        return self._token_text(self.config.get("eos_token"))

    @property
    def bos_token(self) -> str:
        return self._token_text(self.config.get("bos_token"))

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        path = self.folder / "tokenizer.json"
        if not path.exists():
            raise UserError(
                "this model has no tokenizer.json (a fast tokenizer), so token lengths cannot be counted here",
                hint="token statistics are skipped; training still works", file=path, kind="model",
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a damaged file
            raise UserError(f"tokenizer.json cannot be read: {exc}", file=path, kind="model") from None
        # a tokenizer.json may carry fixed padding or truncation (MiniLM's pads to 128): lengths are the text's own
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def count(self, texts: list[str]) -> list[int]:
        """Token counts, special tokens written in the text counted as one each (no BOS added)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def apply_chat_template(self, messages: list[dict], *,
                            add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        if not self.chat_template:
            raise UserError("the model's tokenizer has no chat template", kind="data",
                            hint="use a chat (instruct) model, or alpaca/text data")
        template = _cached_template(self.chat_template)
        text = template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token, eos_token=self.eos_token,
        )
        return _split_marked(text)

    def render(self, record: dict, format: str) -> Rendered:
        """One normalised record (tuiwiz.data.datasets) as the trainer will see it."""
        if format == "alpaca":
            if self.chat_template:
                prompt_msgs, completion = alpaca_messages(record)
                prompt = "".join(t for t, _ in self.apply_chat_template(prompt_msgs, add_generation_prompt=True))
                full = "".join(t for t, _ in self.apply_chat_template(prompt_msgs + completion))
                if full.startswith(prompt):
                    return Rendered(((prompt, False), (full[len(prompt):], True)))
                return Rendered(((full, True),))
            layout = ALPACA_PROMPT_INPUT if record.get("input") else ALPACA_PROMPT
            return Rendered(((layout.format(**record), False), (record["output"] + self.eos_token, True)))
        if format == "messages":
            pieces = self.apply_chat_template(record["messages"])
            if not any(trained for _, trained in pieces):  # no generation tags: the trainer cannot mask
                pieces = [(text, True) for text, _ in pieces]
            return Rendered(tuple(pieces))
        if format == "classification":
            return Rendered(((record["text"], False),))
        if format == "preference":  # the longer of the two sequences sets the length
            return max(self.render_pair(record), key=lambda r: len(r.text))
        if format == "unpaired":
            return self._with_reply(record["prompt"], record["completion"])
        if format == "prompt":  # GRPO: the prompt alone; the model writes the rest
            return Rendered(tuple(self._prompt_pieces(record["prompt"])))
        if format == "seq2seq":  # the encoder reads the input, the decoder learns the target
            return Rendered(((record["input"], False), (record["target"] + self.eos_token, True)))
        return Rendered(((record["text"], True),))

    def render_pair(self, record: dict) -> tuple[Rendered, Rendered]:
        """A preference pair as the two sequences the trainer scores: (prompt + chosen, prompt + rejected)."""
        return (self._with_reply(record["prompt"], record["chosen"]),
                self._with_reply(record["prompt"], record["rejected"]))

    def _prompt_messages(self, prompt) -> list[dict]:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt

    def _prompt_pieces(self, prompt) -> list[tuple[str, bool]]:
        """A prompt of the tasks past SFT as TRL renders it: through the chat template where there is one
        (a text prompt as one user message), else as its text."""
        if self.chat_template:
            text = "".join(t for t, _ in self.apply_chat_template(self._prompt_messages(prompt),
                                                                  add_generation_prompt=True))
            return [(text, False)]
        if isinstance(prompt, list):
            raise UserError("the prompt is chat messages, but the model's tokenizer has no chat template",
                            kind="data", hint="use a chat (instruct) model, or give the prompt as text")
        return [(prompt, False)]

    def _with_reply(self, prompt, reply: str) -> Rendered:
        head = "".join(t for t, _ in self._prompt_pieces(prompt))
        if not self.chat_template:
            return Rendered(((head, False), (reply + self.eos_token, True)))
        messages = self._prompt_messages(prompt) + [{"role": "assistant", "content": reply}]
        full = "".join(t for t, _ in self.apply_chat_template(messages))
        if full.startswith(head):
            return Rendered(((head, False), (full[len(head):], True)))
        return Rendered(((full, True),))


_TEMPLATES: dict[str, object] = {}


def _cached_template(source: str):
    if source not in _TEMPLATES:
        _TEMPLATES[source] = _compile(source)
    return _TEMPLATES[source]


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of a dataset's examples (on a sample for large sets)."""

    rows: int
    sampled: int
    p50: int
    p95: int
    max: int
    prompt_too_long: int  # rows whose prompt alone fills max_length: nothing left to learn from
    truncated: int  # rows longer than max_length
    max_length: int
    lengths: tuple[int, ...]  # of the sample, for histograms


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def length_stats(records: list[dict], format: str, model: ModelText, max_length: int,
                 sample: int = 2000, seed: int = 0) -> LengthStats:
    import random

    chosen = records if len(records) <= sample else random.Random(seed).sample(records, sample)
    rendered = [model.render(r, format) for r in chosen]
    totals = model.count([r.text for r in rendered])
    prompts = model.count([r.prompt for r in rendered])
    scale = len(records) / len(chosen) if chosen else 0
    prompt_too_long = sum(1 for p in prompts if p >= max_length) if format in ("alpaca", "messages") else 0
    ordered = sorted(totals)
    return LengthStats(
        rows=len(records), sampled=len(chosen), p50=_percentile(ordered, 0.5), p95=_percentile(ordered, 0.95),
        max=ordered[-1] if ordered else 0,
        prompt_too_long=round(prompt_too_long * scale), truncated=round(sum(t > max_length for t in totals) * scale),
        max_length=max_length, lengths=tuple(totals),
    )


def token_stats(data_ref: str, model, *, task: str = "sft", columns=None, format: str = "auto"):
    """The token lengths of a dataset for the planner (``recommend.DataStats``), read light.

    ``data_ref`` is a file or ``demo:NAME``; ``model`` a ``modelinfo.ModelInfo`` whose folder has a tokenizer.
    """
    from pathlib import Path as _Path

    from tuiwiz.data.datasets import load_dataset_file
    from tuiwiz.data.stats import DataStats
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.profile.io import is_local_data

    if data_ref.startswith("demo:"):
        path = resolve_demo_uri(data_ref)
    elif is_local_data(data_ref):
        path = _Path(data_ref).expanduser()
    else:
        raise UserError(f"token statistics need the data on this machine; '{data_ref}' looks like a hub id",
                        hint="download it to a file, or pass --seq-len N", field="--data", kind="data")
    data = load_dataset_file(path, format=format, columns=columns, task=task)
    stats = length_stats(data.records, data.format, ModelText(model.path), max_length=1 << 30)
    from dataclasses import replace

    # the lengths may be a sample of a larger set: the row count is the whole set's
    return replace(DataStats.from_lengths(stats.lengths, source=str(path)), rows=stats.rows)
