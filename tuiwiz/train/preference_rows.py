"""Preference and unpaired records (tuiwiz.data.preference) as the rows TRL's DPO, KTO, ORPO and CPO
trainers take, with every prompt checked against preference.max_prompt_length first.

With a chat template, TRL's conversational format: the prompt as messages (a text prompt as one user
message), chosen, rejected and completion as one assistant message each; the trainer renders them
with the template. Without one, text rows whose replies end with the EOS token, so that the model
learns to stop (TRL adds it where missing; said here so that every trainer gets the same rows).
"""

from __future__ import annotations

import random

from tuiwiz.data.datasets import LoadedData
from tuiwiz.data.preference_prompts import (
    Prompt,
    check_prompt_lengths,
    model_prompt,
    prompt_field,
)
from tuiwiz.profile.schema import Profile


def _reply(text: str, tokenizer) -> list[dict] | str:
    if tokenizer.chat_template:
        return [{"role": "assistant", "content": text}]
    return text + (tokenizer.eos_token or "")


def preference_rows(data: LoadedData, tokenizer, profile: Profile) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows for DPO, ORPO and CPO (SimPO)."""
    field, template = prompt_field(profile), bool(tokenizer.chat_template)
    return [{"prompt": model_prompt(r["prompt"], template, data, line, field),
             "chosen": _reply(r["chosen"], tokenizer), "rejected": _reply(r["rejected"], tokenizer)}
            for r, line in zip(data.records, data.source_lines)]


def unpaired_rows(data: LoadedData, tokenizer, profile: Profile) -> list[dict]:
    """``{"prompt", "completion", "label"}`` rows for KTO; a preference pair gives two, its chosen reply
    desirable and its rejected one not. Shuffled (seeded): KTO reads its rows in order, and estimates its KL
    term from the prompts and completions of neighbouring rows, which must not be one pair's two halves."""
    field, template = prompt_field(profile), bool(tokenizer.chat_template)
    rows = []
    for r, line in zip(data.records, data.source_lines):
        prompt = model_prompt(r["prompt"], template, data, line, field)
        judged = [(r["chosen"], True), (r["rejected"], False)] if data.format == "preference" else \
            [(r["completion"], r["label"])]
        rows += [{"prompt": prompt, "completion": _reply(text, tokenizer), "label": label} for text, label in judged]
    random.Random(profile.training.seed).shuffle(rows)
    return rows


def token_counter(tokenizer):
    """Tokens of a prompt as TRL's trainers tokenize it: a chat template's, or the text's with special tokens."""

    def count(prompt: Prompt) -> int:
        if isinstance(prompt, list):
            return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
        return len(tokenizer(text=prompt)["input_ids"])

    return count


def check_prompts(profile: Profile, tokenizer, *datasets: LoadedData | None) -> None:
    """Every prompt of the training and evaluation data within preference.max_prompt_length (a UserError
    naming the first that is not)."""
    for data in datasets:
        if data is not None:
            check_prompt_lengths(data, token_counter(tokenizer), bool(tokenizer.chat_template), profile)
