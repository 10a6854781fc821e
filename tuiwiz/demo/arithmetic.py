"""The demo's GRPO data: "What is two plus three?" with its answer, "five", checked by exact match.

The questions are the sums the alpaca demo data teaches (in number words, as the demo tokenizer knows
them), so GRPO starts from a model that SFT on demo:alpaca half taught. The sums SFT never saw (those
the alpaca data holds out) are left out: their answers never occur in its replies. Of the sums SFT
trained on, every fifth is held out of GRPO (demo:arithmetic-heldout), to measure whether what GRPO
reinforces carries over to prompts it never sampled.
"""

from __future__ import annotations

import random

from tuiwiz.demo.build import DEMO_SEED, NUMBERS, qa_pairs

HELD_OUT_EVERY = 5


def _sums() -> list[dict]:
    train, _ = qa_pairs()
    records = []
    for question, answer in train:
        if " plus " in question:
            records.append({"prompt": question, "answer": answer.rstrip(".").rsplit(" ", 1)[1]})
    assert all(r["answer"] in NUMBERS for r in records)
    return records


def records(name: str) -> list[dict]:
    sums = _sums()
    if name == "arithmetic":
        chosen = [r for i, r in enumerate(sums) if i % HELD_OUT_EVERY != 2]
    elif name == "arithmetic-heldout":
        chosen = [r for i, r in enumerate(sums) if i % HELD_OUT_EVERY == 2]
    else:
        raise KeyError(name)
    random.Random(f"{DEMO_SEED}-{name}").shuffle(chosen)
    return chosen
