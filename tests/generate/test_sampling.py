"""Temperature, top-k and top-p sampling against hand computations and transformers' logits warpers.

Each case names the ids that survive, worked out by hand in the comments (softmax masses to four
places), and the renormalised probabilities `exp(l_i / T) / sum_kept exp(l_j / T)` computed with
`math` in float64. `sampling_probs` must equal them; `sample_next` must never draw a removed id and
its empirical frequencies over N seeded draws must lie within 5 binomial standard deviations,
5 * sqrt(p (1 - p) / N), of them (a false alarm about once in 10^6 per id).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lmforge.generate import generate, sample_next, sampling_probs
from lmforge.models import build_model, get_preset

N = 200_000
LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
# softmax(LOGITS)       = .5609 .2063 .1252 .0759 .0279 .0038, prefix masses .5609 .7672 .8924 .9683 .9962
# softmax(LOGITS / 2)   = .3634 .2204 .1716 .1337 .0811 .0298, prefix masses .3634 .5838 .7554 .8891
# softmax(LOGITS / 0.5) = .8292 .1122 .0413 .0152 .0021 .0000, prefix masses .8292 .9414
# softmax(LOGITS[:4] / 2) = .4087 .2479 .1931 .1504 (after top-k 4), prefix masses .4087 .6566
# softmax(LOGITS[:3] / 0.5) = .8438 .1142 .0420 (after top-k 3), prefix masses .8438 .9580
CASES = [
    # (temperature, top_k, top_p, ids kept)
    (1.0, None, None, [0, 1, 2, 3, 4, 5]),
    (2.0, None, None, [0, 1, 2, 3, 4, 5]),
    (0.5, None, None, [0, 1, 2, 3, 4, 5]),
    (1.0, 3, None, [0, 1, 2]),
    (1.0, 1, None, [0]),
    (1.0, 100, None, [0, 1, 2, 3, 4, 5]),  # k beyond the vocabulary keeps everything
    (1.0, 0, None, [0, 1, 2, 3, 4, 5]),  # 0 switches top-k off, as in transformers
    (1.0, None, 0.7, [0, 1]),  # .5609 < .7 <= .7672
    (1.0, None, 0.9, [0, 1, 2, 3]),  # .8924 < .9 <= .9683
    (1.0, None, 0.5, [0]),  # the first id alone already holds .5609
    (1.0, None, 0.0, [0]),  # always at least one id
    (1.0, None, 1.0, [0, 1, 2, 3, 4, 5]),
    (2.0, None, 0.6, [0, 1, 2]),  # the temperature flattens first: .5838 < .6 <= .7554
    (0.5, None, 0.9, [0, 1]),  # ... or sharpens: .8292 < .9 <= .9414
    (2.0, 4, 0.6, [0, 1]),  # top-p on the top-k-renormalised distribution: .4087 < .6 <= .6566
    (0.5, 3, 0.99, [0, 1, 2]),  # top-k binds first: .9580 < .99 <= 1 (alone, top-p .99 keeps 4 ids)
]


def _hand(logits: list[float], temperature: float, kept: list[int]) -> list[float]:
    """exp(l / T) renormalised over the kept ids, zero elsewhere (float64)."""
    z = sum(math.exp(logits[i] / temperature) for i in kept)
    return [math.exp(x / temperature) / z if i in kept else 0.0 for i, x in enumerate(logits)]


def _hf(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """transformers' warpers in `generate`'s order (temperature, top-k, top-p), then softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone().float())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)


