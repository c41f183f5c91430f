"""T5 span corruption: seq2seq loss vs a hand computation; exact reconstruction, noise density, span counts."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmforge.objectives import (
    collate_seq2seq,
    noise_span_counts,
    random_spans_noise_mask,
    raw_length_for_input_length,
    seq2seq_loss,
    shift_right,
    span_corrupt,
    span_corruption_lengths,
)

EOS, PAD = 1, 0
SENTINELS = list(range(32099, 31999, -1))  # <extra_id_0> = 32099, <extra_id_1> = 32098, ... as in T5


def _reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """Put each sentinel's span from the target back into the input."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets[:-1]:
        if tok in SENTINELS:
            current = spans.setdefault(tok, [])
        else:
            current.append(tok)
    out: list[int] = []
    for tok in inputs[:-1]:
        out.extend(spans.pop(tok) if tok in SENTINELS else [tok])
    assert not spans  # every span was used
    return out


def test_seq2seq_loss_matches_hand_computation():
    # 3 target tokens over a vocabulary of 3, no shift; the last target is padding (ignored).
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [4.0, 4.0, 4.0]]], dtype=torch.float64)
    targets = torch.tensor([[1, 0, -100]])
    l0 = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0)))
    l1 = -(0.0 - math.log(math.exp(0.0) + math.exp(0.0) + math.exp(3.0)))
    assert seq2seq_loss(logits, targets).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    assert seq2seq_loss(logits, targets, reduction="sum").item() == pytest.approx(l0 + l1, abs=1e-6)


def test_paper_style_example_layout():
    ids = list(range(100, 110))
    mask = random_spans_noise_mask(len(ids), 0.3, 1.5, rng=np.random.default_rng(0))
    inputs, targets = span_corrupt(
        ids,
        noise_density=0.3,
        mean_span_length=1.5,
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        rng=np.random.default_rng(0),
    )
    # Build the expected pair by hand from the mask.
    exp_in, exp_tg, k = [], [], 0
    for i, tok in enumerate(ids):
        if mask[i] and (i == 0 or not mask[i - 1]):
            exp_in.append(SENTINELS[k])
            exp_tg.append(SENTINELS[k])
            k += 1
        (exp_tg if mask[i] else exp_in).append(tok)
    assert inputs == exp_in + [EOS] and targets == exp_tg + [EOS]
    assert sum(mask) == 3 and k == 2  # round(10 * 0.3) = 3 noise tokens in round(3 / 1.5) = 2 spans


@pytest.mark.parametrize("length", [1, 2, 3, 7, 20, 113, 512])
def test_reconstruction_is_exact(length):
    rng = np.random.default_rng(length)
    for _ in range(20):
        ids = rng.integers(2, 32000, size=length).tolist()
        inputs, targets = span_corrupt(ids, sentinel_ids=SENTINELS, eos_id=EOS, rng=rng)
        assert _reconstruct(inputs, targets) == ids
        assert (len(inputs), len(targets)) == span_corruption_lengths(length)


def test_noise_fraction_and_span_count_on_long_input():
    length = 10_000
    mask = random_spans_noise_mask(length, 0.15, 3.0, rng=np.random.default_rng(1))
    starts = sum(m and (i == 0 or not mask[i - 1]) for i, m in enumerate(mask))
    assert sum(mask) == round(length * 0.15) == 1500
    assert starts == round(1500 / 3.0) == 500
    assert not mask[0] and mask[-1]  # non-noise first, noise last, as in T5
    assert noise_span_counts(length, 0.15, 3.0) == (1500, 500)


def test_rng_kinds_tensor_io_and_determinism():
    ids = torch.arange(10, 74)
    for make in (
        lambda: random.Random(7),
        lambda: np.random.default_rng(7),
        lambda: torch.Generator().manual_seed(7),
    ):
        a = span_corrupt(ids, sentinel_ids=SENTINELS, eos_id=EOS, rng=make())
        b = span_corrupt(ids, sentinel_ids=SENTINELS, eos_id=EOS, rng=make())
        assert all(isinstance(t, torch.Tensor) and t.dtype == torch.long for t in a)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert _reconstruct(a[0].tolist(), a[1].tolist()) == ids.tolist()


def test_lengths_helpers_match_t5_defaults():
    assert raw_length_for_input_length(512) == (568, 114)  # T5 / HF run_t5_mlm_flax: 568 raw tokens -> 512
    assert span_corruption_lengths(568) == (512, 114)
    assert span_corruption_lengths(569)[0] == 513


def test_shift_right_and_collate():
    labels = torch.tensor([[5, 6, EOS, -100], [7, EOS, -100, -100]])
    assert shift_right(labels, decoder_start_id=PAD, pad_id=PAD).tolist() == [[0, 5, 6, EOS], [0, 7, EOS, 0]]
    batch = collate_seq2seq(
        [([3, 4, EOS], [9, EOS]), ([3, EOS], [9, 8, EOS])], pad_id=PAD, decoder_start_id=PAD
    )
    assert batch["input_ids"].tolist() == [[3, 4, EOS], [3, EOS, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[9, EOS, -100], [9, 8, EOS]]
    assert batch["decoder_input_ids"].tolist() == [[PAD, 9, EOS], [PAD, 9, 8]]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sentinel"):
        span_corrupt(list(range(100)), sentinel_ids=SENTINELS[:2], eos_id=EOS, rng=0)
    with pytest.raises(ValueError, match="noise_density"):
        span_corrupt([1, 2, 3], noise_density=1.5, sentinel_ids=SENTINELS, eos_id=EOS)
    with pytest.raises(ValueError, match="mean_span_length"):
        span_corrupt([1, 2, 3], mean_span_length=0.5, sentinel_ids=SENTINELS, eos_id=EOS)
    with pytest.raises(ValueError, match="length"):
        span_corrupt([], sentinel_ids=SENTINELS, eos_id=EOS)
    with pytest.raises(ValueError, match="1-D"):
        span_corrupt(torch.zeros(2, 3, dtype=torch.long), sentinel_ids=SENTINELS, eos_id=EOS)
