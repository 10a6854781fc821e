"""What bench/loss_head.py and bench/lora_speed.py share: the packed batch they time a training step on, and
step times taken several ways in alternating rounds within one process (the order flips every round, so a
machine that slows down over the run weighs on every way alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

ROWS, ROW_LENGTH = 2, 448  # what `tuiwiz recommend` packs for bench/sft_speed.py's data
EXAMPLES = (100, 120, 90, 138)  # the lengths packed into each row


def packed_batch(vocab: int) -> dict:
    """ROWS rows of random tokens, position_ids restarted at each packed example as tuiwiz packs them."""
    import torch

    ids = torch.randint(0, vocab, (ROWS, ROW_LENGTH), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(n) for n in EXAMPLES]).repeat(ROWS, 1)[:, :ROW_LENGTH]
    return {"input_ids": ids, "position_ids": positions, "labels": ids.clone()}


def alternating_ms(ways: Sequence[str], rounds: int, steps: int, step: Callable[[str], object]) -> dict:
    """``step(way)`` timed ``steps`` times a round for each way: {"ms": each round's milliseconds a step,
    "median_ms": their medians}, by way."""
    times: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(rounds):
        for way in (ways if r % 2 == 0 else ways[::-1]):
            start = time.perf_counter()
            for _ in range(steps):
                step(way)
            times[way].append(round((time.perf_counter() - start) / steps * 1000, 1))
    return {"ms": times, "median_ms": {way: statistics.median(t) for way, t in times.items()}}


def ms_cells(point: dict, ways: Sequence[str]) -> list[str]:
    """A docs table's cells: each way's median milliseconds and range."""
    return [f"{point['median_ms'][way]:.0f} ({min(point['ms'][way]):.0f} to {max(point['ms'][way]):.0f})"
            for way in ways]
