"""SFT and pretraining steps scored from the model's whole logits instead of TRL's fused LM head.

Which head a run uses is ``training.loss_head``, settled here with the RAM the run finds (the rule is
tuiwiz/plan/loss_head.py's, shared with the estimate and the recommender). ``WholeLogitsSFTTrainer`` is TRL's
SFTTrainer with one change, made the way TRL asks (subclass it and override ``compute_loss``): a training step
takes the model's own logits and the cross-entropy over them, each position predicting the next label as the
fused head's ``labels[:, 1:]`` does, normalised by the same token count (``num_items_in_batch`` under gradient
accumulation). TRL's ``compute_loss`` computes its logged entropy and token accuracy from the fused head's
outputs, which this path does not build, so they are computed here from the log-probabilities the loss
keeps for its backward (without gradients, a slice of positions at a time so that they add no logits-sized
copy to the step's peak) and recorded the same way. Evaluation keeps the fused head: it runs at the
evaluation batch size, which the step's estimate does not bound, and scores the same values
(tests/test_whole_logits.py holds the two heads' losses, gradients and metrics equal).
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from tuiwiz.plan.loss_head import LossHead, loss_head, stated_head
from tuiwiz.profile.schema import Profile
from tuiwiz.train.arguments import world_size

# The logged entropy is computed a slice of positions at a time, each slice's fp32 temporaries at most this
# size: a handful of positions at Llama 3's vocabulary, thousands at the demo's (its cost is beside the step's
# logits, which take 8 to 12 bytes a column and position)
METRIC_SLICE_BYTES = 16 * 2**20


def choose_loss_head(profile: Profile, model_path, device: str) -> LossHead:
    """``training.loss_head`` for this run: stated values as they are, ``auto`` by the estimate of the step with
    the whole logits against the RAM free now (less the recommender's headroom). The reason goes to the run's
    log."""
    setting = profile.training.loss_head
    if setting != "auto":
        head = stated_head(setting)
    else:
        import psutil

        from tuiwiz.errors import UserError
        from tuiwiz.plan.memory import Plan
        from tuiwiz.plan.modelinfo import inspect_model
        from tuiwiz.plan.recommend import RAM_HEADROOM

        try:
            info = inspect_model(str(model_path))
        except (UserError, ValueError, KeyError) as exc:
            head = LossHead(False, f"the loss is scored through TRL's fused LM head: the estimate cannot read this "
                                   f"model's layout ({exc}) (training.loss_head: auto)")
        else:
            plan = Plan.from_profile(profile, info, device=device)
            usable = int(psutil.virtual_memory().available * RAM_HEADROOM) if device == "cpu" else None
            head = loss_head(setting, info, plan, usable, world_size())
    print(f"tuiwiz: {head.reason}", file=sys.stderr, flush=True)
    return head


class Scored(NamedTuple):
    """What the logged metrics need of a step's trained positions (sums, so that ranks add up)."""
    entropy: torch.Tensor  # the predicted distributions' entropy, summed
    top1: torch.Tensor  # positions whose label is the most likely token
    positions: torch.Tensor  # positions with a label


def whole_logits_loss(logits: torch.Tensor, labels: torch.Tensor,
                      num_items_in_batch: int | torch.Tensor | None = None) -> tuple[torch.Tensor, Scored]:
    """The token-mean cross-entropy of ``labels`` under ``logits`` (batch x positions [+ virtual] x vocabulary),
    each position predicting the next label, over ``num_items_in_batch`` tokens (None: this batch's), and its
    metrics. The logits are upcast to fp32 (a view when they are fp32 already); the labels are shifted, not the
    logits, so no logits-sized copy is made for the shift."""
    if logits.shape[1] != labels.shape[1]:
        logits = logits[:, -labels.shape[1]:]  # prompt tuning's virtual tokens come first
    # position i predicts label i + 1; the last predicts nothing (the fused head's labels[:, 1:])
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    # F.cross_entropy is log_softmax then nll_loss; done apart, the log-probabilities it keeps for the backward
    # also give the logged entropy, without a second pass over the vocabulary
    log_p = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
    summed = F.nll_loss(log_p, targets, ignore_index=-100, reduction="sum")
    valid = targets != -100
    count = valid.sum() if num_items_in_batch is None else num_items_in_batch
    loss = summed / torch.as_tensor(count, device=summed.device).clamp(min=1)
    return loss, _scored(log_p.detach(), targets, valid)


@torch.no_grad()
def _scored(log_p: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> Scored:
    """Entropy and top-1 over the trained positions, a slice of METRIC_SLICE_BYTES of the log-probabilities at a
    time (the most likely token is the logits' argmax)."""
    entropy = log_p.new_zeros(())
    top1 = torch.zeros((), dtype=torch.long, device=log_p.device)
    step = max(1, METRIC_SLICE_BYTES // (4 * log_p.shape[-1]))
    for start in range(0, log_p.shape[0], step):
        rows = slice(start, start + step)
        keep = valid[rows]
        piece = log_p[rows][keep]  # the trained positions only: prompts and padding cost nothing
        entropy -= (piece.exp() * piece).sum()
        top1 += (piece.argmax(-1) == targets[rows][keep]).sum()
    return Scored(entropy, top1, valid.sum())


class WholeLogitsSFTTrainer(SFTTrainer):
    """SFTTrainer whose training steps score the loss from the model's whole logits (module docstring)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL's own path for what needs more than the plain loss over the logits, and for evaluation
        if (not model.training or return_outputs or self.aux_loss_enabled or self.label_smoother is not None
                or self.compute_loss_func is not None or self.args.loss_type != "nll"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        labels = inputs["labels"]
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss, scored = whole_logits_loss(logits, labels, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL: DDP averages gradients
        self._record_metrics(scored, inputs)
        return loss

    def _record_metrics(self, scored: Scored, inputs: dict) -> None:
        """TRL's training metrics (entropy, mean_token_accuracy, num_tokens), as its compute_loss records them."""
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(scored.positions).sum()
        entropy_sum, num_correct = gather(scored.entropy).sum(), gather(scored.top1).sum()
        metrics = self._metrics["train"]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if "attention_mask" in inputs:
            tokens = gather(inputs["attention_mask"].sum()).sum().item()
        else:  # padding-free rows: every position is a token
            tokens = gather(torch.tensor(inputs["position_ids"].size(1), device=scored.positions.device)).sum().item()
        self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
