"""What evaluating generated text reports: exact match after SQuAD's normalisation, and ROUGE-L by Google's
rouge-score package. Light at import (the package is imported when a score is asked for)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The share of predictions equal to their reference after normalise_answer."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalise_answer(p) == normalise_answer(r) for p, r in pairs) / len(pairs) if pairs else 0.0


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of words), by Google's rouge-score package."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def decode(ids, tokenizer) -> list[str]:
    """Token ids (-100 where the Trainer padded) as text, special tokens dropped."""
    import numpy as np

    ids = np.where(np.asarray(ids) < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def text_metrics(prediction, tokenizer) -> dict[str, float]:
    """exact_match and rougeL of the generated texts against the targets."""
    predictions = decode(prediction.predictions, tokenizer)
    references = decode(prediction.label_ids, tokenizer)
    return {"exact_match": exact_match(predictions, references), "rougeL": rouge_l(predictions, references)}
