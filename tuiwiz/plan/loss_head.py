"""Which loss head scores an SFT or pretraining step: TRL's fused head, or the model's whole logits.

``training.loss_head`` chooses. TRL 1.x's SFTTrainer scores every step through its fused LM head
(trl.kernels.chunked_logprob), which projects a tile of positions onto the vocabulary at a time so that the
whole logits never exist: on a GPU its Triton kernel keeps a 128k vocabulary's logits out of memory. On the
CPU the same head runs as torch operations, several passes a tile and the projection again in the backward,
and is the slower way to score a step (bench/loss_head.py: a little at the demo's vocabulary, by far at
Llama 3's). The model's own whole logits cost tokens x vocabulary x up to 12 bytes more (memory.py's
``logits_bytes``, checked against the measured peak by bench/memory_paths.py).

``auto`` (the default) takes the whole logits on the CPU, on one process, where the estimate of the whole
step with them fits the memory the run may use; everywhere else it keeps TRL's fused head:

- a GPU keeps the fused head: memory is what bounds a GPU run, and the two heads' speed there is not
  measured on these machines;
- several processes share one machine's RAM (each holds its own logits), which the single-process estimate
  this rule reads does not count, so they keep the lighter head.

``Plan.from_profile`` reads a stated value; ``auto`` there is the fused head, the lighter case, until a caller
that knows the memory settles it with ``settle`` (the recommender, the estimate command and the probe, through
recommend.settle_on), as the runner does with the RAM it finds (tuiwiz/train/whole_logits.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuiwiz.plan.fine_tune import Plan
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.tasks import TASKS
from tuiwiz.units import gib


@dataclass(frozen=True)
class LossHead:
    whole: bool  # the model's whole logits; False: TRL's fused head
    reason: str  # one sentence, for the run's log and the recommender


def stated_head(setting: str) -> LossHead:
    """A ``training.loss_head`` the profile states (``whole`` or ``fused``), kept as it is."""
    head = "the model's whole logits" if setting == "whole" else "TRL's fused LM head"
    return LossHead(setting == "whole", f"the loss is scored through {head} (training.loss_head: {setting})")


def loss_head(setting: str, model: ModelInfo, plan: Plan, usable_bytes: int | None, processes: int = 1) -> LossHead:
    """The head ``plan`` (with ``training.loss_head`` ``setting``) scores through, where the run may use
    ``usable_bytes`` of memory on its device (None: unknown)."""
    from tuiwiz.plan.memory import estimate

    task = plan.task
    if not TASKS[task].whole_logits:
        return LossHead(False, f"task {task} scores its own way (training.loss_head applies to sft and pretrain)")
    if setting != "auto":
        return stated_head(setting)
    if plan.device != "cpu":
        return LossHead(False, "the loss is scored through TRL's fused LM head, which never holds the whole logits "
                               "on a GPU (training.loss_head: auto)")
    if processes > 1:
        return LossHead(False, f"the loss is scored through TRL's fused LM head: {processes} processes each hold "
                               f"their own logits in one machine's RAM (training.loss_head: auto)")
    need = estimate(model, replace(plan, fused_loss=False)).total
    if usable_bytes is None or need > usable_bytes:
        room = "" if usable_bytes is None else f", {gib(usable_bytes)} usable"
        return LossHead(False, f"the loss is scored through TRL's fused LM head: with the whole logits the step "
                               f"would need {gib(need)}{room} (training.loss_head: auto)")
    return LossHead(True, f"the loss is scored from the model's whole logits, faster than TRL's fused head on the "
                          f"CPU: the step needs {gib(need)} with them, {gib(usable_bytes)} usable "
                          f"(training.loss_head: auto)")


def settle(plan: Plan, setting: str, model: ModelInfo, usable_bytes: int | None,
           processes: int = 1) -> tuple[Plan, LossHead]:
    """``plan`` with its head settled as the runner settles it, and why."""
    head = loss_head(setting, model, plan, usable_bytes, processes)
    return replace(plan, fused_loss=not head.whole if TASKS[plan.task].whole_logits else plan.fused_loss), head
