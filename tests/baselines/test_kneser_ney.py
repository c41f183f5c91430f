"""Tests of the Kneser-Ney baseline: hand computation, nltk reference, brute-force reference, normalisation."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from lmforge.baselines import KneserNeyLM, best_kneser_ney, modified_kn_discounts, split_documents

# ------------------------------------------------------------------------------------------------ helpers


def markov_documents(rng: np.random.Generator, num_docs: int, vocab: int, eos: int, min_len: int = 3,
                     max_len: int = 12) -> list[list[int]]:
    """Documents from a random sparse first-order Markov chain over ids [0, vocab) != eos, each ending in eos."""
    transition = rng.dirichlet(np.full(vocab, 0.3), size=vocab)
    transition[:, eos] = 0
    transition /= transition.sum(axis=1, keepdims=True)
    docs = []
    for _ in range(num_docs):
        tok = int(rng.integers(vocab))
        while tok == eos:
            tok = int(rng.integers(vocab))
        doc = [tok]
        for _ in range(int(rng.integers(min_len, max_len)) - 1):
            doc.append(int(rng.choice(vocab, p=transition[doc[-1]])))
        docs.append(doc + [eos])
    return docs


class ReferenceKN:
    """Textbook interpolated (modified) KN with dicts and loops (Chen & Goodman 1998), for cross-checking."""

    def __init__(self, docs: list[list[int]], vocab_size: int, order: int, discount: float | None) -> None:
        self.V, self.n, self.bos = vocab_size, order, vocab_size
        grams: list[Counter] = [Counter() for _ in range(order + 1)]  # grams[k]: raw counts of k-grams at tokens
        for doc in docs:
            padded = [self.bos] * (order - 1) + list(doc)
            for i in range(order - 1, len(padded)):
                for k in range(1, order + 1):
                    grams[k][tuple(padded[i - k + 1 : i + 1])] += 1
        self.a: list[dict] = [{} for _ in range(order + 1)]
        self.a[order] = dict(grams[order])
        for k in range(1, order):  # continuation count: number of distinct x with (x, g) seen
            cont: Counter = Counter(g[1:] for g in grams[k + 1])
            self.a[k] = dict(cont)
        self.D = {}
        for k in range(1, order + 1):
            if discount is None:
                coc = Counter(self.a[k].values())
                self.D[k] = modified_kn_discounts(coc[1], coc[2], coc[3], coc[4])
            else:
                self.D[k] = (discount, discount, discount)
        self.total: list[dict] = [defaultdict(float) for _ in range(order + 1)]
        self.mass: list[dict] = [defaultdict(float) for _ in range(order + 1)]
        for k in range(1, order + 1):
            for g, c in self.a[k].items():
                self.total[k][g[:-1]] += c
                self.mass[k][g[:-1]] += self.D[k][min(c, 3) - 1]

    def prob(self, context: tuple[int, ...], w: int) -> float:
        context = context[len(context) - min(len(context), self.n - 1) :]
        k = len(context) + 1
        lower = 1.0 / self.V if k == 1 else self.prob(context[1:], w)
        total = self.total[k].get(context, 0.0)
        if total == 0:
            return lower
        c = self.a[k].get(context + (w,), 0)
        discounted = max(c - self.D[k][min(c, 3) - 1], 0) if c else 0.0
        return discounted / total + self.mass[k][context] / total * lower

    def doc_log_probs(self, doc: list[int]) -> list[float]:
        padded = [self.bos] * (self.n - 1) + list(doc)
        return [math.log(self.prob(tuple(padded[i - self.n + 1 : i]), padded[i])) for i in range(self.n - 1, len(padded))]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[list[int]], list[list[int]], int]:
    """A small structured corpus over 12 ids (id 11 = EOS, id 10 never occurs in training): train, held-out, V."""
    rng = np.random.default_rng(0)
    vocab, eos = 12, 11
    train = markov_documents(rng, 80, vocab - 1, eos=10)  # uses ids 0..9 and 10 as its EOS
    train = [[t if t != 10 else eos for t in d] for d in train]
    held_out = markov_documents(rng, 15, vocab, eos=eos)  # may contain the unseen id 10
    return train, held_out, vocab


# ------------------------------------------------------------------------------------------ hand computed


def test_bigram_plain_kn_by_hand() -> None:
    """Bigram KN, D = 0.5, document "a b a b c" over the vocabulary {a, b, c, d} = {0, 1, 2, 3}.

    Padded: <s> a b a b c, bigrams at tokens: (<s> a) (a b) (b a) (a b) (b c).
    Unigram level, continuation counts N1+(. w): a: {<s>, b} = 2, b: {a} = 1, c: {b} = 1, d: 0; total 4.
      gamma_1 = 0.5 * 3 / 4 = 0.375; uniform 1/4, so gamma_1 / 4 = 0.09375
      P1(a) = 1.5/4 + 0.09375 = 0.46875, P1(b) = P1(c) = 0.5/4 + 0.09375 = 0.21875, P1(d) = 0.09375.
    Bigram level, raw counts:
      context a: c(a b) = 2, A = 2, gamma = 0.5 * 1 / 2 = 0.25
        P(b|a) = 1.5/2 + 0.25 * 0.21875 = 0.8046875, P(a|a) = 0.25 * 0.46875 = 0.1171875,
        P(c|a) = 0.25 * 0.21875 = 0.0546875,       P(d|a) = 0.25 * 0.09375 = 0.0234375.
      context b: c(b a) = c(b c) = 1, A = 2, gamma = 0.5 * 2 / 2 = 0.5
        P(a|b) = 0.5/2 + 0.5 * 0.46875 = 0.484375, P(c|b) = 0.25 + 0.5 * 0.21875 = 0.359375.
      context <s>: c(<s> a) = 1, A = 1, gamma = 0.5
        P(a|<s>) = 0.5 + 0.5 * 0.46875 = 0.734375.
      context c (never followed by anything): P(w|c) = P1(w).
    """
    lm = KneserNeyLM().fit([np.array([0, 1, 0, 1, 2])], vocab_size=4, order=2, discounts=0.5)
    np.testing.assert_allclose(lm.distribution(()), [0.46875, 0.21875, 0.21875, 0.09375], rtol=1e-12)
    np.testing.assert_allclose(lm.distribution((0,)), [0.1171875, 0.8046875, 0.0546875, 0.0234375], rtol=1e-12)
    assert lm.prob((1,), 0) == pytest.approx(0.484375, rel=1e-12)
    assert lm.prob((1,), 2) == pytest.approx(0.359375, rel=1e-12)
    assert lm.prob((lm.bos,), 0) == pytest.approx(0.734375, rel=1e-12)
    np.testing.assert_allclose(lm.distribution((2,)), lm.distribution(()), rtol=1e-12)
    expected = np.log([0.734375, 0.8046875, 0.484375, 0.8046875, 0.359375])
    np.testing.assert_allclose(lm.token_log_probs([[0, 1, 0, 1, 2]]), expected, rtol=1e-12)
    total, count = lm.log_prob([[0, 1, 0, 1, 2]])
    assert count == 5 and total == pytest.approx(expected.sum(), rel=1e-12)
    assert lm.perplexity([[0, 1, 0, 1, 2]]) == pytest.approx(math.exp(-expected.mean()), rel=1e-12)


def test_modified_discounts_formula() -> None:
    """n1..n4 = 10, 5, 3, 2: Y = 10/20 = 0.5, D1 = 1 - 2*.5*5/10 = 0.5, D2 = 2 - 3*.5*3/5 = 1.1, D3+ = 3 - 4*.5*2/3."""
    assert modified_kn_discounts(10, 5, 3, 2) == pytest.approx((0.5, 1.1, 3 - 4 / 3))
    assert modified_kn_discounts(10, 5, 0, 2) == pytest.approx((0.5, 0.5, 0.5))  # n3 = 0: single Y
    assert modified_kn_discounts(10, 5, 20, 2) == pytest.approx((0.5, 0.5, 0.5))  # D2 = 2 - 6 < 0: single Y
    assert modified_kn_discounts(0, 5, 3, 2) == (0.5, 0.5, 0.5)  # no Y: FALLBACK_DISCOUNT
    assert modified_kn_discounts(10, 0, 3, 2) == (0.5, 0.5, 0.5)  # Y = 1: FALLBACK_DISCOUNT


def test_model_discounts_use_count_of_counts(corpus) -> None:
    """Top order: raw n-gram count-of-counts; lower orders: count-of-counts of continuation counts."""
    train, _, vocab = corpus
    lm = KneserNeyLM().fit(train, vocab, order=3)
    ref = ReferenceKN(train, vocab, 3, discount=None)
    for k in (1, 2, 3):
        np.testing.assert_allclose(lm.discounts[k - 1], ref.D[k], rtol=1e-12)
    assert lm.discounts[2, 1] != lm.discounts[2, 0]  # a genuinely modified (three-discount) estimate


# -------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("discounts", [0.75, "modified"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_bruteforce_reference(corpus, order, discounts) -> None:
    """Vectorised model == the dict-and-loop ReferenceKN above, token by token, on held-out documents."""
    train, held_out, vocab = corpus
    lm = KneserNeyLM().fit(train, vocab, order, discounts)
    ref = ReferenceKN(train, vocab, order, discount=None if discounts == "modified" else discounts)
    expected = [lp for doc in held_out for lp in ref.doc_log_probs(doc)]
    np.testing.assert_allclose(lm.token_log_probs(held_out), expected, rtol=1e-10)
    for context in [(3, 4, 5), (lm.bos,) * 3, (10,), (), (7, 10, 2)]:
        for w in (0, 10, 11):
            assert lm.prob(context, w) == pytest.approx(ref.prob(tuple(context), w), rel=1e-10)


def _letters(docs: list[list[int]]) -> list[list[str]]:
    return [[chr(ord("a") + t) for t in doc] for doc in docs]


@pytest.mark.parametrize("discount", [0.75, 0.3])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_nltk_left_padded(order, discount) -> None:
    """Plain KN == nltk.lm.KneserNeyInterpolated(order, discount) fed the same n-grams; ppl within 0.1 %.

    nltk's conventions and how the setup makes both models identical:
    - We feed nltk, per document, the everygrams (orders 1..n) of the document left-padded with n-1 "<s>",
      keeping those that end at a real token. These are exactly the n-grams our model counts. (nltk's
      ``padded_everygram_pipeline`` also counts n-grams ending in "<s>" such as ("<s>", "<s>"), which for
      n >= 3 changes its continuation counts; see the order-2 test below for the stock pipeline.)
    - nltk's lowest order is the plain continuation distribution N1+(. w) / N1+(. .), without our
      interpolation with the uniform distribution. The two agree exactly when every vocabulary id occurs
      in training (each discounted D / N1+(. .) comes back as D * V / N1+(. .) * 1/V), which we assert.
    - nltk gives probability 0 (infinite perplexity) to a token it never saw; every held-out token is a
      training token, and unseen contexts are fine (nltk backs off to the lower order with weight 1, as ours).
    - Documents end with their EOS id "</s>"-like token (here the letter of id 6), predicted like any other.
    """
    from nltk.lm import KneserNeyInterpolated
    from nltk.util import everygrams, ngrams, pad_sequence

    rng = np.random.default_rng(order)
    vocab, eos = 7, 6
    train = markov_documents(rng, 40, vocab, eos)  # ~300 tokens
    held_out = markov_documents(rng, 10, vocab, eos)
    assert {t for d in train for t in d} == set(range(vocab))

    def padded(sentence: list[str]) -> list[str]:
        return list(pad_sequence(sentence, order, pad_left=True, left_pad_symbol="<s>"))

    train_grams = [[g for g in everygrams(padded(s), max_len=order) if g[-1] != "<s>"] for s in _letters(train)]
    nltk_lm = KneserNeyInterpolated(order, discount=discount)
    nltk_lm.fit(train_grams, vocabulary_text=[w for s in _letters(train) for w in padded(s)])
    nltk_ppl = nltk_lm.perplexity([g for s in _letters(held_out) for g in ngrams(padded(s), order)])

    ours = KneserNeyLM().fit(train, vocab, order, discounts=discount).perplexity(held_out)
    assert math.isfinite(nltk_ppl)
    assert ours == pytest.approx(nltk_ppl, rel=1e-3)
    assert ours == pytest.approx(nltk_ppl, rel=1e-9)  # in fact identical models, up to rounding


def test_matches_nltk_stock_pipeline_bigram() -> None:
    """Plain bigram KN == nltk with its stock ``padded_everygram_pipeline`` (to 0.1 %).

    At order 2 nltk pads each sentence as "<s> w1 .. wm </s>"; its bigrams are ours for the document
    w1 .. wm </s> (the end symbol as a vocabulary id, predicted like any token). The only extra n-gram it
    counts that ends in "<s>" is the unigram ("<s>",), which KN never uses. Every word occurs in training,
    so the lowest orders agree as explained in ``test_matches_nltk_left_padded``.
    """
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
    from nltk.util import ngrams

    rng = np.random.default_rng(7)
    vocab, eos = 6, 5
    train = [d[:-1] for d in markov_documents(rng, 40, vocab, eos)]  # sentences without their EOS
    held_out = [d[:-1] for d in markov_documents(rng, 10, vocab, eos)]
    assert {t for d in train for t in d} == set(range(vocab - 1))
    text, vocabulary_text = padded_everygram_pipeline(2, _letters(train))
    nltk_lm = KneserNeyInterpolated(2, discount=0.75)
    nltk_lm.fit(text, vocabulary_text)
    nltk_ppl = nltk_lm.perplexity([g for s in _letters(held_out) for g in ngrams(pad_both_ends(s, n=2), 2)])

    ours = KneserNeyLM().fit([d + [eos] for d in train], vocab, 2, discounts=0.75)
    assert ours.perplexity([d + [eos] for d in held_out]) == pytest.approx(nltk_ppl, rel=1e-3)


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("discounts", [0.75, 1.0, "modified"])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_distributions_sum_to_one(corpus, order, discounts) -> None:
    """Every P(. | context) sums to 1 over the vocabulary and is > 0 everywhere (id 10 is never seen)."""
    train, _, vocab = corpus
    lm = KneserNeyLM().fit(train, vocab, order, discounts)
    seen = tuple(train[0][:4])
    contexts = [
        (),
        seen[:1], seen[:2], seen[:3], seen,  # seen
        (lm.bos,) * 4, (lm.bos, lm.bos, lm.bos, seen[0]),  # start of a document
        (10,), (10, 10, 10, 10), (lm.bos, 10),  # unseen token, unseen everything
        (seen[0], 10, seen[1], seen[2]), (10, seen[0], seen[1], seen[2]),  # partially seen
        (seen[3], seen[2], seen[1], seen[0]),
    ]
    for context in contexts:
        dist = lm.distribution(context)
        assert dist.shape == (vocab,)
        assert abs(dist.sum() - 1) < 1e-9, context
        assert (dist > 0).all(), context
        assert lm.prob(context, 3) == pytest.approx(dist[3], rel=1e-12)


# -------------------------------------------------------------------------------------- documents, errors


def test_documents_are_independent(corpus) -> None:
    """The context resets at each document: scoring documents together == scoring each alone."""
    train, held_out, vocab = corpus
    lm = KneserNeyLM().fit(train, vocab, order=3)
    together = lm.token_log_probs(held_out[:3])
    alone = np.concatenate([lm.token_log_probs([d]) for d in held_out[:3]])
    np.testing.assert_allclose(together, alone, rtol=1e-12)
    first = held_out[0]
    assert together[0] == pytest.approx(math.log(lm.prob((lm.bos, lm.bos), first[0])), rel=1e-12)
    assert together[2] == pytest.approx(math.log(lm.prob(tuple(first[:2]), first[2])), rel=1e-12)


def test_unseen_tokens_have_finite_perplexity(corpus) -> None:
    train, _, vocab = corpus
    lm = KneserNeyLM().fit(train, vocab, order=3)
    assert math.isfinite(lm.perplexity([[10, 10, 10, 11]]))


def test_best_kneser_ney_and_split_documents() -> None:
    """A second-order Markov source: order >= 3 beats the bigram; the returned order is the argmin."""
    rng = np.random.default_rng(1)
    vocab = 50
    table = rng.integers(1, vocab, size=(vocab, vocab))
    stream = [1, 2]
    noise = rng.random(60_000) < 0.2
    draws = rng.integers(1, vocab, size=60_000)
    for i in range(60_000):
        stream.append(int(draws[i]) if noise[i] else int(table[stream[-2], stream[-1]]))
    stream = np.array(stream)
    stream[rng.random(len(stream)) < 0.01] = 0  # id 0 is the EOS between documents
    docs = split_documents(stream, eos_id=0)
    assert all(d[-1] == 0 for d in docs[:-1]) and sum(map(len, docs)) == len(stream)
    best, ppl = best_kneser_ney(docs[:-40], docs[-40:], vocab, orders=(1, 2, 3, 4))
    assert set(ppl) == {1, 2, 3, 4} and best == min(ppl, key=ppl.get)
    assert best >= 3 and ppl[3] < 0.8 * ppl[2]


def test_vectorised_at_scale() -> None:
    """200 k Zipfian tokens, 5-grams over a 16 k vocabulary (a base-(V+1) 5-gram key would overflow int64)."""
    rng = np.random.default_rng(2)
    vocab = 16384
    tokens = (rng.zipf(1.3, size=200_000) - 1) % vocab
    docs = np.array_split(tokens, 400)
    lm = KneserNeyLM().fit(docs[:360], vocab, order=5)
    ppl = lm.perplexity(docs[360:])
    assert math.isfinite(ppl) and ppl > 1
    assert abs(lm.distribution(tuple(docs[0][:4])).sum() - 1) < 1e-9


def test_bad_input(corpus) -> None:
    train, _, vocab = corpus
    with pytest.raises(RuntimeError, match="not fitted"):
        KneserNeyLM().perplexity(train)
    with pytest.raises(ValueError, match="order"):
        KneserNeyLM().fit(train, vocab, order=0)
    with pytest.raises(ValueError, match="vocab_size"):
        KneserNeyLM().fit(train, 0, order=2)
    with pytest.raises(ValueError, match="no documents"):
        KneserNeyLM().fit([], vocab, order=2)
    with pytest.raises(ValueError, match="document 1 must be a non-empty"):
        KneserNeyLM().fit([[1, 2], []], vocab, order=2)
    with pytest.raises(ValueError, match="document 1 has token id 12 outside"):
        KneserNeyLM().fit([[1, 2], [3, 12]], vocab, order=2)
    with pytest.raises(ValueError, match="token id -1 outside"):
        KneserNeyLM().fit([[-1]], vocab, order=2)
    with pytest.raises(TypeError, match="integer token ids"):
        KneserNeyLM().fit([np.array([1.0, 2.0])], vocab, order=2)
    with pytest.raises(TypeError, match="sequence of documents"):
        KneserNeyLM().fit(np.array([1, 2, 3]), vocab, order=2)
    with pytest.raises(ValueError, match="discounts"):
        KneserNeyLM().fit(train, vocab, order=2, discounts="plain")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        KneserNeyLM().fit(train, vocab, order=2, discounts=0.0)
    with pytest.raises(ValueError, match="expected 2 discounts"):
        KneserNeyLM().fit(train, vocab, order=2, discounts=[0.5])
    lm = KneserNeyLM().fit(train, vocab, order=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.perplexity([[vocab]])
    with pytest.raises(ValueError, match="token id 12 outside"):
        lm.prob((1,), vocab)
    with pytest.raises(ValueError, match="context id 13 outside"):
        lm.distribution((vocab + 1,))
