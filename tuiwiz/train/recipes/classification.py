"""Sequence classification: a causal LM (or encoder) with a classification head, over labelled text.

setup: data (its labels) -> tokenizer -> model with its head and the method -> trainer with accuracy;
then train and save (session.py).
"""

from __future__ import annotations

from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import classification_dataset, load_data
from tuiwiz.train.modeling import load_tokenizer, load_trainable_model, resolve_precision
from tuiwiz.train.session import Setup, train_and_save
from tuiwiz.train.start import starting_model
from tuiwiz.train.stop import StopFlag


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
    train_data, eval_data = load_data(profile)
    labels = train_data.labels
    tokenizer = load_tokenizer(model_path, profile)
    steps = total_steps(profile, len(train_data.records), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps, labels)
    callbacks = callbacks + method_callbacks(profile, model.model)
    trainer = build_trainer(profile, run, precision, model.model, tokenizer, train_data, eval_data, labels, callbacks)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format, labels)


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, labels,
                  callbacks):
    import transformers

    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**training_arguments(profile, precision, run, eval_data is not None)),
        train_dataset=classification_dataset(train_data, tokenizer, profile, labels),
        eval_dataset=classification_dataset(eval_data, tokenizer, profile, labels) if eval_data else None,
        processing_class=tokenizer,
        data_collator=transformers.DataCollatorWithPadding(
            tokenizer, padding="max_length" if profile.training.pad_to_max_length else True,
            max_length=profile.data.max_length),
        compute_metrics=accuracy,
        callbacks=callbacks,
    )


def accuracy(prediction) -> dict[str, float]:
    import numpy as np

    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}
