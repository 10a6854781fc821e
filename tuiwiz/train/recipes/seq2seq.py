"""Text to text with an encoder-decoder (T5, mT5, mT0, BART): transformers' Seq2SeqTrainer.

setup: data ({"input", "target"} records) -> tokenizer -> model with the method on it -> trainer that
evaluates by generating; then train and save (session.py).

Seq2SeqTrainer rather than TRL: TRL 1.x's trainers (SFT, DPO, ...) train decoder-only models, and
Seq2SeqTrainer is what generates during evaluation (``predict_with_generate``), which exact match and
ROUGE-L need (text_metrics.py). Both are computed on the greedy generations and logged as
``eval_exact_match`` and ``eval_rougeL``.
"""

from __future__ import annotations

from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data
from tuiwiz.train.modeling import load_tokenizer, load_trainable_model, resolve_precision
from tuiwiz.train.session import Setup, train_and_save
from tuiwiz.train.start import starting_model
from tuiwiz.train.stop import StopFlag
from tuiwiz.train.text_metrics import text_metrics

# Generations in evaluation may run this many tokens past the longest target the data holds.
GENERATION_MARGIN = 16


def train(run: RunDir, profile: Profile, *, resume: bool, events: EventWriter | None,
          stop: StopFlag) -> StatusEvent:
    callback = RunnerCallback(events, stop)
    setup = set_up(profile, run, [callback])
    return train_and_save(run, profile, setup, callback, resume=resume, events=events, stop=stop)


def set_up(profile: Profile, run: RunDir, callbacks: list) -> Setup:
    """Everything from the frozen profile to a ready Trainer."""
    import transformers

    transformers.logging.set_verbosity_warning()
    precision = resolve_precision(profile)
    model_path = starting_model(profile, run)
    check_encoder_decoder(model_path, profile)
    train_data, eval_data = load_data(profile)
    tokenizer = load_tokenizer(model_path, profile)
    steps = total_steps(profile, len(train_data.records), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps)
    callbacks = callbacks + method_callbacks(profile, model.model)
    trainer = build_trainer(profile, run, precision, model.model, tokenizer, train_data, eval_data, callbacks)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format)


def check_encoder_decoder(model_path: str, profile: Profile) -> None:
    """Before the weights load: AutoModelForSeq2SeqLM's own refusal of a decoder-only config is a traceback."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, revision=profile.model.revision,
                                        trust_remote_code=profile.model.trust_remote_code)
    if not getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"task seq2seq trains encoder-decoder models (T5, mT5, mT0, BART); {profile.model.name_or_path} is "
            f"a {config.model_type} model, decoder-only",
            hint="choose an encoder-decoder model (demo-t5 is built in), or task sft for this one",
            field="model.name_or_path", kind="profile")


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, callbacks):
    import transformers

    train_rows = tokenized(train_data, tokenizer, profile)
    eval_rows = tokenized(eval_data, tokenizer, profile) if eval_data else None
    longest = max(len(labels) for rows in (train_rows, eval_rows or train_rows) for labels in rows["labels"])
    args = transformers.Seq2SeqTrainingArguments(
        **training_arguments(profile, precision, run, eval_data is not None), predict_with_generate=True,
        generation_max_length=min(profile.data.max_length, longest + GENERATION_MARGIN), generation_num_beams=1,
    )
    return transformers.Seq2SeqTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer,
        data_collator=transformers.DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=-100,
            padding="max_length" if profile.training.pad_to_max_length else True, max_length=profile.data.max_length),
        compute_metrics=lambda prediction: text_metrics(prediction, tokenizer),
        callbacks=callbacks,
    )


def with_eos(ids: list[int], eos: int | None, max_length: int) -> list[int]:
    """T5's convention: a sequence ends with EOS (the tokenizer adds it; some do not), within max_length."""
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return ids[:max_length - 1] + [eos]


def tokenized(data, tokenizer, profile: Profile):
    """input_ids and attention_mask of each input, labels of each target; both end with EOS."""
    from datasets import Dataset

    n = profile.data.max_length
    eos = tokenizer.eos_token_id
    inputs = tokenizer([r["input"] for r in data.records], truncation=True, max_length=n)["input_ids"]
    targets = tokenizer(text_target=[r["target"] for r in data.records], truncation=True, max_length=n)["input_ids"]
    inputs = [with_eos(ids, eos, n) for ids in inputs]
    return Dataset.from_dict({"input_ids": inputs, "attention_mask": [[1] * len(ids) for ids in inputs],
                              "labels": [with_eos(ids, eos, n) for ids in targets]})
