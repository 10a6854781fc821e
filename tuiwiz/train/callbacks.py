"""Trainer callbacks: events to the run dir, graceful stop, non-finite or diverging loss, AdaLoRA budget."""

from __future__ import annotations

import math
import time

import psutil
import torch
from transformers import TrainerCallback

from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.run.event_types import CheckpointEvent, EvalEvent, Event, LogEvent, StatusEvent
from tuiwiz.run.events import EventWriter
from tuiwiz.train.failures import LossDiverged, LossWatch, NonFiniteLoss
from tuiwiz.train.stop import StopFlag


def memory_snapshot() -> dict:
    import resource

    snap = {
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1),  # Linux: KiB
    }
    if torch.cuda.is_available():
        snap["gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        snap["gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return snap


class RunnerCallback(TrainerCallback):
    def __init__(self, events: EventWriter | None, stop: StopFlag) -> None:
        self.events = events  # None on ranks other than 0
        self.stop = stop
        self.failure: NonFiniteLoss | LossDiverged | None = None
        self.watch = LossWatch()
        self._last_time: float | None = None
        self._last_tokens = 0
        self.start_tokens = 0

    def emit(self, event: Event, durable: bool = False) -> None:
        if self.events is not None:
            self.events.emit(event, durable=durable)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = self.start_tokens = state.num_input_tokens_seen or 0
        for logged in state.log_history:  # a resumed run keeps where it began and its lowest loss
            if "loss" in logged and math.isfinite(logged["loss"]):
                self.watch.observe(float(logged["loss"]))
        self.emit(StatusEvent(status="running", step=state.global_step, max_steps=state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.poll():
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            loss = float(logs["loss"])
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen or 0
            elapsed = now - (self._last_time or now)
            tps = (tokens - self._last_tokens) / elapsed if elapsed > 0 else None
            self._last_time, self._last_tokens = now, tokens
            grad_norm = _number(logs.get("grad_norm"))
            self.emit(LogEvent(
                step=state.global_step, max_steps=state.max_steps, epoch=round(state.epoch or 0, 4),
                loss=loss, learning_rate=_number(logs.get("learning_rate")), grad_norm=grad_norm,
                tokens_seen=tokens, tokens_per_second=round(tps, 1) if tps else None, memory=memory_snapshot(),
                task_metrics=_task_metrics(logs),
            ))
            if not math.isfinite(loss):
                self.failure = NonFiniteLoss(state.global_step, loss)
            else:
                self.failure = self.watch.check(state.global_step, loss, grad_norm, scaled_fp16=bool(args.fp16))
            if self.failure is not None:
                control.should_training_stop = True
                control.should_save = False  # never a checkpoint of NaN or blown-up weights
        eval_metrics = {k: v for k, v in logs.items() if k.startswith("eval_")}
        if eval_metrics:
            self.emit(EvalEvent(step=state.global_step, **eval_metrics))
        return control

    def on_save(self, args, state, control, **kwargs):
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        self.emit(CheckpointEvent(step=state.global_step, path=path), durable=True)


_COMMON = {"loss", "grad_norm", "learning_rate", "epoch"}


def _task_metrics(logs: dict) -> dict[str, float] | None:
    """The numbers a task's trainer logs beyond the common ones (DPO's rewards/*, GRPO's reward, ...)."""
    found = {}
    for key, value in logs.items():
        if key in _COMMON or key.startswith("eval_"):
            continue
        try:
            found[key] = float(value)
        except (TypeError, ValueError):  # text (GRPO's completions) or a structure: not a curve
            continue
    return found or None


def _number(value) -> float | None:
    """A logged number as a float (the Trainer may hand over a 0-d tensor), or None."""
    return None if value is None else float(value)


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA reallocates ranks after each optimizer step; the Trainer does not call it."""

    def __init__(self, model) -> None:
        self.model = model

    def on_train_begin(self, args, state, control, **kwargs):
        """AdaLoRA's schedule (tinit steps, the rank budget falling, tfinal steps) spans the run's optimizer steps
        as the Trainer counts them. peft needs a count when the adapter is made, before TRL builds its rows, and
        that one counts the data's records: packed rows are fewer, and KTO makes two completions of a pair."""
        tuner = self.model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.tinit + config.tfinal >= state.max_steps:
            raise UserError(
                f"AdaLoRA needs tinit + tfinal ({config.tinit} + {config.tfinal}) below the run's "
                f"{state.max_steps} optimizer steps (as the trainer counts its rows)",
                hint="lower method.tinit and method.tfinal, or train for more steps", field="method.tinit",
                kind="profile",
            )
        config.total_step = state.max_steps
        tuner.rankallocator.set_total_step(state.max_steps)  # it reads the same config; set it its own way too

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


def method_callbacks(profile: Profile, model) -> list[TrainerCallback]:
    """What the profile's method needs called during training."""
    return [AdaLoraCallback(model)] if profile.method.type == "adalora" else []
