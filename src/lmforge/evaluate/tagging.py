"""Entity-level scores of tag sequences (NER, chunking), computed by seqeval.

An entity is a typed span of tags. Two modes, as seqeval has them:
- "default" (CoNLL-2000's conlleval rules): lenient decoding; an I-X that follows O or another type starts an
  entity, so "O I-PER I-PER" holds one PER entity; the scheme is not used.
- "strict": spans are decoded by the tagging `scheme` (IOB2 by default: an entity must begin with B-), so an
  I-X with no B-X before it is no entity at all; a prediction counts only when its span and type both match.
Precision, recall and F1 are micro averages over entities; "macro_f1" is the mean of the per-type F1s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from lmforge.evaluate.classification import check_lengths
from lmforge.evaluate.errors import EvaluationError

SCHEME_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOE1": "IE", "IOE2": "IE", "IOBES": "BIES", "BILOU": "BILU"}
"""The tag prefixes of each tagging scheme of seqeval (besides "O")."""

_DEFAULT_PREFIXES = "BIES"
"""The prefixes seqeval's default (conlleval) decoding reads."""


def _check_tags(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], prefixes: str) -> int:
    """The number of tokens, after checking sentence counts, per-sentence lengths and the form of every tag."""
    check_lengths(pred, gold, what="sentences")
    form = re.compile(rf"(?:[{prefixes}]-.+|O)")
    tokens = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if isinstance(g, str) or isinstance(p, str):
            raise EvaluationError(f"sentence {i} is a string; give each sentence as a list of tags")
        if len(g) != len(p):
            raise EvaluationError(f"sentence {i}: predictions has {len(p)} tags, references has {len(g)}")
        for side, tags in (("references", g), ("predictions", p)):
            for j, tag in enumerate(tags):
                if not isinstance(tag, str) or form.fullmatch(tag) is None:
                    raise EvaluationError(f"sentence {i}, token {j} of the {side}: {tag!r} is not a tag of the "
                                          f"form O or {'/'.join(prefixes)}-TYPE")
        tokens += len(g)
    if tokens == 0:
        raise EvaluationError("every sentence is empty: nothing to score")
    return tokens


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  mode: Literal["default", "strict"] = "default", scheme: str = "IOB2") -> dict[str, Any]:
    """Entity precision / recall / F1 (micro), macro F1, per-type scores and token accuracy, as seqeval gives
    them in `mode` ("default": conlleval rules; "strict": spans by `scheme`, one of `SCHEME_PREFIXES`)."""
    from seqeval import scheme as schemes
    from seqeval.metrics import sequence_labeling, v1

    if mode not in ("default", "strict"):
        raise EvaluationError(f"mode must be 'default' or 'strict', not {mode!r}")
    if scheme not in SCHEME_PREFIXES:
        raise EvaluationError(f"scheme must be one of {sorted(SCHEME_PREFIXES)}, not {scheme!r}")
    strict = mode == "strict"
    tokens = _check_tags(gold, pred, SCHEME_PREFIXES[scheme] if strict else _DEFAULT_PREFIXES)
    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    if strict:  # seqeval's strict mode is its v1 module, spans decoded by the scheme
        scheme_class = getattr(schemes, scheme)

        def scores(average: str | None) -> tuple:
            return v1.precision_recall_fscore_support(gold, pred, average=average, zero_division=0,
                                                      scheme=scheme_class)

        types = sorted(schemes.Entities(gold, scheme_class).unique_tags
                       | schemes.Entities(pred, scheme_class).unique_tags)
    else:
        def scores(average: str | None) -> tuple:
            return sequence_labeling.precision_recall_fscore_support(gold, pred, average=average, zero_division=0)

        types = sorted({t for t, _, _ in sequence_labeling.get_entities(gold)}
                       | {t for t, _, _ in sequence_labeling.get_entities(pred)})

    p, r, f, _ = scores("micro")
    out: dict[str, Any] = {"precision": float(p), "recall": float(r), "f1": float(f), "mode": mode,
                           "scheme": scheme if strict else None}
    p, r, f, support = scores(None)  # per type, in the sorted order of `types`, as seqeval orders them
    assert len(f) == len(types)
    out["per_type"] = [{"type": t, "precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                        "support": int(support[k])} for k, t in enumerate(types)]
    out["macro_f1"] = float(sum(f) / len(f)) if len(f) else 0.0
    out["support"] = int(sum(support))
    out["token_accuracy"] = sum(a == b for g, q in zip(gold, pred) for a, b in zip(g, q)) / tokens
    return out


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, default conlleval rules) and token accuracy, with the key
    names of the token-classification task."""
    report = entity_report(gold, pred)
    return {"entity_precision": report["precision"], "entity_recall": report["recall"],
            "entity_f1": report["f1"], "token_accuracy": report["token_accuracy"]}


__all__ = ["SCHEME_PREFIXES", "entity_metrics", "entity_report"]
