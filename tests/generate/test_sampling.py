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
from transformers.generation import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmforge.generate import generate
from lmforge.generate.sampling import (
    BatchSampler,
    SamplingParams,
    apply_penalties,
    filter_logits,
    sample_next,
    sampling_probs,
)
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


# ----------------------------------------------------------------------------- penalties and min-p

def test_repetition_penalty_by_hand():
    """CTRL's rule: a seen id's positive logit is divided by r, a negative one multiplied; unseen ids untouched."""
    logits = torch.tensor([[2.0, -1.0, 0.0, 3.0, -2.0]])
    seen = torch.tensor([[True, True, True, False, False]])
    out = apply_penalties(logits, seen, torch.zeros(1, 5, dtype=torch.int32), repetition_penalty=2.0)
    assert out.tolist() == [[1.0, -2.0, 0.0, 3.0, -2.0]]


def test_presence_and_frequency_penalties_by_hand():
    """OpenAI: logit -= frequency * count + presence * (count > 0), over the output's counts only."""
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    counts = torch.tensor([[0, 1, 3, 0]], dtype=torch.int32)
    seen = torch.tensor([[False, True, True, True]])  # id 3 is in the prompt only: presence/frequency ignore it
    out = apply_penalties(logits, seen, counts, presence_penalty=0.5, frequency_penalty=0.25)
    assert out.tolist() == [[1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5, 1.0]]
    negative = apply_penalties(logits, seen, counts, presence_penalty=-1.0, frequency_penalty=-0.5)
    assert negative.tolist() == [[1.0, 2.5, 3.5, 1.0]]


def test_penalties_match_transformers_and_the_openai_formula_per_row():
    """Random logits and histories, each row with its own penalties: transformers' repetition penalty over
    prompt + output ids, then OpenAI's formula written out element by element."""
    g = torch.Generator().manual_seed(0)
    n, vocab = 6, 40
    logits = torch.randn(n, vocab, generator=g) * 3
    prompts = [torch.randint(0, vocab, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g) for _ in range(n)]
    outputs = [torch.randint(0, vocab, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g) for _ in range(n)]
    rep = torch.tensor([1.0, 1.3, 0.7, 2.0, 1.1, 1.0])
    presence = torch.tensor([0.0, 0.5, -0.3, 1.0, 2.0, -2.0])
    frequency = torch.tensor([0.0, 0.2, 0.4, -0.1, 1.5, 0.3])
    seen = torch.zeros(n, vocab, dtype=torch.bool)
    counts = torch.zeros(n, vocab, dtype=torch.int32)
    for i in range(n):
        seen[i, prompts[i]] = True
        seen[i, outputs[i]] = True
        counts[i] += torch.bincount(outputs[i], minlength=vocab).int()
    ours = apply_penalties(logits, seen, counts, rep, presence, frequency)
    for i in range(n):
        history = torch.cat([prompts[i], outputs[i]])[None]
        ref = RepetitionPenaltyLogitsProcessor(float(rep[i]))(history, logits[i:i + 1].clone())[0]
        for j in range(vocab):
            c = int((outputs[i] == j).sum())
            ref[j] -= c * float(frequency[i]) + float(c > 0) * float(presence[i])
        assert torch.allclose(ours[i], ref, atol=1e-5), i


def _hf_warpers(logits, temperature, top_k, top_p, min_p):
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone().float())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p > 0.0:
        scores = MinPLogitsWarper(min_p)(None, scores)
    return scores


@pytest.mark.parametrize("min_p, kept", [
    (0.0, [0, 1, 2, 3, 4, 5]),
    (0.1, [0, 1, 2, 3]),  # p / p_max = 1 .3679 .2231 .1353 .0498 .0067
    (0.3, [0, 1]),
    (0.2231, [0, 1, 2]),  # just below exp(-1.5) = .22313
    (1.0, [0]),  # only the most likely id
])
def test_min_p_by_hand(min_p, kept):
    expected = torch.tensor(_hand(LOGITS, 1.0, kept), dtype=torch.float64)
    probs = filter_logits(torch.tensor([LOGITS]), min_p=min_p).softmax(-1)[0].double()
    assert (probs > 0).nonzero().flatten().tolist() == kept
    assert torch.allclose(probs, expected, atol=1e-6)


def test_filters_with_per_row_tensors_match_transformers_row_by_row():
    """Every row its own temperature, top-k, top-p and min-p, in one call: the same kept ids and the same
    logits as transformers' warpers applied in generate's order to that row alone."""
    g = torch.Generator().manual_seed(1)
    settings = [(t, k, p, m) for t in (0.4, 1.0, 1.8) for k in (0, 1, 7, 50) for p in (1.0, 0.3, 0.8, 0.95)
                for m in (0.0, 0.05, 0.3)]
    logits = torch.randn(len(settings), 64, generator=g) * 3
    temperature, top_k, top_p, min_p = (torch.tensor(col) for col in zip(*settings))
    ours = filter_logits(logits, temperature.float(), top_k, top_p.double(), min_p.float())
    for i, (t, k, p, m) in enumerate(settings):
        ref = _hf_warpers(logits[i:i + 1], t, k, p, m)[0]
        assert torch.equal(torch.isfinite(ours[i]), torch.isfinite(ref)), settings[i]
        assert torch.allclose(ours[i].softmax(-1), ref.softmax(-1), atol=1e-6), settings[i]