def _draw(logits: list[float] | torch.Tensor, n: int = N, seed: int = 0, **kw) -> torch.Tensor:
    """n seeded draws of `sample_next`, one per row of a batch of n copies."""
    row = torch.as_tensor(logits, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    return sample_next(row.expand(n, -1), generator=g, **kw)


def _assert_frequencies(draws: torch.Tensor, probs: list[float]) -> None:
    counts = torch.bincount(draws, minlength=len(probs)).double() / len(draws)
    for i, p in enumerate(probs):
        if p == 0.0:
            assert counts[i] == 0, f"id {i} was removed but drawn {int(counts[i] * len(draws))} times"
        else:
            assert abs(float(counts[i]) - p) <= 5 * math.sqrt(p * (1 - p) / len(draws)), (i, float(counts[i]), p)


@pytest.mark.parametrize("temperature, top_k, top_p, kept", CASES)
def test_distribution_matches_hand_computation(temperature, top_k, top_p, kept):
    expected = torch.tensor(_hand(LOGITS, temperature, kept), dtype=torch.float64)
    probs = sampling_probs(torch.tensor([LOGITS]), temperature, top_k, top_p)[0].double()
    assert (probs > 0).nonzero().flatten().tolist() == kept
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(_hf(torch.tensor([LOGITS]), temperature, top_k, top_p)[0].double(), expected, atol=1e-6)


@pytest.mark.parametrize("temperature, top_k, top_p, kept", CASES)
def test_sample_frequencies_match_hand_computation(temperature, top_k, top_p, kept):
    draws = _draw(LOGITS, temperature=temperature, top_k=top_k, top_p=top_p)
    assert set(draws.tolist()) <= set(kept)
    _assert_frequencies(draws, _hand(LOGITS, temperature, kept))


@pytest.mark.parametrize("logits, top_k, kept", [
    ([1.0, 3.0, 3.0, 2.0, 0.0], 2, [1, 2]),  # two ids share the top value
    ([1.0, 3.0, 3.0, 2.0, 0.0], 3, [1, 2, 3]),
    ([3.0, 2.0, 2.0, 1.0], 2, [0, 1, 2]),  # an id tied with the k-th is kept too (transformers does the same)
    ([3.0, 2.0, 2.0, 1.0], 1, [0]),
])
def test_top_k_ties(logits, top_k, kept):
    probs = sampling_probs(torch.tensor([logits]), 1.0, top_k=top_k)[0].double()
    expected = torch.tensor(_hand(logits, 1.0, kept), dtype=torch.float64)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(_hf(torch.tensor([logits]), 1.0, top_k, None)[0].double(), expected, atol=1e-6)
    _assert_frequencies(_draw(logits, top_k=top_k, temperature=1.0), expected.tolist())


@pytest.mark.parametrize("top_p, n_kept", [(0.25, 1), (0.26, 2), (0.5, 2), (0.51, 3), (0.75, 3), (0.76, 4)])
def test_top_p_at_the_exact_boundary(top_p, n_kept):
    """Four equal logits: prefix masses are exactly .25 .5 .75 1 in float, so p = .5 needs 2 ids, not 3.

    (The previous implementation kept one id too many whenever a prefix held exactly top_p.)
    """
    logits = [0.0, 0.0, 0.0, 0.0]
    probs = sampling_probs(torch.tensor([logits]), 1.0, top_p=top_p)[0]
    assert int((probs > 0).sum()) == n_kept
    assert torch.allclose(probs[probs > 0], torch.full((n_kept,), 1 / n_kept))
    assert int((_hf(torch.tensor([logits]), 1.0, None, top_p)[0] > 0).sum()) == n_kept
    draws = _draw(logits, n=20_000, temperature=1.0, top_p=top_p)
    assert len(set(draws.tolist())) == n_kept


def test_random_logits_keep_what_transformers_keeps():
    """Many random rows and settings: the same kept set and the same probabilities as the HF warpers."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    for temperature in (0.3, 1.0, 1.7):
        for top_k in (None, 1, 5, 20):
            for top_p in (None, 0.1, 0.5, 0.9, 0.99):
                ours = sampling_probs(logits, temperature, top_k, top_p)
                ref = _hf(logits, temperature, top_k, top_p)
                assert torch.equal(ours > 0, ref > 0), (temperature, top_k, top_p)
                assert torch.allclose(ours, ref, atol=1e-6)


def test_temperature_zero_is_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=g)
    best = logits.argmax(-1)
    for top_k, top_p in ((None, None), (5, None), (None, 0.3), (3, 0.9)):
        assert torch.equal(sample_next(logits, 0.0, top_k, top_p, generator=g), best)
        assert torch.equal(sampling_probs(logits, 0.0, top_k, top_p), torch.eye(50)[best])


def test_batch_rows_are_sampled_independently():
    """Two rows with different distributions in one call: each row's marginal is its own, and the joint
    frequency of every pair of ids is the product of the marginals."""
    a, b = [1.0, 0.0, -1.0], [-0.5, 0.5, 0.0, 1.5]
    pa, pb = _hand(a, 1.0, [0, 1, 2]), _hand(b, 1.0, [0, 1, 2, 3])
    batch = torch.full((2, 4), float("-inf"))
    batch[0, :3], batch[1] = torch.tensor(a), torch.tensor(b)
    n = N // 2
    g = torch.Generator().manual_seed(0)
    draws = sample_next(batch.repeat(n, 1), 1.0, generator=g).view(n, 2)
    _assert_frequencies(draws[:, 0], pa + [0.0])
    _assert_frequencies(draws[:, 1], pb)
    _assert_frequencies(draws[:, 0] * 4 + draws[:, 1], [x * y for x in pa + [0.0] for y in pb])


def test_seeded_draws_repeat_and_seeds_differ():
    first, again, other = _draw(LOGITS, n=1000, seed=3, temperature=1.0), _draw(LOGITS, n=1000, seed=3, temperature=1.0), \
        _draw(LOGITS, n=1000, seed=4, temperature=1.0)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="top_k=-1"):
        sampling_probs(torch.zeros(1, 3), 1.0, top_k=-1)
    with pytest.raises(ValueError, match="top_p=1.5"):
        sampling_probs(torch.zeros(1, 3), 1.0, top_p=1.5)


def test_generate_with_top_k_1_is_greedy_and_seeded_sampling_repeats():
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   d_ff=64, max_seq_len=64, init_std=0.2)).eval()
    ids = torch.randint(0, 97, (2, 5))
    greedy = generate(model, ids, 12)
    assert torch.equal(generate(model, ids, 12, temperature=1.0, top_k=1), greedy)
    sampled = [generate(model, ids, 12, temperature=1.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], sampled[2])
    assert not torch.equal(sampled[0], greedy)
