"""Packing several examples into each row without letting them see each other (``data.packing: true``).

TRL packs best-fit-decreasing (``packing_strategy="bfd"``) and records each example's length in ``seq_lengths``. Its
collator then joins the whole batch into ONE row, position_ids restarted at each example, no attention_mask:

- flash attention reads the example boundaries from the ``cu_seq_lens`` it adds: isolated and cheap; kept as it is.
- sdpa and eager: transformers' mask helpers (masking_utils) turn restarted position_ids, with no attention_mask and
  no cache, into a block-diagonal causal mask. That isolates too, but over one row of batch * max_length tokens, so
  attention work and the materialized mask grow with (batch * max_length)^2: slower than not packing at all.
  ``PackedRowsCollator`` keeps each packed row its own batch row (batch, <= max_length), which gets the same
  block-diagonal mask per row.

TRL's other strategy, "wrapped", lets packed examples attend to each other: tuiwiz never uses it. Where isolation
cannot be had (the model's own code, a mask built without position_ids) packing is refused: ``check_isolation``
(and tuiwiz/run/preflight.py, for what the profile already tells).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tuiwiz.errors import UserError

# Their collator is TRL's (one flattened row with cu_seq_lens); every other implementation gets PackedRowsCollator.
FLASH = ("flash_attention_2", "flash_attention_3")
NO_PACKING = "set data.packing: false"


@dataclass
class PackedRowsCollator(DataCollatorForLanguageModeling):
    """Batches of packed rows kept as rows: input_ids and labels (batch, <= max_length), position_ids restarted at
    each example (padding at position 0), labels -100 at each example's start and on padding, NO attention_mask:
    any attention_mask, even all ones, turns transformers' packed-sequence detection off."""

    padding_free: bool = False
    return_position_ids: bool = True

    def torch_call(self, examples):
        if "seq_lengths" not in examples[0]:  # an unpacked dataset: a plain padded batch
            plain = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id,
                                                    pad_to_multiple_of=self.pad_to_multiple_of)
            return plain.torch_call(examples)
        batch = super().torch_call(examples)
        del batch["attention_mask"]
        # the last token of one example is not trained to predict the first of the next (as TRL's padding-free does)
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def use_packed_rows(trainer) -> None:
    """Give an SFTTrainer built with packing_strategy="bfd" the per-row collator. After construction: bfd turns
    TRL's padding-free mode on, which refuses a data_collator argument."""
    old = trainer.data_collator
    trainer.data_collator = PackedRowsCollator(pad_token_id=old.pad_token_id, pad_to_multiple_of=old.pad_to_multiple_of)


def check_isolation(model) -> str:
    """The attention implementation packed batches will meet, after making sure packed examples stay apart in
    ``model`` (peft's wrapper included). Raises UserError naming data.packing otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__module__.startswith("transformers."):
        raise UserError(
            f"data.packing needs the model's attention to keep packed examples apart, and {type(base).__name__} "
            "runs the model's own code (trust_remote_code), which tuiwiz cannot check",
            hint=f"{NO_PACKING}, or use a model whose architecture transformers ships (model.trust_remote_code: false)",
            field="data.packing", kind="profile",
        )
    implementation = base.config._attn_implementation
    if implementation in FLASH:
        return implementation
    problem = isolation_problem(model)
    if problem:
        raise UserError(
            f"data.packing would let packed examples attend to each other: {problem} "
            f"({base.config.model_type}, attention {implementation})",
            hint=f"{NO_PACKING}: this model's {implementation} attention would mix the packed examples",
            field="data.packing", kind="profile",
        )
    return implementation


class _MaskSeen(Exception):
    pass


@torch.no_grad()
def isolation_problem(model, lengths: tuple[int, ...] = (3, 4)) -> str | None:
    """Why ``model`` would not keep packed examples apart, or None when it does.

    Runs the model on one packed row (restarted position_ids, no attention_mask, no cache) as far as the first
    layer that takes a square mask, and checks that mask is block-diagonal causal: a few embeddings' worth of work,
    in any dtype. Some architectures build their mask without position_ids (OPT, BLOOM, MPT, ...) or get none.
    """
    total = sum(lengths)
    seen: list[torch.Tensor] = []

    def catch_mask(module, args, kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dim() == 4 and tuple(value.shape[-2:]) == (total, total):
                seen.append(value)
                raise _MaskSeen

    device = model.get_input_embeddings().weight.device
    input_ids = torch.arange(1, total + 1, device=device)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    handles = [m.register_forward_pre_hook(catch_mask, with_kwargs=True) for m in model.modules()]
    training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    except _MaskSeen:
        pass
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    if not seen:
        return "its layers get no attention mask for a packed row"
    mask = seen[0][0, 0].cpu()
    allowed = mask if mask.dtype == torch.bool else mask == 0  # eager adds 0 where allowed, a large negative elsewhere
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    expected = (example[:, None] == example[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    return None if torch.equal(allowed, expected) else "its attention mask does not separate the packed examples"


def drop_untrained(dataset):
    """``dataset`` (packed by TRL) without the examples left with no trained token, and how many went.

    TRL truncates packed examples to max_length and keeps those whose trained tokens were all cut off (it drops
    them only without packing): they would cost compute for nothing, and hide that no example fits.
    """
    dropped = sum(int((~_trained(rows["labels"], rows["seq_lengths"])).sum())
                  for rows in dataset.with_format("arrow").iter(batch_size=10_000))
    if not dropped:
        return dataset, 0

    def without_untrained(rows):
        out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
        keep = iter(_trained(rows["labels"], rows["seq_lengths"]).tolist())
        for ids, labels, lengths in zip(rows["input_ids"].to_pylist(), rows["labels"].to_pylist(),
                                        rows["seq_lengths"].to_pylist()):
            row: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
            start = 0
            for n in lengths:
                if next(keep):
                    row["input_ids"] += ids[start:start + n]
                    row["labels"] += labels[start:start + n]
                    row["seq_lengths"].append(n)
                start += n
            if row["seq_lengths"]:
                for key, value in row.items():
                    out[key].append(value)
        return out

    kept = dataset.with_format("arrow").map(without_untrained, batched=True, remove_columns=dataset.column_names)
    format = dict(dataset.format)  # as TRL left it
    format.update(format.pop("format_kwargs"))
    return kept.with_format(**format), dropped


def _trained(labels, seq_lengths):
    """Per packed example (in order) of a batch of rows: whether any of its labels past the first is trained."""
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.list_flatten(seq_lengths).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return np.zeros(0, dtype=bool)
    trained = pc.list_flatten(labels).to_numpy(zero_copy_only=False) != -100
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    trained[starts] = False  # an example's first label is never predicted (and the collator masks it)
    return np.add.reduceat(trained, starts) > 0
