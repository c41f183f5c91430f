"""Metrics of generated text: BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score) and exact match.

References are one string per example or a list of strings per example (several acceptable outputs; the
number may vary). Scales follow the libraries: BLEU and chrF in 0..100 (sacrebleu), ROUGE F-measures and
exact-match rates in 0..1. Chinese (and other CJK text) needs its own tokenization: sacrebleu's "zh" tokenizer
for BLEU, and characters for ROUGE, whose default tokenizer keeps only [a-z0-9] runs and so drops CJK text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from lmforge.evaluate.classification import check_lengths
from lmforge.evaluate.errors import EvaluationError

References = Sequence[str] | Sequence[Sequence[str]]
"""One reference string per example, or a list of reference strings per example."""

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


def reference_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    """The references as a list of reference strings per example, checked against the predictions."""
    check_lengths(predictions, references)
    out = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise EvaluationError(f"predictions[{i}] is {type(pred).__name__}, not a string")
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise EvaluationError(f"references[{i}] must be a string or a non-empty list of strings, not {refs!r}")
        out.append(refs)
    return out


def bleu_tokenizer(references: list[list[str]]) -> str:
    """sacrebleu's tokenizer for these references: "zh" when any holds CJK characters, else "13a" (its default)."""
    return "zh" if any(has_cjk(r) for refs in references for r in refs) else "13a"


def _reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream j holds every example's j-th reference (None where an example has fewer)."""
    most = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(most)]


def bleu(predictions: Sequence[str], references: References, tokenize: str | None = None) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu, 0..100) with its n-gram precisions (percent), brevity penalty and lengths.

    `tokenize`: a sacrebleu tokenizer name; None picks "zh" when a reference holds CJK characters, else "13a".
    """
    from sacrebleu.metrics import BLEU

    refs = reference_lists(predictions, references)
    tokenize = tokenize or bleu_tokenizer(refs)
    try:
        metric = BLEU(tokenize=tokenize)
    except (KeyError, ValueError, RuntimeError) as error:
        raise EvaluationError(f"tokenize={tokenize!r} is not a sacrebleu tokenizer: {error}") from None
    score = metric.corpus_score(list(predictions), _reference_streams(refs))
    return {"bleu": float(score.score), "precisions": [float(p) for p in score.precisions], "bp": float(score.bp),
            "sys_len": int(score.sys_len), "ref_len": int(score.ref_len), "tokenize": tokenize}


def chrf(predictions: Sequence[str], references: References, word_order: int = 0) -> dict[str, float]:
    """Corpus chrF (sacrebleu, 0..100; chrF++ with `word_order=2`). Character n-grams need no tokenizer."""
    from sacrebleu.metrics import CHRF

    refs = reference_lists(predictions, references)
    score = CHRF(word_order=word_order).corpus_score(list(predictions), _reference_streams(refs))
    return {"chrf": float(score.score)}


def _normalize(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace runs as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(predictions: Sequence[str], references: References, normalize: bool = True) -> float:
    """The fraction of predictions equal to one of their references (0..1).

    `normalize=True` compares NFKC, case-folded, whitespace-collapsed texts; False compares the texts with
    surrounding whitespace stripped only.
    """
    refs = reference_lists(predictions, references)
    clean = _normalize if normalize else str.strip
    hits = sum(clean(p) in {clean(r) for r in options} for p, options in zip(predictions, refs))
    return hits / len(refs)


def rouge_metrics(predictions: Sequence[str], references: References,
                  chars: bool | None = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (rouge-score; the best reference of each example) and the exact-match rate
    (texts compared with surrounding whitespace stripped).

    `chars=False`: over rouge-score's stemmed words; True: over characters (`CharacterTokens`); None: per example,
    over characters when a reference has CJK text, else over words.
    """
    from rouge_score import rouge_scorer

    refs = reference_lists(predictions, references)
    types = ["rouge1", "rouge2", "rougeL"]
    words = rouge_scorer.RougeScorer(types, use_stemmer=True)
    characters = rouge_scorer.RougeScorer(types, tokenizer=CharacterTokens())
    totals = dict.fromkeys(types, 0.0)
    for pred, options in zip(predictions, refs):
        by_chars = any(has_cjk(r) for r in options) if chars is None else chars
        for key, score in (characters if by_chars else words).score_multi(options, pred).items():
            totals[key] += score.fmeasure
    out = {key: totals[key] / len(refs) for key in types}
    out["exact_match"] = exact_match(predictions, refs, normalize=False)
    return out


def generation_metrics(predictions: Sequence[str], references: References) -> dict[str, float]:
    """BLEU and chrF (0..100), ROUGE-1/2/L (0..1, characters for CJK references) and the normalised exact-match
    rate (0..1, see `exact_match`) together."""
    refs = reference_lists(predictions, references)
    rouge = rouge_metrics(predictions, refs, chars=None)
    return {"bleu": bleu(predictions, refs)["bleu"], "chrf": chrf(predictions, refs)["chrf"],
            **{key: rouge[key] for key in ("rouge1", "rouge2", "rougeL")},
            "exact_match": exact_match(predictions, refs, normalize=True)}


__all__ = ["CharacterTokens", "References", "bleu", "bleu_tokenizer", "chrf", "exact_match", "generation_metrics",
           "has_cjk", "reference_lists", "rouge_metrics"]
