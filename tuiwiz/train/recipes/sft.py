"""Supervised fine-tuning (and pretraining on raw text) of a causal LM with TRL's SFTTrainer.

setup: data -> tokenizer -> model with the method on it -> trainer; then train and save (session.py).
"""

from __future__ import annotations

from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data, sft_rows
from tuiwiz.train.modeling import cap_head_tiles, load_tokenizer, load_trainable_model, resolve_precision
from tuiwiz.train.packing import FLASH, check_isolation, check_packed_batches, drop_untrained, use_packed_rows
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

    from tuiwiz.train.whole_logits import choose_loss_head

    transformers.logging.set_verbosity_warning()
    precision = resolve_precision(profile)
    cap_head_tiles(precision)
    model_path = starting_model(profile, run)
    train_data, eval_data = load_data(profile)
    tokenizer = load_tokenizer(model_path, profile)
    steps = total_steps(profile, len(train_data.records), world_size())
    model = load_trainable_model(model_path, profile, precision, tokenizer, steps)
    callbacks = callbacks + method_callbacks(profile, model.model)
    whole = choose_loss_head(profile, model_path, precision.device).whole
    trainer = build_trainer(profile, run, precision, model.model, tokenizer, train_data, eval_data, callbacks,
                            whole_logits=whole)
    return Setup(trainer, tokenizer, model_path, precision, model, train_data.format)


def build_trainer(profile: Profile, run: RunDir, precision, model, tokenizer, train_data, eval_data, callbacks, *,
                  whole_logits: bool = False):
    """TRL's SFTTrainer, or its subclass that scores training steps from the whole logits (whole_logits.py)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tuiwiz.train.whole_logits import WholeLogitsSFTTrainer

    rows, options = sft_rows(train_data, tokenizer, profile)
    eval_rows = sft_rows(eval_data, tokenizer, profile)[0] if eval_data else None
    attention = check_isolation(model) if profile.data.packing else None  # before TRL tokenizes everything
    config = SFTConfig(
        **training_arguments(profile, precision, run, eval_data is not None), max_length=profile.data.max_length,
        packing=profile.data.packing, packing_strategy=packing_strategy(profile), dataset_num_proc=None,
        pad_to_multiple_of=profile.data.max_length if profile.training.pad_to_max_length else None, **options,
    )
    trainer = (WholeLogitsSFTTrainer if whole_logits else SFTTrainer)(
        model=model, args=config, train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
    if attention is not None:
        isolate_packed(trainer, attention)
    if len(trainer.train_dataset) == 0:
        raise UserError(
            f"no example of {train_data.path} fits in data.max_length={profile.data.max_length} tokens",
            hint="raise data.max_length", file=train_data.path, field="data.max_length", kind="data",
        )
    return trainer


def packing_strategy(profile: Profile) -> str:
    """TRL's best-fit-decreasing packing, examples apart. SFT keeps each example whole (truncated to max_length, as
    without packing); pretraining splits a longer text into max_length pieces and keeps every token."""
    return "bfd_split" if profile.task == "pretrain" else "bfd"


def isolate_packed(trainer, attention: str) -> None:
    """Packed examples that see only themselves (tuiwiz/train/packing.py), and none left with nothing to train."""
    import sys

    trainer.train_dataset, dropped = drop_untrained(trainer.train_dataset)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = drop_untrained(trainer.eval_dataset)[0]
    if dropped:
        print(f"packing: left out {dropped} examples with no trained token within data.max_length", file=sys.stderr)
    if attention not in FLASH:  # flash keeps TRL's collator: one row a batch, cut at cu_seq_lens
        use_packed_rows(trainer)
    checked = check_packed_batches(trainer, attention)  # flash: no mask to read, so the batches are run
    if checked:
        print(checked, file=sys.stderr)
