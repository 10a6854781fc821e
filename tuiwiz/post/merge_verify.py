"""Checking a merge: the merged model's logits against base + adapter (peft) and the bare base, and the verdict."""

from __future__ import annotations

from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge_plan import MergePlan
from tuiwiz.run.outputs import RunOutput
from tuiwiz.tasks import TASKS

# verify_merge scales both by max(1, largest reference logit): the merged weight rounds where peft adds two
# products, so the gap grows with the logits (the random demo T5's pass 50).
FP32_TOLERANCE = 1e-4
HALF_TOLERANCE = 3e-2  # bf16/fp16 round at about 1e-2 relative
VERIFY_PROMPTS = ("Hello", "What sound does the cow make?", "The quick brown fox jumps over the lazy dog.")


def model_class(source: RunOutput):
    """The transformers Auto class of a run's model: a classifier, an encoder-decoder or a causal LM."""
    import transformers

    if source.is_classifier:
        return transformers.AutoModelForSequenceClassification
    task = TASKS.get(source.task)
    if task is not None and task.model == "seq2seq":
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def load_model(folder: Path, source: RunOutput, *, adapter: Path | None = None):
    """A model for inference on CPU, in its stored dtype; with ``adapter``, wrapped by peft."""
    kwargs: dict = {"dtype": "auto"}
    if source.is_classifier:
        labels = source.labels or ()
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
    model = model_class(source).from_pretrained(folder, **kwargs)
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
    auto_class = model_class(source)
    dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def wrap(model):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter)

    return StreamedModel(folder, lambda: auto_class.from_config(config, dtype=dtype),
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
        logits = model(input_ids=ids, attention_mask=mask, **_decoder_inputs(model, ids)).logits.float()
        if logits.dim() == 2:  # a classifier: one row of label scores a prompt
            return list(logits)
        return [logits[i, :len(row)] for i, row in enumerate(rows)]  # the prompts' own positions


def _decoder_inputs(model, ids) -> dict:
    """An encoder-decoder's logits come from its decoder: it reads the prompts again, after the start token
    (any text would do; both models of a comparison get the same)."""
    import torch

    config = model.config
    if not getattr(config, "is_encoder_decoder", False):
        return {}
    start = torch.full((ids.shape[0], 1), config.decoder_start_token_id, dtype=ids.dtype)
    return {"decoder_input_ids": torch.cat([start, ids[:, :-1]], dim=1)}


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
    scale = max(1.0, max(float(t.abs().max()) for t in with_adapter))
    tolerance = (FP32_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE) * scale
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