# ----------------------------------------------------------------------------- SamplingParams

def test_default_params_are_valid():
    SamplingParams().validate()
    SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=1.0, repetition_penalty=0.5, presence_penalty=-2,
                   frequency_penalty=2, stop=("\n", "User:"), stop_token_ids=(7,), seed=0, logprobs=20).validate()


def test_bad_params_name_every_field_and_its_range():
    bad = SamplingParams(max_tokens=0, temperature=-0.5, top_k=-1, top_p=0.0, min_p=1.5, repetition_penalty=0.0,
                         presence_penalty=2.5, frequency_penalty=-3.0, stop=("",), stop_token_ids=(-1,),
                         seed=-1, logprobs=21)
    with pytest.raises(ValueError) as err:
        bad.validate()
    message = str(err.value)
    for text in ("max_tokens=0", "temperature=-0.5", "top_k=-1", "top_p=0.0", "min_p=1.5", "repetition_penalty=0.0",
                 "presence_penalty=2.5", "frequency_penalty=-3.0", "stop=('',)", "stop_token_ids=(-1,)", "seed=-1",
                 "logprobs=21", "0 < top_p <= 1", "-2 to 2", "from 0 to 20"):
        assert text in message, text
    with pytest.raises(ValueError, match="stop=.*at most 16"):
        SamplingParams(stop=tuple(str(i) for i in range(17))).validate()
    with pytest.raises(ValueError, match="temperature=nan"):
        SamplingParams(temperature=float("nan")).validate()
    with pytest.raises(ValueError, match="top_k=2.0"):
        SamplingParams(top_k=2.0).validate()


# ----------------------------------------------------------------------------- BatchSampler

VOCAB = 50


def _logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def _run(sampler: BatchSampler, rows: list[int], steps: int, seed: int = 0) -> list[list[int]]:
    """`steps` calls, every row seeing the same random logits at each step; the ids each row drew, in order."""
    out = []
    for step in range(steps):
        out.append(sampler(_logits(1, seed + step).expand(len(rows), -1), rows).token_ids.tolist())
    return [list(col) for col in zip(*out)]


def test_seeded_rows_repeat_differ_by_seed_and_ignore_their_neighbours():
    params = dict(temperature=1.0, top_p=0.9, max_tokens=8)

    def draws(layout: dict[int, SamplingParams]) -> dict[int, list[int]]:
        sampler = BatchSampler(8, VOCAB)
        for row, p in layout.items():
            sampler.set_row(row, p, [1, 2, 3])
        rows = sorted(layout)
        return dict(zip(rows, _run(sampler, rows, 20)))

    alone = draws({0: SamplingParams(seed=5, **params)})[0]
    again = draws({3: SamplingParams(seed=5, **params)})[3]
    crowded = draws({1: SamplingParams(seed=9, **params), 2: SamplingParams(**params),
                     4: SamplingParams(seed=5, **params), 6: SamplingParams(temperature=0.0)})
    other = draws({0: SamplingParams(seed=6, **params)})[0]
    assert alone == again == crowded[4]
    assert alone != other
    assert len(set(alone)) > 3  # really sampled


def test_first_seeded_draw_equals_sample_next_with_the_same_seed():
    sampler = BatchSampler(2, VOCAB)
    sampler.set_row(1, SamplingParams(temperature=0.7, top_k=10, top_p=0.8, seed=123), [])
    logits = _logits(1)
    ours = sampler(logits, [1]).token_ids
    ref = sample_next(logits, 0.7, 10, 0.8, generator=torch.Generator().manual_seed(123))
    assert torch.equal(ours, ref)


def test_greedy_rows_take_the_argmax_of_the_penalised_logits():
    sampler = BatchSampler(4, VOCAB)
    sampler.set_row(0, SamplingParams(temperature=0.0), [])
    sampler.set_row(2, SamplingParams(temperature=0.0, top_k=3, top_p=0.1, seed=1), [])
    sampler.set_row(3, SamplingParams(temperature=0.0, repetition_penalty=100.0), [])
    logits = _logits(3)
    best = logits.argmax(-1)
    assert torch.equal(sampler(logits, [0, 2, 3]).token_ids, best)
    # Row 3 now penalises its own token so heavily that the argmax moves to the runner-up.
    second = sampler(logits, [0, 2, 3]).token_ids
    assert second[:2].tolist() == best[:2].tolist()
    assert int(second[2]) == int(logits[2].topk(2).indices[1])


