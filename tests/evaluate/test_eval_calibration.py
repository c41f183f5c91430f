"""Calibration: ECE against a hand computation and a loop-based reference, the bin edge rule, and temperature
scaling recovering a known factor."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from lmforge.evaluate.errors import EvaluationError


def reference_ece(probs, labels, n_bins):
    """ECE written plainly: bin k holds the confidences c with k/n < c <= (k+1)/n (0 in bin 0)."""
    bins = [[] for _ in range(n_bins)]
    for row, label in zip(probs, labels):
        confidence = max(row)
        predicted = list(row).index(confidence)
        k = next(k for k in range(n_bins) if confidence <= (k + 1) / n_bins)
        bins[k].append((confidence, predicted == label))
    ece, mce = 0.0, 0.0
    for members in bins:
        if members:
            gap = abs(sum(ok for _, ok in members) / len(members) - sum(c for c, _ in members) / len(members))
            ece += len(members) / len(labels) * gap
            mce = max(mce, gap)
    return ece, mce, [len(members) for members in bins]


def test_a_tiny_example_computed_by_hand():
    probs = [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5], [1.0, 0.0], [0.3, 0.7]]
    labels = [0, 0, 1, 1, 0, 1]
    # confidences .9 (right) .8 (wrong) .6 (right) .5 (tie: class 0, wrong) 1.0 (right) .7 (right); 4 bins:
    # (.25, .5]: {.5} acc 0, gap .5; (.5, .75]: {.6, .7} conf .65 acc 1, gap .35;
    # (.75, 1]: {.9, .8, 1.0} conf .9 acc 2/3, gap .9 - 2/3
    out = expected_calibration_error(probs, labels, n_bins=4)
    assert out["ece"] == pytest.approx((1 * 0.5 + 2 * 0.35 + 3 * (0.9 - 2 / 3)) / 6)
    assert out["mce"] == pytest.approx(0.5)
    assert [b["count"] for b in out["bins"]] == [0, 1, 2, 3]
    assert out["bins"][0] == {"lo": 0.0, "hi": 0.25, "count": 0, "confidence": None, "accuracy": None}
    assert out["bins"][2] == pytest.approx({"lo": 0.5, "hi": 0.75, "count": 2, "confidence": 0.65, "accuracy": 1.0})
    assert out["accuracy"] == pytest.approx(4 / 6)
    # the (N,) form is the probability of class 1 of a binary task
    binary = expected_calibration_error([p[1] for p in probs], labels, n_bins=4)
    assert binary["ece"] == pytest.approx(out["ece"]) and binary["mce"] == pytest.approx(out["mce"])


@pytest.mark.parametrize("n_bins", [15, 10, 7])
def test_equals_a_loop_based_reference(n_bins):
    rng = np.random.default_rng(n_bins)
    probs = rng.dirichlet([0.6, 0.6, 0.6], size=400)
    labels = rng.integers(0, 3, size=400)
    labels[:250] = probs[:250].argmax(axis=1)  # mostly right, as a trained model
    out = expected_calibration_error(probs, labels, n_bins=n_bins)
    ece, mce, counts = reference_ece(probs.tolist(), labels.tolist(), n_bins)
    assert out["ece"] == pytest.approx(ece, abs=1e-12)
    assert out["mce"] == pytest.approx(mce, abs=1e-12)
    assert [b["count"] for b in out["bins"]] == counts
    assert sum(counts) == 400 and out["n_bins"] == n_bins


def test_bin_edges_are_right_closed():
    # 1.0 goes to the last bin; an edge value to the bin below it; 0.5 with 2 bins into bin 0
    edges = expected_calibration_error([[1.0, 0.0], [0.5, 0.5], [0.6, 0.4]], [0, 0, 0], n_bins=10)
    assert [b["count"] for b in edges["bins"]] == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert edges["bins"][4]["hi"] == 0.5 and edges["bins"][9]["hi"] == 1.0
    halves = expected_calibration_error([[0.5, 0.5], [0.25, 0.75]], [0, 1], n_bins=2)
    assert [b["count"] for b in halves["bins"]] == [1, 1]
    # a single bin: ECE is |accuracy - mean confidence|
    one = expected_calibration_error([[0.9, 0.1], [0.3, 0.7]], [0, 0], n_bins=1)
    assert one["ece"] == pytest.approx(abs(0.5 - 0.8))


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_nll(logits, labels, t):
    log_probs = np.log(softmax(logits / t))
    return -log_probs[np.arange(len(labels)), labels].mean()


def calibrated_logits(n=8000, classes=4, seed=0):
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = np.minimum((cumulative < rng.random(n)[:, None]).sum(axis=1), classes - 1)
    return logits, labels


@pytest.mark.parametrize("factor", [2.5, 0.5])
def test_temperature_scaling_recovers_a_known_factor(factor):
    logits, labels = calibrated_logits()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)
    scaled = logits * factor  # over- (2.5) or under-confident (0.5) by a known factor
    t = fit_temperature(scaled, labels)
    assert t == pytest.approx(factor, rel=0.05)
    grid = np.concatenate([np.geomspace(0.05, 20, 100), np.geomspace(t / 1.1, t * 1.1, 201)])  # fine near t
    fitted = mean_nll(scaled, labels, t)
    assert fitted <= min(mean_nll(scaled, labels, g) for g in grid) + 1e-12
    assert negative_log_likelihood(scaled, labels, t) == pytest.approx(fitted, rel=1e-12)
    probs = apply_temperature(scaled, t)
    np.testing.assert_allclose(probs, softmax(scaled / t), rtol=1e-12)
    assert (probs.argmax(axis=1) == scaled.argmax(axis=1)).all()
    before = expected_calibration_error(softmax(scaled), labels)["ece"]
    after = expected_calibration_error(probs, labels)["ece"]
    assert after < 0.02 < before


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="probs row 0 is not a probability distribution"):
        expected_calibration_error([[2.0, -1.0], [0.1, 0.9]], [0, 1])
    with pytest.raises(EvaluationError, match="predictions has 2 rows, references has 3"):
        expected_calibration_error([[0.5, 0.5], [0.1, 0.9]], [0, 1, 1])
    with pytest.raises(EvaluationError, match="label 2 at index 1 is not one of the 2 classes"):
        expected_calibration_error([[0.5, 0.5], [0.1, 0.9]], [0, 2])
    with pytest.raises(EvaluationError, match="empty"):
        expected_calibration_error(np.zeros((0, 2)), [])
    with pytest.raises(EvaluationError, match="n_bins must be a positive int"):
        expected_calibration_error([[0.5, 0.5]], [0], n_bins=0)
    with pytest.raises(EvaluationError, match=r"logits must have shape \(N, C\)"):
        fit_temperature([0.1, 0.2], [0, 1])
    with pytest.raises(EvaluationError, match="temperature must be a positive number"):
        apply_temperature([[0.1, 0.2]], 0.0)
