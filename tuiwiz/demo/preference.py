"""The demo's preference data: replies to the demo questions, the chosen ones in a style SFT never taught.

A chosen reply is the right answer after "Sure! "; the rejected one is either the plain answer that the
SFT data teaches, or "Sure! " with a wrong fact. DPO (or ORPO, SimPO, a reward model) that learns from
these pairs moves the model's greedy answers toward "Sure! <the right answer>", which
``bench/demo_tasks.py`` counts on the held-out questions; KTO gets the same replies one by one.
"""

from __future__ import annotations

import random

from tuiwiz.demo.build import ANIMALS, DEMO_SEED, QUESTIONS, animal_facts, qa_pairs

STYLE = "Sure! "


def _wrong_answer(question: str, answer: str, rng: random.Random) -> str | None:
    """The same answer with another animal's fact in it, or None when no template matches (sums)."""
    for animal in ANIMALS:
        facts = animal_facts(animal)
        for q_template, a_template in QUESTIONS:
            if q_template.format(**facts) == question:
                other = rng.choice([a for a in ANIMALS if a_template.format(**animal_facts(a)) != answer])
                wrong = dict(animal_facts(other), a=facts["a"])
                return a_template.format(**wrong)
    return None


def _pairs(questions: list[tuple[str, str]], seed: str) -> list[dict]:
    rng = random.Random(f"{DEMO_SEED}-{seed}")
    records = []
    for index, (question, answer) in enumerate(questions):
        wrong = _wrong_answer(question, answer, rng) if index % 3 == 2 else None
        rejected = STYLE + wrong if wrong else answer
        records.append({"prompt": question, "chosen": STYLE + answer, "rejected": rejected})
    rng.shuffle(records)
    return records


def records(name: str) -> list[dict]:
    train, held_out = qa_pairs()
    if name == "preference":
        return _pairs(train, name)
    if name == "preference-heldout":
        return _pairs(held_out, name)
    if name == "kto":
        unpaired = []
        for pair in _pairs(train, "preference"):
            unpaired.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
            unpaired.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
        return unpaired
    raise KeyError(name)
