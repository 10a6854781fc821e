"""Odds-ratio preference optimisation with TRL's ORPOTrainer (trl.experimental.orpo in TRL 1.x).

No reference model: the loss is the chosen reply's negative log-likelihood plus beta times a log
odds-ratio term, so no SFT stage is needed first. setup: settings checked -> data -> tokenizer ->
every prompt within max_prompt_length -> the model with its method -> trainer; then train and save
(session.py). SimPO (simpo.py) sets up the same way with its own trainer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data
from tuiwiz.train.modeling import cap_head_tiles, load_tokenizer, load_trainable_model, resolve_precision
from tuiwiz.train.preference_rows import check_prompts, preference_rows
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
    return set_up_with(build_trainer, profile, run, callbacks)


def set_up_with(build: Callable, profile: Profile, run: RunDir, callbacks: list) -> Setup:
    """The setup of a trainer without a reference model (ORPO, SimPO), ``build`` making the trainer."""
    import transformers

    transformers.logging.set_verbosity_warning()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # read when trl.experimental is first imported
    precision = resolve_precision(profile)
    cap_head_tiles(precision)
    model_path = starting_model(profile, run)
    train_data, eval_data = load_data(profile)
    tokenizer = load_tokenizer(model_path, profile)
    check_prompts(profile, tokenizer, train_data, eval_data)
    steps = total_steps(profile, len(train_data.records), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps)
    callbacks = callbacks + method_callbacks(profile, model.model)
    trainer = build(profile, run, precision, model.model, tokenizer, train_data, eval_data, callbacks)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format)


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, callbacks):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config = ORPOConfig(
        **pair_token_arguments(training_arguments(profile, precision, run, eval_data is not None)),
        max_length=profile.data.max_length, beta=profile.preference.beta, dataset_num_proc=None,
    )
    return counting_pair_tokens(ORPOTrainer)(
        model=model, args=config, train_dataset=Dataset.from_list(preference_rows(train_data, tokenizer, profile)),
        eval_dataset=Dataset.from_list(preference_rows(eval_data, tokenizer, profile)) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )


def pair_token_arguments(arguments: dict) -> dict:
    """The Trainer's own count of tokens seen switched off: it counts ``input_ids``, which ORPO's and CPO's batches
    do not have (it would warn at every step and count none); ``counting_pair_tokens`` counts them instead."""
    return {**arguments, "include_num_input_tokens_seen": "no"}


def counting_pair_tokens(trainer_class):
    """``trainer_class`` counting the non-padding tokens of each chosen and rejected sequence (prompt included) into
    ``state.num_input_tokens_seen``, summed over the ranks. The state is saved with each checkpoint and loaded on
    resume, so the count goes on from there; every log carries it, as the Trainer's own count would."""
    import torch

    class CountingPairTokens(trainer_class):
        def training_step(self, model, inputs, num_items_in_batch=None):
            masks = [inputs[key] for key in ("chosen_attention_mask", "rejected_attention_mask") if key in inputs]
            tokens = torch.as_tensor(sum(int(mask.sum()) for mask in masks), device=self.args.device)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs, start_time=None):
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen  # in place, as the Trainer adds it
            return super().log(logs, start_time)

    return CountingPairTokens
