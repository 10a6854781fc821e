"""The model DPO and KTO train, and the frozen reference they compare it with.

Under an adapter (LoRA, QLoRA, IA3, ...) the trainer is given the base model and the peft config:
TRL puts the adapter on, and its reference is the same weights with the adapter disabled, so nothing
is loaded twice. (Given a model that already carries the adapter, TRL 1.x would copy it into a second,
"ref" adapter instead.) Under full fine-tuning and BitFit every weight may move, so the reference is a
second, frozen copy loaded from the same folder, unless ``precompute_ref_log_probs`` scores the data
with the policy before its first step and no reference stays in memory at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuiwiz.methods import METHODS
from tuiwiz.plan.reference_scoring import reference_scoring
from tuiwiz.profile.schema import Profile
from tuiwiz.train.modeling import (
    PEFT_TASK_TYPES,
    Precision,
    TrainableModel,
    apply_method,
    count_parameters,
    load_model,
    peft_config,
    prepare_quantized,
    wrapped_modules,
)


@dataclass(frozen=True)
class Policy:
    """The model handed to the trainer, and the adapter the trainer puts on it (None: train it as it is)."""

    model: Any
    peft_config: Any | None
    dtype: str  # what the weights were loaded in


def load_policy(model_path: str, profile: Profile, precision: Precision, tokenizer, total_steps: int) -> Policy:
    import transformers

    transformers.set_seed(profile.training.seed)  # adapter weights are drawn when TRL creates them
    model = load_model(model_path, profile, precision, None)
    dtype = str(model.dtype).removeprefix("torch.")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not METHODS[profile.method.type].uses_peft:
        return Policy(apply_method(model, profile, total_steps, model_path), None, dtype)  # full, BitFit
    if profile.method.type == "qlora":
        model = prepare_quantized(model, profile)  # 16-bit unless method.upcast_non_quantized
    return Policy(model, peft_config(profile, PEFT_TASK_TYPES["causal"], total_steps, model_path), dtype)


def load_reference(model_path: str, profile: Profile, precision: Precision, policy: Policy):
    """A frozen copy of the starting weights, or None where the trainer needs none in memory."""
    if policy.peft_config is not None or reference_scoring(profile).precompute:
        return None
    reference = load_model(model_path, profile, precision, None).eval()
    reference.requires_grad_(False)
    return reference


def trained_model(trainer, policy: Policy) -> TrainableModel:
    """What run_start reports of the model the trainer trains (the adapter on, under peft)."""
    total, trainable = count_parameters(trainer.model)
    return TrainableModel(trainer.model, policy.dtype, total, trainable, wrapped_modules(trainer.model))
