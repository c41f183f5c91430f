"""Robustness: seeded perturbations (determinism, rate 0 is the identity, the changed fraction follows the rate,
each touches only what it should) and robustness() re-computed through the score function."""

from __future__ import annotations

import random
import string

import pytest

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.robustness import (
    PERTURBATIONS,
    ZH_CONFUSIONS,
    perturb,
    robustness,
    typo,
    word_drop,
    zh_char,
)

HAN = "今天气真好我们去公园散步吧的地得在再做作已己他她那哪是事和合会回学生老师书读写"


def words_text(n=3000, seed=0):
    """A long text of distinct-looking random lower-case words (3..8 letters)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
                    for _ in range(n))


def chinese_text(n=3000, seed=0):
    rng = random.Random(seed)
    return "".join(rng.choice(HAN) + ("，" if rng.random() < 0.1 else "") + (" ok " if rng.random() < 0.05 else "")
                   for _ in range(n))


def edit_distance(a, b):
    """Optimal-string-alignment distance: insert, delete, substitute and swap adjacent characters, each 1."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


MIXED = ["The Quick brown fox, it jumps!  Over\tthe lazy dog.", "今天天气真好，我们去公园散步吧。", "  ", "", "x"]


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_seeded_and_rate_zero_is_the_identity(kind):
    texts = [words_text(200, 1) + " " + chinese_text(200, 1), *MIXED]
    once = perturb(texts, kind, rate=0.3, seed=7)
    assert perturb(texts, kind, rate=0.3, seed=7) == once
    assert perturb(texts, kind, rate=0.3, seed=8)[0] != once[0]
    assert once[0] != texts[0]
    assert perturb(texts, kind, rate=0.0, seed=7) == texts
    for text in texts:  # the functions themselves, not only perturb's shortcut
        assert PERTURBATIONS[kind](text, 0.0, random.Random(0)) == text
    # a text's output depends on the text and the seed only, not on its neighbours in the list
    assert perturb(texts[:1], kind, rate=0.3, seed=7) == once[:1]


def test_typo_edits_about_rate_letters_and_only_letters():
    text = words_text()
    out = typo(text, 0.1, random.Random(0))
    before, after = text.split(" "), out.split(" ")
    assert len(before) == len(after)  # spaces are never touched
    edits = sum(edit_distance(a, b) for a, b in zip(before, after))
    assert edits / sum(len(w) for w in before) == pytest.approx(0.1, rel=0.15)
    untouched = "123 !? 中文 4.5"
    assert typo(untouched, 1.0, random.Random(0)) == untouched
    assert typo("ABC", 1.0, random.Random(3)).isupper()  # the case is kept


def test_word_drop_and_swap_follow_the_rate():
    text = words_text()
    words = text.split()
    dropped = perturb([text], "word_drop", rate=0.2, seed=1)[0].split()
    assert 1 - len(dropped) / len(words) == pytest.approx(0.2, rel=0.15)
    remaining = iter(words)  # what stays keeps its order: a subsequence of the words
    assert all(w in remaining for w in dropped)
    swapped = perturb([text], "word_swap", rate=0.2, seed=1)[0].split()
    assert sorted(swapped) == sorted(words)
    assert sum(a != b for a, b in zip(words, swapped)) / len(words) == pytest.approx(0.2, rel=0.15)
    assert word_drop("one two three", 1.0, random.Random(0)) in {"one", "two", "three"}  # never every word
    assert word_drop("a b c ", 1.0, random.Random(0)) in {"a ", "b ", "c "}  # the text's own ending is kept


def test_case_and_punctuation_follow_the_rate():
    text = words_text()
    words = text.split()
    cased = perturb([text], "case", rate=0.2, seed=2)[0]
    assert cased.lower() == text
    assert sum(a != b for a, b in zip(words, cased.split())) / len(words) == pytest.approx(0.2, rel=0.15)
    marked = perturb([text], "punctuation", rate=0.2, seed=2)[0]
    added = [w for w in marked.split() if w[-1] in string.punctuation]
    assert len(added) / len(words) == pytest.approx(0.2, rel=0.15)
    assert marked.translate(str.maketrans("", "", string.punctuation)) == text
    # words that carry marks lose one
    comma = " ".join(w + "," for w in words)
    stripped = perturb([comma], "punctuation", rate=0.2, seed=2)[0]
    assert sum(not w.endswith(",") for w in stripped.split()) / len(words) == pytest.approx(0.2, rel=0.15)


