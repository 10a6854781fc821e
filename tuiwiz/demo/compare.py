"""The demo's GRPO task: "Which is bigger, seven or three?" with its answer, "seven", checked by exact match.

One skill shared by every prompt (the order of the number words), so what GRPO reinforces on the
questions it samples carries over to questions it never saw. Every reply is one of the two words in the
question, so a model that has only learnt the format is right half the time and the reward always tells
its samples apart. The unordered pairs of number words are dealt into three disjoint parts, each pair with
both of its orders in the same part: SFT's (compare-sft, which teaches the format and starts on the
skill), GRPO's (compare) and the held-out part (compare-heldout), which neither trains on.
"""

from __future__ import annotations

import random
import re
from itertools import combinations

from tuiwiz.demo.build import DEMO_SEED, NUMBERS

QUESTION = "Which is bigger, {a} or {b}?"
_ASKED = re.compile(re.escape(QUESTION).replace(r"\{a\}", r"(\w+)").replace(r"\{b\}", r"(\w+)"))
# the share of the pairs in each part, in this order (the rest is held out)
SFT_SHARE, GRPO_SHARE = 0.25, 0.5


def _parts() -> dict[str, list[tuple[int, int]]]:
    pairs = list(combinations(range(len(NUMBERS)), 2))
    random.Random(f"{DEMO_SEED}-compare").shuffle(pairs)
    sft_end = round(len(pairs) * SFT_SHARE)
    grpo_end = sft_end + round(len(pairs) * GRPO_SHARE)
    return {"compare-sft": pairs[:sft_end], "compare": pairs[sft_end:grpo_end], "compare-heldout": pairs[grpo_end:]}


def questions(name: str) -> list[dict]:
    """Both orders of each pair of the part: {"prompt", "answer"}, shuffled."""
    records = []
    for x, y in _parts()[name]:
        for a, b in ((x, y), (y, x)):
            records.append({"prompt": QUESTION.format(a=NUMBERS[a], b=NUMBERS[b]), "answer": NUMBERS[max(a, b)]})
    random.Random(f"{DEMO_SEED}-{name}").shuffle(records)
    return records


def the_two_words(question: str) -> tuple[str, str]:
    """The number words a question compares, in its order."""
    found = _ASKED.fullmatch(question)
    if found is None:
        raise ValueError(f"not a demo:compare question: {question!r}")
    return found.group(1), found.group(2)


def records(name: str) -> list[dict]:
    if name == "compare-sft":  # instruction/output pairs, as the alpaca demo data
        return [{"instruction": r["prompt"], "input": "", "output": f"{r['answer']}."} for r in questions(name)]
    return questions(name)
