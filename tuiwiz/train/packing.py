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
(and tuiwiz/run/preflight.py, for what the profile already tells). Flash attention gets no mask to read: the
batches TRL's collator builds are run through the model at setup (``check_packed_batches``), and packing is
refused if an example's logits packed differ from its own.
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


# Example lengths of the run-time check (``packed_difference``): uneven, and the row's later examples are the ones
# a leak would reach
CHECK_LENGTHS = (7, 11, 5)
# Packed examples are apart when their logits differ from the examples' own by at most this share of what a leak
# (the same row read as one sequence) changes them: rounding in any dtype stays far below it, a leak reaches it whole
LEAK_SHARE = 0.1


@torch.no_grad()
def packed_difference(model, collator, autocast=None, lengths: tuple[int, ...] = CHECK_LENGTHS) -> tuple[float, float]:
    """How far each example's logits move when packed as ``collator`` packs it, against the example run alone:
    (packed, leaked), the largest absolute logit differences over the examples after the first, packed as the
    collator builds the batch and read as one sequence (no position_ids restarted: what a leak gives on this model).

    Runs ``model`` as training would meet a packed batch (``autocast``: the trainer's), on a few dozen tokens of two
    packed rows: cheap next to loading the model, and on the very attention kernel the run uses.
    """
    import contextlib

    autocast = autocast or contextlib.nullcontext
    embeddings = model.get_input_embeddings()
    device, vocab = embeddings.weight.device, embeddings.num_embeddings
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(4, max(5, min(vocab, 1000)), (n,), generator=generator).tolist() for n in lengths]
    rows = [examples[:2], examples[2:]]  # two packed rows, as a batch of two meets the collator
    features = [{"input_ids": [t for e in row for t in e], "labels": [t for e in row for t in e],
                 "seq_lengths": [len(e) for e in row]} for row in rows]
    batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
             for key, value in collator(features).items() if key != "labels"}
    training = model.training
    model.eval()
    try:
        with autocast():
            packed = model(**batch, use_cache=False).logits.float()
            alone = [model(input_ids=torch.tensor([e], device=device), use_cache=False).logits[0].float()
                     for e in examples]
            as_one = [model(input_ids=batch["input_ids"][i:i + 1], use_cache=False).logits[0].float()
                      for i in range(batch["input_ids"].shape[0])]
    finally:
        model.train(training)
    # where each example sits in the batch: one flattened row (padding-free) or a row each
    places, flat, start = [], packed.shape[0] == 1, 0
    for r, row in enumerate(rows):
        start = start if flat else 0  # flattened: the rows follow each other in one
        for e in row:
            places.append((0 if flat else r, start, len(e)))
            start += len(e)
    worst_packed = worst_leaked = 0.0
    for i, (row, start, n) in enumerate(places):
        if start == 0:  # a row's first example sees nothing before it, leak or not
            continue
        mine = alone[i]
        worst_packed = max(worst_packed, (packed[row, start:start + n] - mine).abs().max().item())
        worst_leaked = max(worst_leaked, (as_one[row][start:start + n] - mine).abs().max().item())
    return worst_packed, worst_leaked


def check_packed_batches(trainer, attention: str) -> str | None:
    """Make sure packed examples stay apart in the batches ``trainer`` will train on, by running them
    (``packed_difference``) where no mask can be read: flash attention, cut at the collator's cu_seq_lens.
    Raises UserError naming data.packing when they meet; returns the line for the run's log, None where not run
    (sdpa and eager: ``check_isolation`` read the mask itself)."""
    if attention not in FLASH:
        return None
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # the weights are sharded until training starts: no forward to run here
        return (f"packing: {attention} keeps packed examples apart by TRL's cu_seq_lens; not run-checked under "
                "DeepSpeed ZeRO-3, whose weights are sharded until training starts")
    accelerator = getattr(trainer, "accelerator", None)
    packed, leaked = packed_difference(trainer.model, trainer.data_collator,
                                       accelerator.autocast if accelerator is not None else None)
    if packed > LEAK_SHARE * leaked:
        raise UserError(
            f"data.packing would let packed examples attend to each other: with {attention}, an example's logits "
            f"packed differ from its own by {packed:.3g}, against {leaked:.3g} when the row is read as one sequence",
            hint=f"{NO_PACKING}, or model.attn_implementation: sdpa",
            field="data.packing", kind="profile",
        )
    return (f"packing: {attention} keeps packed examples apart: checked on this model, largest logit difference "
            f"packed vs alone {packed:.2g} (a leak: {leaked:.2g})")


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
