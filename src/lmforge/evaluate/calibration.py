"""Calibration: expected calibration error over equal-width confidence bins, and temperature scaling.

A prediction's confidence is its top probability; it is correct when its arg-max is the label (ties go to the
lower class index, as numpy's argmax). Binning (Guo et al., 2017, "On Calibration of Modern Neural Networks"):
`n_bins` equal-width bins over [0, 1]; bin i holds the confidences in the half-open interval
(i / n_bins, (i + 1) / n_bins], its edges being `numpy.linspace(0, 1, n_bins + 1)`; a confidence of exactly 0
goes to bin 0 (it cannot occur as a top probability of two or more classes, but can for a degenerate input).
So 1.0 falls in the last bin and an edge value such as 0.5 (with 10 bins) in the bin below it, (0.4, 0.5].

    ECE = sum over bins b of |b| / N * |accuracy(b) - confidence(b)|;  MCE = max over non-empty bins of the gap.

Temperature scaling (Guo et al., 2017) divides the logits by one T > 0 fitted to minimise the negative
log-likelihood on validation data; it changes confidences, never the arg-max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.evaluate.classification import check_lengths
from lmforge.evaluate.errors import EvaluationError

TEMPERATURE_RANGE = (1e-2, 1e2)
"""The interval searched by `fit_temperature` (its log is optimised)."""


def _probabilities(probs: Any) -> np.ndarray:
    """`probs` as an (N, C) float64 matrix of rows summing to 1; an (N,) vector is P(class 1) of a binary task."""
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim == 1:
        values = np.stack([1.0 - values, values], axis=1)
    if values.ndim != 2 or values.shape[1] < 2:
        raise EvaluationError(f"probs must have shape (N, C) with C >= 2, or (N,) for a binary task; "
                              f"got {np.asarray(probs).shape}")
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values > 1).any(axis=1)
    bad |= np.abs(values.sum(axis=1) - 1.0) > 1e-4
    if bad.any():
        row = int(np.argmax(bad))
        raise EvaluationError(f"probs row {row} is not a probability distribution ({values[row].tolist()}); "
                              "pass probabilities (e.g. softmax of the logits), not logits")
    return values


def _labels(labels: Sequence[int], n: int, num_classes: int) -> np.ndarray:
    """`labels` as an int array of class indices below `num_classes`."""
    values = np.asarray(labels)
    if values.ndim != 1 or len(values) != n:
        raise EvaluationError(f"labels must be a list of {n} class indices, got shape {values.shape}")
    if values.dtype.kind not in "iu":
        if values.dtype.kind != "f" or not np.all(values == np.round(values)):
            raise EvaluationError(f"labels must be integer class indices, got dtype {values.dtype}")
        values = values.astype(np.int64)
    outside = (values < 0) | (values >= num_classes)
    if outside.any():
        i = int(np.argmax(outside))
        raise EvaluationError(f"label {int(values[i])} at index {i} is not one of the {num_classes} classes")
    return values


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each confidence: i for (edges[i], edges[i + 1]], with 0 itself in bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def expected_calibration_error(probs: Any, labels: Sequence[int], n_bins: int = 15) -> dict[str, Any]:
    """ECE and MCE of top-label confidences over `n_bins` equal-width bins, and the bins themselves.

    Returns {"ece", "mce", "accuracy", "confidence", "n_bins", "count", "bins"}, where each bin is
    {"lo", "hi", "count", "confidence", "accuracy"} (the mean confidence and accuracy of its predictions, None
    for an empty bin). `probs`: (N, C) probabilities, or (N,) probabilities of class 1 for a binary task.
    """
    values = _probabilities(probs)
    check_lengths(values, labels, what="rows")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise EvaluationError(f"n_bins must be a positive int, not {n_bins!r}")
    gold = _labels(labels, len(values), values.shape[1])
    confidence = values.max(axis=1)
    correct = (values.argmax(axis=1) == gold).astype(np.float64)
    which = bin_index(confidence, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)

    bins, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        entry: dict[str, Any] = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                                 "confidence": None, "accuracy": None}
        if count:
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(correct[members].mean())
            gap = abs(entry["accuracy"] - entry["confidence"])
            ece += count / len(values) * gap
            mce = max(mce, gap)
        bins.append(entry)
    return {"ece": ece, "mce": mce, "accuracy": float(correct.mean()), "confidence": float(confidence.mean()),
            "n_bins": n_bins, "count": len(values), "bins": bins}


def _logits(logits: Any) -> np.ndarray:
    """`logits` as a finite (N, C) float64 matrix, C >= 2."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 2 or len(values) == 0:
        raise EvaluationError(f"logits must have shape (N, C) with N >= 1 and C >= 2, got {values.shape}")
    if not np.isfinite(values).all():
        raise EvaluationError(f"logits row {int(np.argmin(np.isfinite(values).all(axis=1)))} is not finite")
    return values


def negative_log_likelihood(logits: Any, labels: Sequence[int], temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    from scipy.special import log_softmax

    values = _logits(logits)
    gold = _labels(labels, len(values), values.shape[1])
    log_probs = log_softmax(values / temperature, axis=1)
    return float(-log_probs[np.arange(len(gold)), gold].mean())


def fit_temperature(logits: Any, labels: Sequence[int]) -> float:
    """The temperature T in `TEMPERATURE_RANGE` minimising the NLL of softmax(logits / T) on (logits, labels).

    The NLL is convex in 1 / T, so it has one minimum over log T, found by bounded Brent search
    (scipy's `minimize_scalar`). Fully separable data drive T to the lower bound.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    values = _logits(logits)
    gold = _labels(labels, len(values), values.shape[1])
    rows = np.arange(len(gold))

    def nll(log_t: float) -> float:
        return float(-log_softmax(values / math.exp(log_t), axis=1)[rows, gold].mean())

    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    return float(math.exp(result.x))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) as an (N, C) float64 matrix."""
    from scipy.special import softmax

    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise EvaluationError(f"temperature must be a positive number, not {temperature!r}")
    return softmax(_logits(logits) / value, axis=1)


__all__ = ["TEMPERATURE_RANGE", "apply_temperature", "bin_index", "expected_calibration_error", "fit_temperature",
           "negative_log_likelihood"]
