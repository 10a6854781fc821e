"""A preference prompt as the model reads it, and the check that every prompt fits ``preference.max_prompt_length``.

With a chat template a prompt is chat messages (a text prompt becomes one user message) that TRL's
trainers render with the template; without one it is plain text, and a prompt given as messages
cannot be written at all. TRL 1.x has no prompt limit of its own for DPO and KTO, so a prompt longer
than the limit is refused here, naming its line, rather than cut. Preflight counts tokens with the
light tokenizer (``ModelText``), the runner with the real one, through the same check.
"""

from __future__ import annotations

from collections.abc import Callable

from tuiwiz.data.datasets import LoadedData
from tuiwiz.data.files import data_error
from tuiwiz.profile.schema import Profile

Prompt = str | list[dict]  # text, or chat messages ending with a user turn


def max_prompt_length(profile: Profile) -> int:
    """The longest prompt in tokens: the profile's, else half of data.max_length."""
    return profile.preference.max_prompt_length or profile.data.max_length // 2


def prompt_field(profile: Profile) -> str:
    """The prompt's column, as an error names it."""
    return profile.data.columns.prompt or "prompt"


def model_prompt(prompt: Prompt, has_chat_template: bool, data: LoadedData, line: int, field: str) -> Prompt:
    """The prompt as the trainer takes it: messages under a chat template, else text."""
    if has_chat_template:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if isinstance(prompt, list):
        raise data_error(
            "this prompt is a conversation (chat messages), but the model's tokenizer has no chat template to "
            "write it with", data.path, line, field,
            hint="use a chat (instruct) model, or give the prompt as text")
    return prompt


def check_prompt_lengths(data: LoadedData, count_tokens: Callable[[Prompt], int], has_chat_template: bool,
                         profile: Profile) -> None:
    """Refuse the first prompt longer than the limit, naming its file, line and field."""
    limit = max_prompt_length(profile)
    field = prompt_field(profile)
    unset = f" (unset: half of data.max_length={profile.data.max_length})"
    where = "" if profile.preference.max_prompt_length else unset
    for record, line in zip(data.records, data.source_lines):
        tokens = count_tokens(model_prompt(record["prompt"], has_chat_template, data, line, field))
        if tokens > limit:
            raise data_error(
                f"this prompt is {tokens} tokens as the model reads it, more than preference.max_prompt_length="
                f"{limit}{where}", data.path, line, field,
                hint="raise preference.max_prompt_length (and data.max_length, which holds prompt and reply), "
                     "or shorten or remove this prompt")


def check_prompt_lengths_light(profile: Profile, data: LoadedData, model_folder) -> None:
    """check_prompt_lengths before a run exists, with the model folder's light tokenizer; nothing to check
    when the data holds no prompts or the folder has no fast tokenizer (the runner checks then)."""
    from tuiwiz.data.rendering import ModelText

    if data.format not in ("preference", "unpaired"):
        return
    model = ModelText(model_folder)
    if not (model.folder / "tokenizer.json").is_file():
        return
    check_prompt_lengths(data, light_token_counter(model), bool(model.chat_template), profile)


def light_token_counter(model) -> Callable[[Prompt], int]:
    """Tokens of a prompt as TRL counts them, from a ``tuiwiz.data.rendering.ModelText``: a chat template's
    text without special tokens added (apply_chat_template adds none), plain text with them."""

    def count(prompt: Prompt) -> int:
        if isinstance(prompt, list):
            text = "".join(piece for piece, _ in model.apply_chat_template(prompt, add_generation_prompt=True))
            return len(model.tokenizer.encode(text, add_special_tokens=False).ids)
        return len(model.tokenizer.encode(prompt, add_special_tokens=True).ids)

    return count
