"""Checking a merge: the merged model's logits against base + adapter (peft) and the bare base, and the verdict."""

from __future__ import annotations

from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge_plan import MergePlan
from tuiwiz.run.outputs import RunOutput

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


def streamed_model(folder: Path, source: RunOutput, *, adapter: Path | None = None):
    """As load_model, with the weights left on disk until each block runs (see streamed_model.py)."""
    import torch
    import transformers

    from tuiwiz.post.streamed_model import StreamedModel

    config = transformers.AutoConfig.from_pretrained(folder)
    if source.is_classifier:
        labels = source.labels or ()
        config.num_labels = len(labels)
        config.id2label, config.label2id = dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}
        model_class = transformers.AutoModelForSequenceClassification
    else:
        model_class = transformers.AutoModelForCausalLM
    dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def wrap(model):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter)

    return StreamedModel(folder, lambda: model_class.from_config(config, dtype=dtype),
                         wrap=wrap if adapter is not None else None)


def _logits(model, tokenizer) -> list:
    import torch

    with torch.inference_mode():
        # one padded batch: a streamed model reads its weights from disk once a forward pass
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        rows = [tokenizer(text)["input_ids"] for text in VERIFY_PROMPTS]
        longest = max(len(row) for row in rows)
        ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if logits.dim() == 2:  # a classifier: one row of label scores a prompt
            return list(logits)
        return [logits[i, :len(row)] for i, row in enumerate(rows)]  # the prompts' own positions


def _largest_gap(first: list, second: list) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second))


def verify_merge(plan: MergePlan, merged: Path) -> tuple[float, float, float]:
    """(max_diff, changed_diff, tolerance): the merged model against base + adapter (peft) and the bare base.

    The models are streamed from disk block by block (streamed_model.py), so the peak is about one
    block plus the adapter, as for the merge itself, not a whole model.
    """
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.source.path)
    reference = streamed_model(plan.source.base_model, plan.source, adapter=plan.source.path)
    with_adapter = _logits(reference, tokenizer)
    with reference.model.disable_adapter():
        base = _logits(reference, tokenizer)
    dtype = next(reference.model.parameters()).dtype
    del reference
    after = _logits(streamed_model(merged, plan.source), tokenizer)
    if dtype == torch.float32:
        tolerance = FP32_TOLERANCE
    else:
        tolerance = HALF_TOLERANCE * max(1.0, max(float(t.abs().max()) for t in with_adapter))
    return _largest_gap(after, with_adapter), _largest_gap(after, base), tolerance


def judge_merge(plan: MergePlan, max_diff: float, changed_diff: float, tolerance: float) -> None:
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
