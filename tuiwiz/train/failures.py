"""Turning an exception in the runner into a failure kind, a message and a hint."""

from __future__ import annotations

import errno
import traceback
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    hint: str | None = None
    traceback: str | None = None

    def to_event(self) -> dict:
        return {"kind": self.kind, "message": self.message, "hint": self.hint, "traceback": self.traceback}


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"the loss became {loss} at step {step}")
        self.step = step


def classify(exc: BaseException) -> Failure:
    tail = "".join(traceback.format_exception(exc)[-6:])
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UserError):
        where = f"{exc.where}: " if exc.where else ""
        return Failure(exc.kind, where + exc.message, exc.hint)
    if isinstance(exc, NonFiniteLoss):
        return Failure(
            "nan_loss", str(exc),
            "lower training.learning_rate (try a third of it), keep max_grad_norm at 1.0, "
            "or use precision bf16 instead of fp16", tail,
        )
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return Failure(
            "oom_gpu", "the GPU ran out of memory",
            "lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
            "effective batch), set training.gradient_checkpointing: true, lower data.max_length, or use qlora",
            tail,
        )
    if isinstance(exc, MemoryError):
        return Failure(
            "oom_cpu", "the machine ran out of RAM",
            "lower the micro-batch or data.max_length, or close other programs", tail,
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return Failure("disk_full", f"the disk is full: {exc}", "free space, or lower training.save_total_limit", tail)
    if isinstance(exc, ModuleNotFoundError):
        return Failure(
            "dependency_missing", f"a package this method needs is not installed: {exc.name}",
            f"pip install {exc.name}  (bitsandbytes for qlora: pip install 'tuiwiz[qlora]')", tail,
        )
    if "safetensors" in name.lower() or "HeaderTooLarge" in str(exc) or "invalid header" in str(exc).lower():
        return Failure("model_corrupt", f"the model's weights cannot be read: {exc}",
                       "download the model again; the file may be truncated", tail)
    if isinstance(exc, OSError) and ("does not appear to have" in str(exc) or "is not a local folder" in str(exc)
                                     or "couldn't connect" in str(exc).lower() or "offline" in str(exc).lower()):
        return Failure("model_missing", f"the model could not be found: {exc}",
                       "check model.name_or_path; hub models must be in the local cache when offline", tail)
    return Failure("crash", text, "this looks like a bug; see train.log in the run folder", tail)