def test_zh_char_changes_only_chinese_characters_at_the_rate():
    text = chinese_text()
    out = perturb([text], "zh_char", rate=0.15, seed=3)[0]
    assert len(out) == len(text)
    han_positions = [i for i, ch in enumerate(text) if ch in HAN]
    changed = [i for i, (a, b) in enumerate(zip(text, out)) if a != b]
    assert set(changed) <= set(han_positions)  # spaces, Latin letters and "，" are kept
    assert all("\u4e00" <= out[i] <= "\u9fff" for i in changed)
    assert len(changed) / len(han_positions) == pytest.approx(0.15, rel=0.15)
    # characters in the confusion table become one of their confusions
    assert set(zh_char("的" * 50, 1.0, random.Random(0))) <= set("地得")
    assert any("的" in group and "地" in group for group in ZH_CONFUSIONS)
    # with no confusion, another character of the same text; with none either, unchanged
    assert set(zh_char("鼠鼠龟", 1.0, random.Random(0))) <= set("鼠龟")
    assert zh_char("鼠", 1.0, random.Random(0)) == "鼠"


def keyword_accuracy(texts, references):
    """A toy metric: the share of texts that still contain their keyword, as written."""
    return sum(ref in text for text, ref in zip(texts, references)) / len(texts)


def test_robustness_equals_a_recomputation_through_the_score_function():
    texts = [f"the film {w} was good and worth seeing" for w in ("Alpha", "Brave", "Comet", "Delta")] * 10
    refs = ["Alpha", "Brave", "Comet", "Delta"] * 10
    out = robustness(keyword_accuracy, texts, refs, rate=0.3, seed=4)
    assert out["clean"] == keyword_accuracy(texts, refs) == 1.0
    assert (out["rate"], out["seed"]) == (0.3, 4)
    assert [row["name"] for row in out["perturbations"]] == ["typo", "word_drop", "word_swap", "case",
                                                              "punctuation"]  # no Chinese: no zh_char
    for row in out["perturbations"]:
        score = keyword_accuracy(perturb(texts, row["name"], rate=0.3, seed=4), refs)
        assert row["score"] == score and row["drop"] == pytest.approx(1.0 - score)
    by_name = {row["name"]: row for row in out["perturbations"]}
    assert by_name["typo"]["drop"] > 0 and by_name["word_swap"]["drop"] == 0  # swapping keeps every keyword
    zh = robustness(lambda t, r: 1.0, ["今天很好"], [0])
    assert [row["name"] for row in zh["perturbations"]] == ["word_drop", "word_swap", "punctuation", "zh_char"]
    chosen = robustness(keyword_accuracy, texts, refs, kinds=["case"], rate=0.5, seed=0)
    assert [row["name"] for row in chosen["perturbations"]] == ["case"]


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="unknown perturbation 'noise'; known: typo, word_drop, word_swap, "
                                              "case, punctuation, zh_char"):
        perturb(["a"], "noise")
    with pytest.raises(EvaluationError, match="unknown perturbation 'noise'"):
        robustness(keyword_accuracy, ["a"], ["a"], kinds=["typo", "noise"])
    with pytest.raises(EvaluationError, match=r"rate must be a number in \[0, 1\]"):
        perturb(["a"], "typo", rate=1.5)
    with pytest.raises(EvaluationError, match="not one string"):
        perturb("a text", "typo")
    with pytest.raises(EvaluationError, match="texts has 2 items, references has 1"):
        robustness(keyword_accuracy, ["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="score_fn returned nan on the clean texts"):
        robustness(lambda t, r: float("nan"), ["a"], ["a"])
