"""Checking a merge: the merged model's logits against base + adapter (peft) and the bare base, and the verdict."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .merge import MergePlan, RunOutput

FP32_TOLERANCE = 1e-4
HALF_TOLERANCE = 3e-2  # times max(1, largest reference logit): bf16/fp16 round at about 1e-2 relative
VERIFY_PROMPTS = ("Hello", "What sound does the cow make?", "The quick brown fox jumps over the lazy dog.")


def load_model(folder: Path, source: RunOutput, *, adapter: Path | None = None):
    """A model for inference on CPU, in its stored dtype; with ``adapter``, wrapped by peft."""
    import transformers

    kwargs: dict = {"dtype": "auto"}
    if source.is_classifier:
        labels = source.labels or ()
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _logits(model, tokenizer) -> list:
    import torch

    with torch.inference_mode():
        return [model(**tokenizer(text, return_tensors="pt")).logits.float() for text in VERIFY_PROMPTS]


def _largest_gap(first: list, second: list) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second))


def verify_merge(plan: MergePlan, merged: Path) -> tuple[float, float, float]:
    """(max_diff, changed_diff, tolerance): the merged model against base + adapter (peft) and the bare base.

    The two models are loaded one after the other; safetensors are memory-mapped, so their
    weights are page cache the kernel can drop, not private memory.
    """
    import gc

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.source.path)
    reference = load_model(plan.source.base_model, plan.source, adapter=plan.source.path)
    with_adapter = _logits(reference, tokenizer)
    with reference.disable_adapter():
        base = _logits(reference, tokenizer)
    dtype = next(reference.parameters()).dtype
    del reference
    gc.collect()
    merged_model = load_model(merged, plan.source)
    after = _logits(merged_model, tokenizer)
    del merged_model
    gc.collect()
    if dtype == torch.float32:
        tolerance = FP32_TOLERANCE
    else:
        tolerance = HALF_TOLERANCE * max(1.0, max(float(t.abs().max()) for t in with_adapter))
    return _largest_gap(after, with_adapter), _largest_gap(after, base), tolerance


def _judge(plan: MergePlan, max_diff: float, changed_diff: float, tolerance: float) -> None:
    """A merge that changes nothing, or not what the adapter does, is an error."""
    if not changed_diff > tolerance:  # also catches NaN
        raise UserError(
            f"the merged model equals the base (logits within {changed_diff:.3g}, tolerance {tolerance:.0e}): "
            f"the merge changed nothing; nothing was written",
            hint="if the adapter is untrained (its loss did not fall) there is nothing to merge; "
                 "otherwise report this with the run's adapter_config.json", kind="verify",
        )
    if not max_diff <= tolerance:
        raise UserError(
            f"the merged model does not match base + adapter: logits differ by up to {max_diff:.3g} "
            f"(tolerance {tolerance:.0e}); nothing was written",
            hint="this is a bug in the merge for this adapter; report it with the run's adapter_config.json",
            kind="verify",
        )
