"""A dataset's token lengths, summarised for the planner: what the recommender and the memory
estimate need to choose a sequence length and count what truncation would cut."""

from __future__ import annotations

import math
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
