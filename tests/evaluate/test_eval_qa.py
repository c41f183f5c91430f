"""Extractive QA: exact match and F1 against a copy of the official SQuAD v1.1 script's functions."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.qa import normalize_answer, squad_metrics, token_f1


# --- the official evaluate-v1.1.py (rajpurkar.github.io/SQuAD-explorer), its scoring functions as written there
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return (official_normalize_answer(prediction) == official_normalize_answer(ground_truth))


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)
# --- end of the official script's functions


CASES = [
    ("The Denver Broncos", ["Denver Broncos", "the broncos"]),
    ("an apple a day", ["apple day", "An Apple"]),
    ("theater of the absurd", ["Theater  absurd"]),          # "the" inside a word stays
    ("U.S. Army", ["US army", "the U.S. Army Corps"]),
    ("Denver-Broncos!", ["denverbroncos", "Denver Broncos"]),  # punctuation removed without a space
    ("", ["Santa Clara"]),                                    # empty prediction
    ("the", ["The", "a"]),                                    # both normalise to nothing: EM 1, F1 0
    ("“Levi’s Stadium”", ["Levi's Stadium"]),                 # curly quotes are no ASCII punctuation
    ("1,000 \t people\n", ["1000 people", "about 1000"]),
    ("cat cat dog", ["cat dog dog", "bird"]),                 # token multisets
]


@pytest.mark.parametrize(("prediction", "golds"), CASES)
def test_each_example_scores_as_the_official_script(prediction, golds):
    assert normalize_answer(prediction) == official_normalize_answer(prediction)
    for gold in golds:
        assert token_f1(prediction, gold) == pytest.approx(official_f1_score(prediction, gold))
    one = squad_metrics([prediction], [golds])
    assert one["exact_match"] == pytest.approx(
        100.0 * official_metric_max_over_ground_truths(official_exact_match_score, prediction, golds))
    assert one["f1"] == pytest.approx(
        100.0 * official_metric_max_over_ground_truths(official_f1_score, prediction, golds))


def test_corpus_means_in_percent_as_the_official_evaluate():
    predictions, golds = [p for p, _ in CASES], [g for _, g in CASES]
    em = sum(official_metric_max_over_ground_truths(official_exact_match_score, p, g) for p, g in CASES)
    f1 = sum(official_metric_max_over_ground_truths(official_f1_score, p, g) for p, g in CASES)
    scores = squad_metrics(predictions, golds)
    assert scores == pytest.approx({"exact_match": 100.0 * em / len(CASES), "f1": 100.0 * f1 / len(CASES)})
    # by hand for two: "cat cat dog" vs "cat dog dog": 2 shared tokens of 3 each -> F1 2/3; "the" vs "The" EM 1
    assert squad_metrics(["cat cat dog"], [["cat dog dog"]])["f1"] == pytest.approx(100 * 2 / 3)
    assert squad_metrics(["the"], [["The"]]) == {"exact_match": 100.0, "f1": 0.0}


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="predictions has 1 items, references has 2"):
        squad_metrics(["a"], [["a"], ["b"]])
    with pytest.raises(EvaluationError, match="empty"):
        squad_metrics([], [])
    with pytest.raises(EvaluationError, match=r"references\[1\] must be a non-empty list of gold answers"):
        squad_metrics(["a", "b"], [["a"], []])
    with pytest.raises(EvaluationError, match=r"references\[0\] must be a non-empty list"):
        squad_metrics(["a"], ["a"])  # a bare string, not a list of answers
