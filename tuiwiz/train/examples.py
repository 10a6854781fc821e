"""The profile's data, loaded as records (tuiwiz.data.datasets) and made into the datasets the trainers take."""

from __future__ import annotations

from pathlib import Path

from tuiwiz.data.datasets import LoadedData
from tuiwiz.data.rendering import ALPACA_PROMPT, ALPACA_PROMPT_INPUT, alpaca_messages
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile


def load_data(profile: Profile) -> tuple[LoadedData, LoadedData | None]:
    """(training data, evaluation data or None): a demo set, a local file, or a hub dataset; a validation
    file, or a split of the training data."""
    from tuiwiz.data.datasets import (
        check_validation_labels,
        load_dataset_file,
        load_hub_dataset,
        split_validation,
    )
    from tuiwiz.demo.build import resolve_demo_uri
    from tuiwiz.profile.io import is_local_data

    data = profile.data
    options = dict(format=data.format, columns=data.columns, task=profile.task, limit=data.limit)

    def load(value: str, evaluation: bool = False):
        if value.startswith("demo:"):
            return load_dataset_file(resolve_demo_uri(value), evaluation=evaluation, **options)
        if is_local_data(value):
            return load_dataset_file(Path(value), evaluation=evaluation, **options)
        name, _, split = value.partition(":")  # org/name or org/name:split
        return load_hub_dataset(name, split=split or "train", evaluation=evaluation, **options)

    train = load(profile.data.path)
    evaluation = None
    if profile.data.validation_path:
        evaluation = load(profile.data.validation_path, evaluation=True)
        check_validation_labels(train, evaluation, label_column=profile.data.columns.label)
    elif profile.data.validation_split:
        train, evaluation = split_validation(train, profile.data.validation_split, profile.training.seed)
    return train, evaluation


def _alpaca_rows(records, tokenizer) -> list[dict]:
    if tokenizer.chat_template:
        rows = []
        for r in records:
            prompt, completion = alpaca_messages(r)
            rows.append({"prompt": prompt, "completion": completion})
        return rows
    eos = tokenizer.eos_token or ""
    return [
        {
            "prompt": (ALPACA_PROMPT_INPUT if r.get("input") else ALPACA_PROMPT).format(**r),
            "completion": r["output"] + eos,
        }
        for r in records
    ]


def sft_rows(data: LoadedData, tokenizer, profile: Profile) -> tuple[list[dict], dict]:
    """Rows for TRL's SFTTrainer and the SFTConfig options that go with them."""
    if data.format == "alpaca":
        return _alpaca_rows(data.records, tokenizer), {"completion_only_loss": True}
    if data.format == "messages":
        if not tokenizer.chat_template:
            raise UserError(
                f"{data.path} holds chat messages, but the model's tokenizer has no chat template",
                hint="use a chat (instruct) model, or convert the data to alpaca or text format",
                file=data.path, field="data.format", kind="data",
            )
        return [{"messages": r["messages"]} for r in data.records], {"assistant_only_loss": True}
    if data.format == "text":
        return [{"text": r["text"]} for r in data.records], {"dataset_text_field": "text"}
    raise UserError(
        f"data format {data.format} does not fit task {profile.task}",
        hint="task classification takes text+label data; sft takes alpaca, messages or text",
        file=data.path, field="data.format", kind="data",
    )


def classification_dataset(data: LoadedData, tokenizer, profile: Profile, labels: tuple[str, ...]):
    from datasets import Dataset

    index = {label: i for i, label in enumerate(labels)}
    for record, line in zip(data.records, data.source_lines):
        if record["label"] not in index:
            raise UserError(
                f"label '{record['label']}' is not among the training labels ({', '.join(labels)})",
                hint="every evaluation label must also occur in the training data",
                file=data.path, line=line, field="label", kind="data",
            )
    encoded = tokenizer(
        [r["text"] for r in data.records], truncation=True, max_length=profile.data.max_length
    )
    encoded["labels"] = [index[r["label"]] for r in data.records]
    return Dataset.from_dict(dict(encoded))
