"""Every training task tuiwiz knows, in one table.

A task's name is the profile's ``task``; what depends on the task (which model head loads, which
data formats it takes, whether a reference model is in memory, what the estimate counts, what the
monitor draws and what post-training offers) reads this table instead of spelling names again.
Each task has its recipe in ``tuiwiz/train/recipes/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["causal", "sequence_score", "seq2seq"]  # the Auto* class the recipe loads
Afterwards = Literal["chat", "classify", "score", "text2text"]  # the screen a finished run offers


@dataclass(frozen=True)
class Task:
    name: str  # the profile's task
    title: str  # how the screens and messages name it
    formats: tuple[str, ...]  # data formats it trains on (tuiwiz.data.datasets), the first sniffed first
    model: ModelKind
    afterwards: Afterwards
    # Sequences one example puts through the model per step: 2 for a chosen/rejected pair.
    sequences_per_example: int = 1
    # A frozen reference model scores each sequence too (none under adapters: the base with the
    # adapter disabled is the reference, in the same weights).
    reference: bool = False
    generates: bool = False  # samples completions during training (GRPO)
    packs: bool = False  # data.packing applies
    # training.loss_head applies: the recipe can score from the model's whole logits instead of TRL's fused head
    whole_logits: bool = False
    trl_experimental: bool = False  # its trainer lives in trl.experimental (TRL 1.x)
    metrics: tuple[str, ...] = ()  # the logged numbers the monitor draws, beyond the loss

    @property
    def preference(self) -> bool:
        """Trained on preferences (pairs or labelled completions) rather than targets."""
        return self.name in ("dpo", "kto", "orpo", "simpo")


DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sft", "supervised fine-tuning", ("messages", "alpaca", "text"), "causal", "chat", packs=True,
         whole_logits=True),
    Task("pretrain", "continued pretraining", ("text",), "causal", "chat", packs=True, whole_logits=True),
    Task("classification", "classification", ("classification",), "sequence_score", "classify"),
    Task("reward", "reward model", ("preference",), "sequence_score", "score", sequences_per_example=2,
         metrics=("accuracy", "margin", "eval_accuracy")),
    Task("dpo", "DPO", ("preference",), "causal", "chat", sequences_per_example=2, reference=True,
         metrics=DPO_METRICS),
    Task("kto", "KTO", ("unpaired", "preference"), "causal", "chat", reference=True,
         metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "kl")),
    Task("orpo", "ORPO", ("preference",), "causal", "chat", sequences_per_example=2, trl_experimental=True,
         metrics=DPO_METRICS + ("nll_loss", "log_odds_ratio")),
    Task("simpo", "SimPO", ("preference",), "causal", "chat", sequences_per_example=2, trl_experimental=True,
         metrics=DPO_METRICS),
    Task("grpo", "GRPO", ("prompt",), "causal", "chat", generates=True,
         metrics=("reward", "reward_std", "completions/mean_length")),
    Task("seq2seq", "encoder-decoder (text to text)", ("seq2seq",), "seq2seq", "text2text",
         metrics=("eval_exact_match", "eval_rougeL")),  # from generations in evaluation: EvalEvent fields
)}

TASK_NAMES = tuple(TASKS)
