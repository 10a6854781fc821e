"""Kahneman-Tversky optimisation with TRL's KTOTrainer, on completions labelled desirable or not.

Set up as DPO is (dpo.py: the policy, and the reference it is compared with); the rows are unpaired
(preference pairs are split into a desirable and an undesirable completion) and shuffled, since
TRL's KTO reads them in order (tuiwiz/train/preference_rows.py).
"""

from __future__ import annotations

from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import training_arguments
from tuiwiz.train.callbacks import RunnerCallback
from tuiwiz.train.preference_rows import unpaired_rows
from tuiwiz.train.recipes.dpo import precompute_reference, set_up_with
from tuiwiz.train.session import Setup, train_and_save
from tuiwiz.train.stop import StopFlag


def train(run: RunDir, profile: Profile, *, resume: bool, events: EventWriter | None,
          stop: StopFlag) -> StatusEvent:
    callback = RunnerCallback(events, stop)
    setup = set_up(profile, run, [callback])
    return train_and_save(run, profile, setup, callback, resume=resume, events=events, stop=stop)


def set_up(profile: Profile, run: RunDir, callbacks: list) -> Setup:
    """Everything from the frozen profile to a ready Trainer."""
    return set_up_with(build_trainer, profile, run, callbacks)


def build_trainer(profile: Profile, run: RunDir, precision, policy, reference, tokenizer, train_data, eval_data,
                  callbacks):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    settings = profile.preference
    train_rows = unpaired_rows(train_data, tokenizer, profile)
    eval_rows = unpaired_rows(eval_data, tokenizer, profile) if eval_data else []
    config = KTOConfig(
        **training_arguments(profile, precision, run, eval_data is not None), max_length=profile.data.max_length,
        beta=settings.beta, loss_type=settings.loss_type or "kto", desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
        precompute_ref_log_probs=precompute_reference(profile, run, len(train_rows), len(eval_rows), callbacks),
        dataset_num_proc=None,
        pad_to_multiple_of=profile.data.max_length if profile.training.pad_to_max_length else None,
    )
    return KTOTrainer(
        model=policy.model, ref_model=reference, args=config, peft_config=policy.peft_config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
