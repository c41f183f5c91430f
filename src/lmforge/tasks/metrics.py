"""Task metrics, from the libraries that define them: scikit-learn, seqeval, rouge-score, and the official
SQuAD v1.1 evaluation formulas (answer normalisation, token F1, max over the gold answers)."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence


def classification_metrics(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (and, with two classes, the F1 of class 1), via scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score

    out = {"accuracy": float(accuracy_score(gold, pred)),
           "macro_f1": float(f1_score(gold, pred, average="macro", labels=list(range(num_labels)), zero_division=0))}
    if num_labels == 2:
        out["f1"] = float(f1_score(gold, pred, average="binary", pos_label=1, zero_division=0))
    return out


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation and the mean squared error."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    constant = gold.std() == 0 or pred.std() == 0
    return {"pearson": 0.0 if constant else float(pearsonr(gold, pred)[0]),
            "spearman": 0.0 if constant else float(spearmanr(gold, pred)[0]),
            "mse": float(((gold - pred) ** 2).mean())}


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL rules) and token accuracy over BIO tag lists."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return {"entity_precision": float(precision_score(gold, pred, zero_division=0)),
            "entity_recall": float(recall_score(gold, pred, zero_division=0)),
            "entity_f1": float(f1_score(gold, pred, zero_division=0)),
            "token_accuracy": correct / max(tokens, 1)}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the max over an example's gold answers (SQuAD v1.1)."""
    em = f1 = 0.0
    for pred, answers in zip(predictions, golds):
        em += max(float(normalize_answer(pred) == normalize_answer(a)) for a in answers)
        f1 += max(_token_f1(pred, a) for a in answers)
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
"""Chinese, Japanese and Korean characters (rouge-score's tokenizer keeps only [a-z0-9] runs: it drops them)."""


def has_cjk(text: str) -> bool:
    """Whether `text` holds Chinese, Japanese or Korean characters."""
    return _CJK.search(text) is not None


class CharacterTokens:
    """rouge-score tokenizer over characters: each letter, digit or CJK character (lower-cased) is a token."""

    def tokenize(self, text: str) -> list[str]:
        """The alphanumeric characters of `text`, lower-cased (punctuation and spaces dropped, as rouge-score does)."""
        return [ch for ch in text.lower() if ch.isalnum()]


def rouge_metrics(predictions: Sequence[str], references: Sequence[str],
                  chars: bool | None = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (rouge-score) and the exact-match rate (stripped texts).

    `chars=False`: over rouge-score's stemmed words; True: over characters (`CharacterTokens`); None: per pair,
    over characters when its reference has CJK text, else over words.
    """
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    words = rouge_scorer.RougeScorer(types, use_stemmer=True)
    characters = rouge_scorer.RougeScorer(types, tokenizer=CharacterTokens())
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references):
        by_chars = has_cjk(ref) if chars is None else chars
        for key, score in (characters if by_chars else words).score(ref, pred).items():
            totals[key] += score.fmeasure
    n = max(len(predictions), 1)
    out = {key: totals[key] / n for key in types}
    out["exact_match"] = sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / n
    return out
