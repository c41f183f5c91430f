"""Generation metrics: BLEU / chrF equal to sacrebleu (and one BLEU by hand), ROUGE equal to rouge-score,
Chinese through sacrebleu's zh tokenizer and character ROUGE, exact match."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.generation import (
    CharacterTokens,
    bleu,
    chrf,
    exact_match,
    generation_metrics,
    has_cjk,
    rouge_metrics,
)

HYPS = ["the cat sat on the mat", "a quick brown fox jumps over the dog", "it is raining today"]
REFS = ["the cat is on the mat", "the quick brown fox jumped over the lazy dog", "today it rains"]
MORE_REFS = ["there is a cat on the mat", "a fast brown fox jumps over a dog", "it is raining"]
ZH_HYPS = ["今天天气很好。", "我们去公园散步吧"]
ZH_REFS = ["今天天气真好。", "我们去公园里散步吧。"]


def test_bleu_equals_sacrebleu_with_one_or_several_references():
    out = bleu(HYPS, REFS)
    ref = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert out["bleu"] == pytest.approx(ref.score)
    assert out["precisions"] == pytest.approx(ref.precisions)
    assert (out["bp"], out["sys_len"], out["ref_len"], out["tokenize"]) == (pytest.approx(ref.bp), ref.sys_len,
                                                                            ref.ref_len, "13a")
    several = bleu(HYPS, [[a, b] for a, b in zip(REFS, MORE_REFS)])
    assert several["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, MORE_REFS]).score)
    assert several["bleu"] > out["bleu"]
    # a varying number of references; a repeated reference adds nothing
    varying = bleu(HYPS, [[REFS[0], MORE_REFS[0]], [REFS[1]], [REFS[2], MORE_REFS[2]]])
    padded = bleu(HYPS, [[REFS[0], MORE_REFS[0]], [REFS[1], REFS[1]], [REFS[2], MORE_REFS[2]]])
    assert varying["bleu"] == pytest.approx(padded["bleu"])
    # one example: corpus BLEU is sentence BLEU without the effective-order shortcut
    one = sacrebleu.sentence_bleu(HYPS[1], [REFS[1]], use_effective_order=False)
    assert bleu([HYPS[1]], [REFS[1]])["bleu"] == pytest.approx(one.score)


def test_one_bleu_by_hand():
    hyp, ref = "the quick brown fox jumps over a dog", "the quick brown fox jumped over the lazy dog"
    # clipped n-gram matches: 1-grams the quick brown fox over dog = 6 of 8; 2-grams "the quick", "quick brown",
    # "brown fox" = 3 of 7; 3-grams 2 of 6; 4-grams "the quick brown fox" = 1 of 5
    precisions = [6 / 8, 3 / 7, 2 / 6, 1 / 5]
    brevity = math.exp(1 - 9 / 8)  # 8 hypothesis tokens, 9 reference tokens
    expected = 100 * brevity * math.exp(sum(math.log(p) for p in precisions) / 4)
    out = bleu([hyp], [ref])
    assert out["bleu"] == pytest.approx(expected)
    assert out["precisions"] == pytest.approx([100 * p for p in precisions])
    assert (out["bp"], out["sys_len"], out["ref_len"]) == (pytest.approx(brevity), 8, 9)


def test_chinese_uses_the_zh_tokenizer():
    assert has_cjk(ZH_REFS[0]) and not has_cjk("naïve café 42")
    out = bleu(ZH_HYPS, ZH_REFS)
    assert out["tokenize"] == "zh"
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score)
    # 13a sees each unspaced sentence as about one token: nothing matches at all
    forced = bleu(ZH_HYPS, ZH_REFS, tokenize="13a")
    assert forced["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS]).score)
    assert forced["sys_len"] < out["sys_len"] and forced["bleu"] < out["bleu"]


def test_chrf_equals_sacrebleu():
    assert chrf(HYPS, REFS)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert chrf(HYPS, REFS, word_order=2)["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)
    several = [[a, b] for a, b in zip(REFS, MORE_REFS)]
    assert chrf(HYPS, several)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, MORE_REFS]).score)
    assert chrf(ZH_HYPS, ZH_REFS)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(ZH_HYPS, [ZH_REFS]).score)


def test_rouge_equals_rouge_score_taking_the_best_reference():
    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    out = rouge_metrics(HYPS, [[a, b] for a, b in zip(REFS, MORE_REFS)])
    for key in types:
        best = [max(scorer.score(r, h)[key].fmeasure for r in refs) for h, refs in zip(HYPS, zip(REFS, MORE_REFS))]
        assert out[key] == pytest.approx(sum(best) / len(HYPS)), key
    # Chinese by characters, chosen per example: 今天天气很好 vs 今天天气真好 share 5 of 6 characters
    chars = rouge_scorer.RougeScorer(types, tokenizer=CharacterTokens())
    zh = rouge_metrics(ZH_HYPS, ZH_REFS, chars=None)
    assert zh["rouge1"] == pytest.approx((5 / 6 + chars.score(ZH_REFS[1], ZH_HYPS[1])["rouge1"].fmeasure) / 2)
    assert CharacterTokens().tokenize("Ab，好 1") == ["a", "b", "好", "1"]


def test_exact_match_plain_and_normalised():
    preds, refs = ["Paris ", "the  Cat", "ｆｕｌｌ width", "no"], ["Paris", ["dog", "The cat"], "full width", "yes"]
    assert exact_match(preds, refs, normalize=False) == pytest.approx(1 / 4)  # stripped only: "Paris"
    # NFKC folds full-width letters; case and inner spaces are normalised
    assert exact_match(preds, refs) == pytest.approx(3 / 4)
    assert rouge_metrics(["a b ", "c"], ["a b", "C"])["exact_match"] == pytest.approx(1 / 2)


def test_generation_metrics_together():
    out = generation_metrics(HYPS + ZH_HYPS, REFS + ZH_REFS)
    assert set(out) == {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"}
    # a Chinese reference in the corpus switches BLEU to the zh tokenizer
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS + ZH_HYPS, [REFS + ZH_REFS], tokenize="zh").score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS + ZH_HYPS, [REFS + ZH_REFS]).score)
    rouge = rouge_metrics(HYPS + ZH_HYPS, REFS + ZH_REFS, chars=None)
    assert out["rougeL"] == pytest.approx(rouge["rougeL"]) and out["exact_match"] == 0.0


def test_bad_input_is_named():
    with pytest.raises(EvaluationError, match="predictions has 2 items, references has 3"):
        bleu(HYPS[:2], REFS)
    for fn in (bleu, chrf, rouge_metrics, exact_match, generation_metrics):
        with pytest.raises(EvaluationError, match="empty"):
            fn([], [])
        with pytest.raises(EvaluationError, match=r"references\[1\] must be a string or a non-empty list"):
            fn(["a", "b"], ["a", []])
    with pytest.raises(EvaluationError, match=r"predictions\[0\] is NoneType"):
        rouge_metrics([None], ["a"])
    with pytest.raises(EvaluationError, match="tokenize='nope' is not a sacrebleu tokenizer"):
        bleu(HYPS, REFS, tokenize="nope")
