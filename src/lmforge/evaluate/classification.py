"""Classification and regression metrics, computed by scikit-learn (and scipy for correlations).

Labels are indices `0 .. K-1` into a list of names. `classification_report` gathers what a report shows:
accuracy; precision, recall and F1 averaged three ways (macro: the plain mean over classes; micro: over all
decisions, equal to accuracy when every class is counted; weighted: the mean weighted by gold support) and per
class; the confusion matrix (rows gold, columns predicted); and, for two classes given scores, ROC-AUC and
PR-AUC (average precision). Classes absent from both gold and predictions still count in the macro mean, with
precision / recall / F1 0 (scikit-learn's `zero_division=0`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmforge.evaluate.errors import EvaluationError


def check_lengths(predictions: Sequence[Any], references: Sequence[Any], what: str = "items",
                  names: tuple[str, str] = ("predictions", "references")) -> int:
    """The number of examples; an `EvaluationError` if predictions and references (called `names` in the
    message) differ in length or are empty."""
    if len(predictions) != len(references):
        raise EvaluationError(f"{names[0]} has {len(predictions)} {what}, {names[1]} has {len(references)}")
    if len(predictions) == 0:
        raise EvaluationError(f"{names[0]} and {names[1]} are empty: nothing to score")
    return len(predictions)


def _label_indices(values: Sequence[int], side: str, num_labels: int | None) -> list[int]:
    """`values` as Python ints, each checked to be a label index (below `num_labels` when it is known)."""
    out = []
    for i, value in enumerate(values):
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise EvaluationError(f"{side} {value!r} at index {i} is not a label index") from None
        if index != value or isinstance(value, bool) or index < 0:
            raise EvaluationError(f"{side} {value!r} at index {i} is not a label index (an int >= 0)")
        if num_labels is not None and index >= num_labels:
            raise EvaluationError(f"{side} {index} at index {i} is not one of the {num_labels} labels")
        out.append(index)
    return out


def _binary_scores(scores: Any, n: int) -> Any:
    """The score of class 1 per example, from an (N,) vector or an (N, 2) probability matrix."""
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 2:
        if ((values < 0) | (values > 1)).any() or not np.allclose(values.sum(axis=1), 1.0, atol=1e-4):
            raise EvaluationError("scores of shape (N, 2) must be probabilities (rows in [0, 1] summing to 1); "
                                  "pass the score of class 1 as an (N,) vector instead (e.g. logit1 - logit0)")
        values = values[:, 1]
    elif values.ndim != 1:
        raise EvaluationError(f"scores must have shape (N,) or (N, 2), not {values.shape}")
    if len(values) != n:
        raise EvaluationError(f"scores has {len(values)} items, references has {n}")
    if not np.isfinite(values).all():
        raise EvaluationError(f"scores has a non-finite value at index {int(np.argmin(np.isfinite(values)))}")
    return values


def classification_report(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str] | None = None,
                          scores: Any = None, num_labels: int | None = None) -> dict[str, Any]:
    """Accuracy, macro / micro / weighted and per-class precision, recall and F1, the confusion matrix and
    (two classes with `scores`) ROC-AUC and PR-AUC, all as scikit-learn computes them.

    `gold` and `pred` are label indices; `labels` names them (default: "0", "1", ... up to `num_labels`, or up to
    the largest index seen). `scores`: the score or probability of class 1 per example, (N,), or an (N, 2)
    probability matrix. ROC-AUC and PR-AUC are None when the gold labels hold a single class (undefined).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    n = check_lengths(pred, gold)
    if labels is not None and num_labels is not None and len(labels) != num_labels:
        raise EvaluationError(f"labels names {len(labels)} classes, num_labels is {num_labels}")
    if labels is not None and len(set(labels)) != len(labels):
        raise EvaluationError(f"labels has duplicates: {list(labels)}")
    known = len(labels) if labels is not None else num_labels
    gold_ids = _label_indices(gold, "reference", known)
    pred_ids = _label_indices(pred, "prediction", known)
    count = known if known is not None else max(gold_ids + pred_ids) + 1
    names = [str(name) for name in labels] if labels is not None else [str(i) for i in range(count)]
    classes = list(range(count))

    out: dict[str, Any] = {"accuracy": float(accuracy_score(gold_ids, pred_ids)), "labels": names, "count": n}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold_ids, pred_ids, labels=classes, average=average,
                                                     zero_division=0)
        out[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    p, r, f, support = precision_recall_fscore_support(gold_ids, pred_ids, labels=classes, average=None,
                                                       zero_division=0)
    out["per_class"] = [{"label": names[c], "precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                         "support": int(support[c])} for c in classes]
    out["confusion_matrix"] = confusion_matrix(gold_ids, pred_ids, labels=classes).tolist()
    if scores is not None:
        if count != 2:
            raise EvaluationError(f"scores give ROC-AUC / PR-AUC for two classes only; this task has {count}")
        out.update(binary_ranking_metrics(gold_ids, _binary_scores(scores, n)))
    return out


def binary_ranking_metrics(gold: Sequence[int], scores: Any) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC (average precision) of class-1 `scores` against 0/1 `gold` (None if one class only)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(set(gold)) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {"roc_auc": float(roc_auc_score(gold, scores)), "pr_auc": float(average_precision_score(gold, scores))}


def classification_metrics(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (and, with two classes, the F1 of class 1), via scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score

    check_lengths(pred, gold)
    out = {"accuracy": float(accuracy_score(gold, pred)),
           "macro_f1": float(f1_score(gold, pred, average="macro", labels=list(range(num_labels)), zero_division=0))}
    if num_labels == 2:
        out["f1"] = float(f1_score(gold, pred, average="binary", pos_label=1, zero_division=0))
    return out


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (0 when either side is constant) and the mean squared error."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    check_lengths(pred, gold)
    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    constant = gold.std() == 0 or pred.std() == 0
    return {"pearson": 0.0 if constant else float(pearsonr(gold, pred)[0]),
            "spearman": 0.0 if constant else float(spearmanr(gold, pred)[0]),
            "mse": float(((gold - pred) ** 2).mean())}


def check_label_sets(expected: Sequence[str], found: Sequence[str], where: str, allow_missing: bool = False) -> None:
    """Raise an `EvaluationError` naming `where` when the label names `found` (e.g. in a data file) differ from
    those `expected` (e.g. a model's), listing the labels missing on each side.

    `allow_missing=True` accepts `found` being a subset (an evaluation file that lacks a rare class).
    """
    expected_set, found_set = set(expected), set(found)
    unexpected = sorted(found_set - expected_set, key=str)
    missing = [] if allow_missing else sorted(expected_set - found_set, key=str)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"not among the expected labels: {unexpected}")
        if missing:
            parts.append(f"expected but not found: {missing}")
        raise EvaluationError(f"{where}: label sets differ: " + "; ".join(parts)
                              + f" (expected {sorted(expected_set, key=str)})")


__all__ = ["binary_ranking_metrics", "check_label_sets", "check_lengths", "classification_metrics",
           "classification_report", "regression_metrics"]
