"""Classification metrics: every number equals scikit-learn on fixed inputs; a few are counted by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lmforge.evaluate.classification import (
    check_label_sets,
    classification_metrics,
    classification_report,
    regression_metrics,
)
from lmforge.evaluate.errors import EvaluationError

GOLD = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1, 2, 2]
NAMES = ["neg", "neu", "pos"]


def test_report_equals_scikit_learn():
    report = classification_report(GOLD, PRED, labels=NAMES)
    assert report["labels"] == NAMES
    assert report["accuracy"] == pytest.approx(accuracy_score(GOLD, PRED))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(GOLD, PRED, average=average, zero_division=0)
        assert report[average] == pytest.approx({"precision": p, "recall": r, "f1": f}), average
    p, r, f, s = precision_recall_fscore_support(GOLD, PRED, average=None, zero_division=0)
    for c, row in enumerate(report["per_class"]):
        assert row == pytest.approx({"label": NAMES[c], "precision": p[c], "recall": r[c], "f1": f[c],
                                     "support": s[c]})
    assert report["confusion_matrix"] == confusion_matrix(GOLD, PRED).tolist()


def test_confusion_matrix_and_scores_counted_by_hand():
    report = classification_report(GOLD, PRED, labels=NAMES)
    # rows gold, columns predicted: gold 0 -> 0,0,1,2; gold 1 -> 1,1,0; gold 2 -> 2,2,1,2,2
    assert report["confusion_matrix"] == [[2, 1, 1],
                                          [1, 2, 0],
                                          [0, 1, 4]]
    assert report["accuracy"] == pytest.approx(8 / 12)
    neu = report["per_class"][1]  # predicted "neu" 4 times, 2 right; gold "neu" 3 times
    assert (neu["precision"], neu["recall"], neu["support"]) == pytest.approx((2 / 4, 2 / 3, 3))
    assert neu["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert report["micro"]["f1"] == pytest.approx(8 / 12)  # every decision counted once: accuracy


def test_a_class_never_seen_still_counts_in_the_macro_mean():
    report = classification_report(GOLD, PRED, labels=[*NAMES, "other"])
    p, r, f, _ = precision_recall_fscore_support(GOLD, PRED, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert report["macro"] == pytest.approx({"precision": p, "recall": r, "f1": f})
    assert report["per_class"][3] == {"label": "other", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(report["confusion_matrix"]) == 4
    # without names, classes are numbered up to the largest index seen, or to num_labels
    assert classification_report(GOLD, PRED)["labels"] == ["0", "1", "2"]
    assert classification_report(GOLD, PRED, num_labels=5)["labels"] == ["0", "1", "2", "3", "4"]


def test_binary_roc_and_pr_auc_equal_scikit_learn_and_a_pair_count():
    gold = [0, 1, 1, 0, 1, 0, 0, 1]
    scores = np.array([0.1, 0.8, 0.35, 0.4, 0.7, 0.2, 0.9, 0.6])
    pred = (scores > 0.5).astype(int).tolist()
    report = classification_report(gold, pred, labels=["no", "yes"], scores=scores)
    assert report["roc_auc"] == pytest.approx(roc_auc_score(gold, scores))
    assert report["pr_auc"] == pytest.approx(average_precision_score(gold, scores))
    # ROC-AUC by hand: the share of (positive, negative) pairs where the positive scores higher
    pos, neg = scores[np.array(gold) == 1], scores[np.array(gold) == 0]
    assert report["roc_auc"] == pytest.approx(np.mean([p > n for p in pos for n in neg]))
    # average precision by hand: ranked 0.9(-) 0.8(+) 0.7(+) 0.6(+) 0.4(-) 0.35(+) ...; precision at each hit
    assert report["pr_auc"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4 + 4 / 6) / 4)
    # an (N, 2) probability matrix is read as its class-1 column
    matrix = classification_report(gold, pred, scores=np.stack([1 - scores, scores], axis=1))
    assert (matrix["roc_auc"], matrix["pr_auc"]) == (report["roc_auc"], report["pr_auc"])
    # one gold class only: the AUCs are undefined
    single = classification_report([1, 1, 1], [1, 0, 1], num_labels=2, scores=[0.9, 0.2, 0.7])
    assert single["roc_auc"] is None and single["pr_auc"] is None


def test_task_metrics_equal_scikit_learn_and_scipy():
    out = classification_metrics(GOLD, PRED, num_labels=3)
    assert out == pytest.approx({"accuracy": accuracy_score(GOLD, PRED),
                                 "macro_f1": f1_score(GOLD, PRED, average="macro")})
    binary = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], num_labels=2)
    assert binary["f1"] == pytest.approx(f1_score([0, 1, 1, 0], [0, 1, 0, 0]))
    gold, pred = [0.5, 1.0, 2.5, 3.0, 4.2], [0.7, 0.9, 2.0, 3.5, 4.0]
    out = regression_metrics(gold, pred)
    assert out["pearson"] == pytest.approx(pearsonr(gold, pred)[0])
    assert out["spearman"] == pytest.approx(spearmanr(gold, pred)[0])
    assert out["mse"] == pytest.approx(np.mean((np.array(gold) - np.array(pred)) ** 2))


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="predictions has 9 items, references has 10"):
        classification_report(list(range(10)), list(range(9)))
    with pytest.raises(EvaluationError, match="empty"):
        classification_report([], [])
    with pytest.raises(EvaluationError, match="prediction 5 at index 3 is not one of the 3 labels"):
        classification_report([0, 1, 2, 0], [0, 1, 2, 5], labels=NAMES)
    with pytest.raises(EvaluationError, match="reference 3 at index 0 is not one of the 3 labels"):
        classification_report([3, 1], [0, 1], num_labels=3)
    with pytest.raises(EvaluationError, match="prediction 0.5 at index 1 is not a label index"):
        classification_report([0, 1], [0, 0.5])
    with pytest.raises(EvaluationError, match="labels names 3 classes, num_labels is 2"):
        classification_report([0, 1], [0, 1], labels=NAMES, num_labels=2)
    with pytest.raises(EvaluationError, match=r"shape \(N,\) or \(N, 2\)"):
        classification_report([0, 1], [0, 1], scores=[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    with pytest.raises(EvaluationError, match="scores has 3 items, references has 2"):
        classification_report([0, 1], [0, 1], scores=[0.1, 0.9, 0.3])
    with pytest.raises(EvaluationError, match="must be probabilities"):
        classification_report([0, 1], [0, 1], scores=[[2.0, -1.0], [0.5, 3.0]])
    with pytest.raises(EvaluationError, match="two classes only; this task has 3"):
        classification_report(GOLD, PRED, scores=np.full(len(GOLD), 0.5))
    with pytest.raises(EvaluationError, match="predictions has 2 items, references has 3"):
        classification_metrics([0, 1, 1], [0, 1], num_labels=2)


def test_label_set_mismatch_lists_both_sides():
    check_label_sets(["neg", "pos"], ["pos", "neg", "pos"], "train.jsonl")  # same set: fine
    with pytest.raises(EvaluationError) as error:
        check_label_sets(["neg", "neu", "pos"], ["neg", "positive"], "data/test.jsonl field 'label'")
    message = str(error.value)
    assert message.startswith("data/test.jsonl field 'label': label sets differ")
    assert "not among the expected labels: ['positive']" in message
    assert "expected but not found: ['neu', 'pos']" in message
    check_label_sets(["neg", "neu", "pos"], ["neg", "pos"], "dev.jsonl", allow_missing=True)
    with pytest.raises(EvaluationError, match=r"dev.jsonl: .*not among the expected labels: \['x'\]"):
        check_label_sets(["neg", "pos"], ["neg", "x"], "dev.jsonl", allow_missing=True)


def test_metric_modules_import_without_torch():
    modules = ["classification", "tagging", "qa", "generation", "calibration", "robustness"]
    code = ("import sys\n" + "".join(f"import lmforge.evaluate.{m}\n" for m in modules)
            + "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
