"""A dataset's token lengths, summarised for the planner: what the recommender and the memory
estimate need to choose a sequence length and count what truncation would cut."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from tuiwiz.errors import UserError


@dataclass(frozen=True)
class DataStats:
    """Token lengths of a dataset's examples (after the chat template, with special tokens)."""

    rows: int
    p50: int
    p95: int
    max: int
    lengths: tuple[int, ...] = ()  # every example's length when known; makes truncated_at exact
    total_tokens: int | None = None
    source: str | None = None  # e.g. "train.jsonl, tokenizer of Qwen/Qwen2.5-0.5B"

    @classmethod
    def from_lengths(cls, lengths, source: str | None = None) -> DataStats:
        ordered = sorted(int(n) for n in lengths)
        if not ordered:
            raise UserError("the dataset has no examples", hint="check the data file and its format", kind="data")

        def pct(q: float) -> int:
            return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

        return cls(rows=len(ordered), p50=pct(0.5), p95=pct(0.95), max=ordered[-1], lengths=tuple(ordered),
                   total_tokens=sum(ordered), source=source)

    @classmethod
    def assumed(cls, seq_len: int) -> DataStats:
        """A stand-in when only a sequence length is known (``--seq-len``)."""
        return cls(rows=0, p50=seq_len, p95=seq_len, max=seq_len, source="assumed")

    def truncated_at(self, max_len: int) -> int:
        """How many examples are longer than ``max_len`` (at least an estimate without ``lengths``)."""
        if self.lengths:
            return sum(1 for n in self.lengths if n > max_len)
        if self.max <= max_len:
            return 0
        if self.p95 <= max_len:
            return max(1, round(0.05 * self.rows))  # somewhere in the top 5%
        return round((0.5 if self.p50 > max_len else 0.05) * self.rows)

    def work(self, max_length: int, micro_batch: int, seed: int = 0) -> Work | None:
        """Tokens an epoch computes, padded or packed (None without every example's length).

        Unpacked: shuffled batches of ``micro_batch`` (the Trainer samples at random), each padded to its
        longest example. Packed: rows of ``max_length`` filled best-fit decreasing, as TRL's "bfd" does.
        Examples longer than ``max_length`` count as truncated to it.
        """
        if not self.lengths:
            return None
        lengths = [min(n, max_length) for n in self.lengths]
        shuffled = lengths[:]
        random.Random(seed).shuffle(shuffled)
        padded = sum(len(batch) * max(batch) for batch in
                     (shuffled[i:i + micro_batch] for i in range(0, len(shuffled), micro_batch)))
        free: list[int] = []  # room left in each row, kept sorted: best fit is the smallest that holds it
        for n in sorted(lengths, reverse=True):
            i = bisect.bisect_left(free, n)
            if i == len(free):
                bisect.insort(free, max_length - n)
            else:
                bisect.insort(free, free.pop(i) - n)
        return Work(real=sum(lengths), padded=padded, packed_rows=len(free), packed=len(free) * max_length)


@dataclass(frozen=True)
class Work:
    """Tokens one epoch computes: the examples' own, in padded batches, and in packed rows."""

    real: int
    padded: int
    packed_rows: int
    packed: int

    @property
    def packing_saves(self) -> float:
        """The share of the padded epoch's tokens that packing does not compute."""
        return max(0.0, 1 - self.packed / self.padded) if self.padded else 0.0
