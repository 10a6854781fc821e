"""A reward model: a sequence-score head (one number) trained on preference pairs with TRL's RewardTrainer,
so that the chosen reply scores above the rejected one.

setup: data -> tokenizer -> model with its score head and the method -> pairs rendered as the model will
score them (tuiwiz/run/reward_model.py) -> trainer; then train and save (session.py). The trainer logs
``accuracy`` (chosen above rejected) and ``margin`` on training batches, ``eval_accuracy`` and
``eval_margin`` on the evaluation data (means over its batches).
"""

from __future__ import annotations

from tuiwiz.data.datasets import LoadedData
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.reward_model import reward_ids, reward_text
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data
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
    tokenizer = load_tokenizer(model_path, profile)
    steps = total_steps(profile, len(train_data.records), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps)
    callbacks = callbacks + method_callbacks(profile, model.model)
    trainer = build_trainer(profile, run, precision, model.model, tokenizer, train_data, eval_data, callbacks)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format)


def pair_rows(data: LoadedData, tokenizer) -> list[dict]:
    """Each pair as the token ids of prompt + chosen and prompt + rejected, rendered by the one function that
    GRPO's reward_model reward and `tuiwiz score` render with too."""
    rows = []
    for record, line in zip(data.records, data.source_lines):
        try:
            chosen, rejected = (reward_text(tokenizer, record["prompt"], record[key]) for key in ("chosen", "rejected"))
        except UserError as exc:  # chat messages for a tokenizer without a chat template
            raise UserError(exc.message, hint=exc.hint, file=data.path, line=line, field="prompt",
                            kind="data") from None
        rows.append({"chosen_ids": reward_ids(tokenizer, chosen), "rejected_ids": reward_ids(tokenizer, rejected)})
    return rows


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, callbacks):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    max_length = profile.data.max_length
    config = RewardConfig(
        **training_arguments(profile, precision, run, eval_data is not None), max_length=max_length,
        dataset_num_proc=None, pad_to_multiple_of=max_length if profile.training.pad_to_max_length else None,
    )
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(pair_rows(train_data, tokenizer)),
        eval_dataset=Dataset.from_list(pair_rows(eval_data, tokenizer)) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
    if len(trainer.train_dataset) == 0:  # TRL drops the pairs longer than max_length
        raise UserError(
            f"no pair of {train_data.path} fits in data.max_length={max_length} tokens (prompt and reply together)",
            hint="raise data.max_length", file=train_data.path, field="data.max_length", kind="data")
    return trainer
