"""Direct preference optimisation with TRL's DPOTrainer, on chosen/rejected pairs.

setup: settings checked -> data -> tokenizer -> every prompt within max_prompt_length -> the policy
(the base and its adapter config, or the whole model) and its reference (tuiwiz/train/reference.py)
-> trainer; then train and save (session.py). The loss variants are TRL's, by their names
(preference.loss_type). KTO (kto.py) sets up the same way with its own trainer.

Memory: on CPU the step's peak beyond SFT's was mostly TRL's fused loss head, not a second model: it
projects up to 4096 positions onto the vocabulary at once and folds that tile with whole-tile torch ops
(several copies alive, the backward's while every activation is still held), and DPO scores every position
of twice the micro-batch. modeling.cap_head_tiles() makes the tiles 256 positions on CPU, for every recipe
that scores through that head: the same log-probabilities (tests/test_dpo_memory.py), a lower peak
(bench/preference_bench.py).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable

from tuiwiz.plan.reference_scoring import reference_scoring
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.arguments import total_steps, training_arguments, world_size
from tuiwiz.train.callbacks import RunnerCallback, method_callbacks
from tuiwiz.train.examples import load_data
from tuiwiz.train.modeling import cap_head_tiles, fuse_lora, load_tokenizer, resolve_precision
from tuiwiz.train.preference_rows import check_prompts, preference_rows
from tuiwiz.train.reference import load_policy, load_reference, trained_model
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
    """The setup of a trainer with a reference model (DPO, KTO), ``build`` making the trainer."""
    import transformers

    transformers.logging.set_verbosity_warning()
    precision = resolve_precision(profile)
    cap_head_tiles(precision)
    model_path = starting_model(profile, run)
    train_data, eval_data = load_data(profile)
    tokenizer = load_tokenizer(model_path, profile)
    check_prompts(profile, tokenizer, train_data, eval_data)
    steps = total_steps(profile, len(train_data.records), world_size())
    policy = load_policy(model_path, profile, precision, tokenizer, steps)
    reference = load_reference(model_path, profile, precision, policy)
    trainer = build(profile, run, precision, policy, reference, tokenizer, train_data, eval_data, callbacks)
    for extra in method_callbacks(profile, trainer.model):  # AdaLoRA's, on the model TRL wrapped
        trainer.add_callback(extra)
    fuse_lora(trainer.model, profile)  # the LoRA layers TRL put on
    return Setup(trainer, tokenizer, model_path, precision, trained_model(trainer, policy), train_data.format)


def build_trainer(profile: Profile, run: RunDir, precision, policy, reference, tokenizer, train_data, eval_data,
                  callbacks):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = profile.preference
    train_rows = preference_rows(train_data, tokenizer, profile)
    eval_rows = preference_rows(eval_data, tokenizer, profile) if eval_data else []
    config = DPOConfig(
        **training_arguments(profile, precision, run, eval_data is not None), max_length=profile.data.max_length,
        beta=settings.beta, loss_type=[settings.loss_type or "sigmoid"], label_smoothing=settings.label_smoothing,
        precompute_ref_log_probs=precompute_reference(profile, run, len(train_rows), len(eval_rows), callbacks),
        dataset_num_proc=None,
        pad_to_multiple_of=profile.data.max_length if profile.training.pad_to_max_length else None,
    )
    return DPOTrainer(
        model=policy.model, ref_model=reference, args=config, peft_config=policy.peft_config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_data else None,
        processing_class=tokenizer, callbacks=callbacks,
    )


def precompute_reference(profile: Profile, run: RunDir, train_rows: int, eval_rows: int, callbacks: list) -> bool:
    """preference.precompute_ref_log_probs resolved for this run's rows (tuiwiz/plan/reference_scoring.py), and
    for the steps it has left when it resumes (a fresh run's folder has no checkpoint). The reason goes to the
    run's log; a precomputing run also says so in its status, since the pass runs before the first step."""
    checkpoint = run.last_checkpoint()
    scoring = reference_scoring(profile, train_rows=train_rows, eval_rows=eval_rows,
                                total_steps=total_steps(profile, train_rows, world_size()),
                                steps_done=int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0)
    print(f"tuiwiz: {scoring.reason}", file=sys.stderr, flush=True)
    if scoring.precompute:
        skip_weight_hash()
        for callback in callbacks:
            if isinstance(callback, RunnerCallback):
                callback.emit(StatusEvent(status="loading", message=scoring.reason))
    return scoring.precompute


def unused_weight_hash(module) -> str:
    """A name no other model's scores share, should a cache file ever be named by it."""
    return uuid.uuid4().hex


def skip_weight_hash() -> None:
    """Before precomputing, TRL's DPO and KTO trainers hash every weight of the model with SHA-256
    (trl.trainer.utils.hash_module), which grows with the model's size, to name the cache file of the scores.
    datasets uses that name only for a dataset stored on disk; tuiwiz hands TRL datasets built in memory
    (Dataset.from_list), for which Dataset._get_cache_file_path draws a random name instead, so the hash is
    never used. It is replaced by a random name (tests/test_preference_tasks.py checks both halves: TRL calls it
    by this name, and the datasets it precomputes on have no cache files)."""
    import trl.trainer.dpo_trainer
    import trl.trainer.kto_trainer

    for module in (trl.trainer.dpo_trainer, trl.trainer.kto_trainer):
        if not hasattr(module, "hash_module"):
            raise RuntimeError(f"{module.__name__} no longer imports hash_module: check skip_weight_hash")
        module.hash_module = unused_weight_hash
