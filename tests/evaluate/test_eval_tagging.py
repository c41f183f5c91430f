"""Entity-level tagging scores: equal to seqeval in its default and strict modes, and to a hand count on
inputs where the two modes differ (I- tags with no B- before them)."""

from __future__ import annotations

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, IOBES

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.tagging import entity_metrics, entity_report

GOLD = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
        ["O", "B-ORG", "I-ORG", "O"],
        ["I-MISC", "I-MISC", "O"]]
PRED = [["B-PER", "I-PER", "O", "I-LOC", "I-LOC"],
        ["O", "B-ORG", "O", "O"],
        ["I-MISC", "I-MISC", "O"]]


def assert_equals_seqeval(report, seqeval_report):
    """Our report against seqeval's classification_report(output_dict=True)."""
    micro = seqeval_report.pop("micro avg")
    macro = seqeval_report.pop("macro avg")
    seqeval_report.pop("weighted avg")
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx(
        (micro["precision"], micro["recall"], micro["f1-score"]))
    assert report["macro_f1"] == pytest.approx(macro["f1-score"])
    assert report["support"] == micro["support"]
    assert [row["type"] for row in report["per_type"]] == sorted(seqeval_report)
    for row in report["per_type"]:
        theirs = seqeval_report[row["type"]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"], theirs["support"])), row["type"]


def test_default_mode_equals_seqeval_and_a_hand_count():
    report = entity_report(GOLD, PRED)
    assert_equals_seqeval(report, classification_report(GOLD, PRED, output_dict=True, zero_division=0))
    # conlleval rules: an I- after O starts an entity. Gold PER, LOC, ORG(2 tokens), MISC; predicted PER, LOC,
    # ORG(1 token), MISC: three of four match in span and type
    assert (report["precision"], report["recall"]) == pytest.approx((3 / 4, 3 / 4))
    by_type = {row["type"]: row for row in report["per_type"]}
    assert by_type["ORG"]["f1"] == 0.0 and by_type["MISC"]["f1"] == 1.0
    assert report["macro_f1"] == pytest.approx(3 / 4)
    assert report["token_accuracy"] == pytest.approx((4 + 3 + 3) / 12)
    assert report["mode"] == "default" and report["scheme"] is None


def test_strict_mode_equals_seqeval_and_a_hand_count():
    report = entity_report(GOLD, PRED, mode="strict")
    expected = classification_report(GOLD, PRED, output_dict=True, mode="strict", scheme=IOB2, zero_division=0)
    assert_equals_seqeval(report, expected)
    # IOB2: an entity begins with B-, so "I-MISC I-MISC" (both sides) and the predicted "I-LOC I-LOC" are no
    # entities. Gold PER, LOC, ORG(2); predicted PER, ORG(1): one match
    assert (report["precision"], report["recall"]) == pytest.approx((1 / 2, 1 / 3))
    assert [row["type"] for row in report["per_type"]] == ["LOC", "ORG", "PER"]
    assert report["macro_f1"] == pytest.approx(1 / 3)
    assert report["token_accuracy"] == pytest.approx(10 / 12)  # tokens do not depend on the mode
    assert report["scheme"] == "IOB2"


def test_strict_mode_with_another_scheme():
    gold = [["S-PER", "O", "B-LOC", "E-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]]
    pred = [["S-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]]
    report = entity_report(gold, pred, mode="strict", scheme="IOBES")
    assert_equals_seqeval(report, classification_report(gold, pred, output_dict=True, mode="strict",
                                                        scheme=IOBES, zero_division=0))
    assert (report["precision"], report["recall"]) == pytest.approx((2 / 2, 2 / 3))  # B-LOC I-LOC: not closed
    with pytest.raises(EvaluationError, match=r"token 0 of the references: 'S-PER' is not a tag of the form O or B/I-TYPE"):
        entity_report(gold, pred, mode="strict")  # S- and E- are no IOB2 prefixes


def test_task_metrics_keep_their_keys_and_equal_seqeval():
    out = entity_metrics(GOLD, PRED)
    assert out == pytest.approx({"entity_precision": precision_score(GOLD, PRED),
                                 "entity_recall": recall_score(GOLD, PRED),
                                 "entity_f1": f1_score(GOLD, PRED), "token_accuracy": 10 / 12})
    no_entities = entity_report([["O", "O"]], [["O", "O"]])
    assert (no_entities["f1"], no_entities["macro_f1"], no_entities["per_type"]) == (0.0, 0.0, [])


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="predictions has 2 sentences, references has 3"):
        entity_report(GOLD, PRED[:2])
    with pytest.raises(EvaluationError, match="sentence 1: predictions has 3 tags, references has 4"):
        entity_report(GOLD, [PRED[0], PRED[1][:3], PRED[2]])
    with pytest.raises(EvaluationError, match="empty"):
        entity_report([], [])
    with pytest.raises(EvaluationError, match="every sentence is empty"):
        entity_report([[], []], [[], []])
    with pytest.raises(EvaluationError, match="sentence 0, token 1 of the predictions: 'PER'"):
        entity_report([["B-PER", "I-PER"]], [["B-PER", "PER"]])
    with pytest.raises(EvaluationError, match="sentence 0 is a string"):
        entity_report(["B-PER O"], ["B-PER O"])
    with pytest.raises(EvaluationError, match="mode must be"):
        entity_report(GOLD, PRED, mode="lenient")
    with pytest.raises(EvaluationError, match="scheme must be one of"):
        entity_report(GOLD, PRED, mode="strict", scheme="BIO")