def test_penalties_follow_the_rows_history():
    """Frequency penalty counts the tokens each row drew; the prompt counts for the repetition penalty only."""
    sampler = BatchSampler(2, 4)
    sampler.set_row(0, SamplingParams(temperature=0.0, frequency_penalty=0.6), [0, 0, 0])
    sampler.set_row(1, SamplingParams(temperature=0.0, repetition_penalty=3.0), [0])
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0], [1.0, 0.5, 0.0, -1.0]])
    # Row 0: 1.0 > 0.5 (the prompt's three 0s do not count) -> 0; then 0.4 < 0.5 -> 1; then 0.4 vs -0.1 -> 0.
    # Row 1: 0 is in the prompt: 1/3 < 0.5 -> 1; then 0.5/3 vs 1/3 -> 0; then both seen: 1/3 > 1/6 -> 0.
    assert _steps(sampler, logits, 3) == [[0, 1, 0], [1, 0, 0]]
    sampler.clear_row(0)
    sampler.set_row(0, SamplingParams(temperature=0.0), [])
    assert sampler(logits[:1], [0]).token_ids.tolist() == [0]


def _steps(sampler, logits, n):
    return [list(col) for col in zip(*(sampler(logits, [0, 1]).token_ids.tolist() for _ in range(n)))]


def test_logprobs_are_log_softmax_of_the_raw_logits():
    sampler = BatchSampler(3, VOCAB)
    sampler.set_row(0, SamplingParams(temperature=0.8, repetition_penalty=1.5, logprobs=0, seed=0), [1, 2])
    sampler.set_row(1, SamplingParams(temperature=0.0, logprobs=5), [])
    sampler.set_row(2, SamplingParams(temperature=1.0, top_k=4, seed=1), [])
    logits = _logits(3).to(torch.bfloat16)  # any dtype: logprobs in float32
    out = sampler(logits, [0, 1, 2])
    ref = torch.log_softmax(logits.float(), -1)
    assert out.logprobs.dtype == torch.float32
    assert torch.allclose(out.logprobs, ref.gather(1, out.token_ids[:, None])[:, 0])
    assert out.top_ids.shape == (3, 5)
    assert torch.equal(out.top_ids, ref.topk(5).indices)
    assert torch.allclose(out.top_logprobs, ref.topk(5).values)
    assert int(out.token_ids[1]) == int(out.top_ids[1, 0])  # greedy: its own top choice
    quiet = BatchSampler(1, VOCAB)
    quiet.set_row(0, SamplingParams(), [])
    none = quiet(_logits(1), [0])
    assert none.logprobs is None and none.top_ids is None and none.top_logprobs is None


def test_sampler_draws_follow_the_filtered_distribution():
    """Many seeded rows of one setting at once: frequencies within 5 sigma of the transformers distribution."""
    n = 2000
    sampler = BatchSampler(n, len(LOGITS))
    for row in range(n):
        sampler.set_row(row, SamplingParams(temperature=2.0, top_k=4, top_p=0.6, seed=row), [])
    draws = sampler(torch.tensor([LOGITS]).expand(n, -1), list(range(n))).token_ids
    _assert_frequencies(draws, _hand(LOGITS, 2.0, [0, 1]))


def test_sampler_rejects_rows_without_a_request_and_bad_prompts():
    sampler = BatchSampler(2, VOCAB)
    with pytest.raises(ValueError, match=r"rows \[1\] have no request"):
        sampler(_logits(1), [1])
    with pytest.raises(ValueError, match="prompt ids"):
        sampler.set_row(0, SamplingParams(), [VOCAB])
    with pytest.raises(ValueError, match="top_p=2"):
        sampler.set_row(0, SamplingParams(top_p=2), [])


@pytest.mark.parametrize("scale", [4.0, 0.05])  # peaked (the candidates hold top_p) and flat (a full sort is needed)
def test_top_p_over_a_large_vocabulary_equals_transformers(scale, monkeypatch):
    import lmforge.generate.sampling as sampling

    torch.manual_seed(0)
    logits = torch.randn(4, 20_000) * scale
    top_p = torch.tensor([0.5, 0.9, 0.95, 0.97])
    ours = filter_logits(logits, 1.0, 0, top_p.double())
    for row, p in enumerate(top_p.tolist()):
        ref = TopPLogitsWarper(p)(None, logits[row:row + 1].clone())
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(ref[0])), (scale, p)
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", 10**9)  # the full sort, always
    assert torch.equal(torch.isinf(filter_logits(logits, 1.0, 0, top_p.double())), torch.isinf(ours))
    kept = (~torch.isinf(ours)).sum(-1)
    assert (kept < 1024).all() if scale > 1 else (kept > 1024).all()  # both paths really ran
