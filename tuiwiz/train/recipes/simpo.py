"""SimPO with TRL's CPOTrainer (trl.experimental.cpo in TRL 1.x): loss_type "simpo", cpo_alpha 0.

No reference model: the reward is the length-normalised log-likelihood of a reply scaled by beta,
and the chosen reply must beat the rejected one by the margin simpo_gamma. cpo_alpha 0 leaves out
CPO's behaviour-cloning term, so this is SimPO as its paper has it. Set up as ORPO is (orpo.py).
"""

from __future__ import annotations

from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import training_arguments
from tuiwiz.train.callbacks import RunnerCallback
from tuiwiz.train.preference_rows import preference_rows
from tuiwiz.train.recipes.orpo import counting_pair_tokens, pair_token_arguments, set_up_with
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


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, callbacks):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    settings = profile.preference
    config = CPOConfig(
        **pair_token_arguments(training_arguments(profile, precision, run, eval_data is not None)),
        max_length=profile.data.max_length, loss_type="simpo", cpo_alpha=0.0, beta=settings.beta,
        simpo_gamma=settings.simpo_gamma, label_smoothing=settings.label_smoothing, dataset_num_proc=None,
    )
    return counting_pair_tokens(CPOTrainer)(
        model=model, args=config, train_dataset=Dataset.from_list(preference_rows(train_data, tokenizer, profile)),
        eval_dataset=Dataset.from_list(preference_rows(eval_data, tokenizer, profile)) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
