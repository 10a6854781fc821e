"""What every recipe does once its Trainer is set up: announce the run, train (resuming, stopping
when asked), evaluate, save the output, and say how it ended.

A recipe (tuiwiz/train/recipes/) builds a ``Setup``; ``train_and_save`` does the rest. On ranks other
than 0 ``events`` is None: rank 0 alone writes the event log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from tuiwiz import __version__
from tuiwiz.files import write_text_atomic
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import RunEndEvent, RunStartEvent, StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.run.rundir import RunDir, update_state
from tuiwiz.tasks import TASKS
from tuiwiz.train.arguments import total_steps
from tuiwiz.train.callbacks import RunnerCallback
from tuiwiz.train.modeling import Precision, TrainableModel
from tuiwiz.train.stop import StopFlag


@dataclass(frozen=True)
class Setup:
    """A recipe's work before training: the Trainer, and what the run's start and output record."""

    trainer: Any
    tokenizer: Any  # saved beside the model
    model_path: str
    precision: Precision
    model: TrainableModel
    data_format: str
    labels: tuple[str, ...] | None = None  # classification's classes


def trained_rows(profile: Profile, examples: int) -> int:
    """What the Trainer's batches count: completions under GRPO (num_generations of each prompt), else examples."""
    return examples * profile.grpo.num_generations if TASKS[profile.task].generates else examples


def run_start(run: RunDir, profile: Profile, setup: Setup, resumed_from: str | None) -> RunStartEvent:
    """What the run trains, with the settings resolved (from the examples the Trainer kept: packing and
    the length filter change their count)."""
    trainer, args = setup.trainer, setup.trainer.args
    return RunStartEvent(
        run_id=run.run_id, tuiwiz_version=__version__, versions=_versions(), task=profile.task,
        method=profile.method.type, model=profile.model.name_or_path, model_path=setup.model_path,
        learning_rate=profile.learning_rate, precision=setup.precision.name, device=setup.precision.device,
        dtype=setup.model.dtype, world_size=args.world_size,
        max_steps=total_steps(profile, trained_rows(profile, len(trainer.train_dataset)), args.world_size),
        total_train_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        target_modules=setup.model.target_modules, params_total=setup.model.params_total,
        params_trainable=setup.model.params_trainable, train_examples=len(trainer.train_dataset),
        eval_examples=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        data_format=setup.data_format, labels=list(setup.labels) if setup.labels else None,
        resumed_from=resumed_from, pid=os.getpid(),
    )


def train_and_save(run: RunDir, profile: Profile, setup: Setup, callback: RunnerCallback, *, resume: bool,
                   events: EventWriter | None, stop: StopFlag) -> StatusEvent:
    """Train from the last checkpoint (when resuming), then evaluate and save. Returns the final status:
    completed, or stopped (with the step and checkpoint). A failure raises."""
    trainer = setup.trainer
    checkpoint = run.last_checkpoint() if resume else None
    if events is not None:
        if resume and checkpoint is None:
            events.emit(StatusEvent(status="loading", message="no checkpoint yet: starting from step 0"))
        events.emit(run_start(run, profile, setup, str(checkpoint) if checkpoint else None), durable=True)
        write_text_atomic(run.trainer_args, trainer.args.to_json_string())  # what really runs, to compare
        update_state(run, only_from=("loading", "starting"), status="running")
    if stop.poll():
        return StatusEvent(status="stopped", message="stopped before training began; nothing to checkpoint")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.failure is not None:
        raise callback.failure
    if stop.requested:
        last = run.last_checkpoint()
        return StatusEvent(status="stopped", step=trainer.state.global_step, checkpoint=str(last) if last else None)
    evaluated = any("eval_loss" in logged and logged.get("step") == trainer.state.global_step
                    for logged in trainer.state.log_history)
    if trainer.eval_dataset is not None and not evaluated:  # the last step's evaluation may have run already
        trainer.evaluate()
    save_output(run, profile, setup)
    metrics = dict(result.metrics)
    tokens = trainer.state.num_input_tokens_seen
    metrics["tokens_seen"] = tokens
    if metrics.get("train_runtime"):
        metrics["train_tokens_per_second"] = round((tokens - callback.start_tokens) / metrics["train_runtime"], 1)
    if events is not None:
        # what really trained: DeepSpeedEngine under ZeRO, DistributedDataParallel under DDP
        events.emit(RunEndEvent(status="completed", step=trainer.state.global_step, metrics=metrics,
                                output=str(run.output), engine=type(trainer.model_wrapped).__name__), durable=True)
    return StatusEvent(status="completed")


def save_output(run: RunDir, profile: Profile, setup: Setup) -> None:
    """The model (or adapter), its tokenizer, and tuiwiz.json, which post-training reads."""
    setup.trainer.save_model(str(run.output))  # every rank: ZeRO-3 gathers the shards here
    if not setup.trainer.is_world_process_zero():
        return
    setup.tokenizer.save_pretrained(str(run.output))
    meta = {
        "base_model": setup.model_path,
        "model": profile.model.name_or_path,
        "method": profile.method.type,
        "task": profile.task,
        "labels": list(setup.labels) if setup.labels else None,
        "tuiwiz_version": __version__,
    }
    (run.output / "tuiwiz.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found
