"""The demo's preference data: replies to the demo questions, the chosen ones in a style SFT never taught.

A chosen reply is the right answer after "Sure! "; the rejected one is either the plain answer that the
SFT data teaches, or "Sure! " with a wrong fact. DPO (or ORPO, SimPO, a reward model) that learns from
these pairs moves the model's greedy answers toward "Sure! <the right answer>", which
``bench/preference_bench.py`` counts on the held-out questions; KTO gets the same replies one by one.
"""

from __future__ import annotations

import random

from tuiwiz.demo.build import ANIMALS, DEMO_SEED, NUMBERS, QUESTIONS, animal_facts, qa_pairs

STYLE = "Sure! "


def _wrong_answer(question: str, answer: str, rng: random.Random) -> str:
    """The same answer with a wrong fact in it: another animal's, or another sum."""
    for animal in ANIMALS:
        facts = animal_facts(animal)
        for q_template, a_template in QUESTIONS:
            if q_template.format(**facts) == question:
                # another animal's fact under this animal's name; one that shares the fact (two animals
                # live in the house) would make the rejected reply the chosen one
                wrongs = {a_template.format(**dict(animal_facts(other), a=facts["a"])) for other in ANIMALS}
                return rng.choice(sorted(wrongs - {answer}))
    stem, _, total = answer.rstrip(".").rpartition(" is ")  # "two plus three is five."
    return f"{stem} is {rng.choice([n for n in NUMBERS if n != total])}."


def _pairs(questions: list[tuple[str, str]], seed: str) -> list[dict]:
    """Every other pair rejects the plain answer (teaching the style), the others a wrong fact in the style
    (so that the facts after "Sure!" are judged too, not only the first words)."""
    rng = random.Random(f"{DEMO_SEED}-{seed}")
    records = []
    for index, (question, answer) in enumerate(questions):
        rejected = STYLE + _wrong_answer(question, answer, rng) if index % 2 else answer
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
