"""Extractive question answering: exact match and token F1 with the official SQuAD v1.1 rules.

Both sides are normalised (lower case, punctuation and the articles a / an / the removed, whitespace collapsed);
F1 is over the bag of normalised tokens; each example scores its best gold answer; the means are in percent,
as the official `evaluate-v1.1.py` prints them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

from lmforge.evaluate.classification import check_lengths
from lmforge.evaluate.errors import EvaluationError

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's F1 of one prediction against one gold answer, over their normalised tokens (0 when none shared)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent (0..100), each the max over an example's gold answers (SQuAD v1.1)."""
    n = check_lengths(predictions, golds)
    em = f1 = 0.0
    for i, (pred, answers) in enumerate(zip(predictions, golds)):
        if isinstance(answers, str) or len(answers) == 0:
            raise EvaluationError(f"references[{i}] must be a non-empty list of gold answers, not {answers!r}")
        em += max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
        f1 += max(token_f1(pred, a) for a in answers)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


__all__ = ["normalize_answer", "squad_metrics", "token_f1"]
