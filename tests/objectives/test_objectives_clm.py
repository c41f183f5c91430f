"""Causal LM loss: hand computation on a 3-token example, masking, reductions, exact accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.objectives import causal_lm_loss, causal_lm_targets, num_predicted_tokens

# One sequence of 3 tokens over a vocabulary of 3; position t predicts token t+1.
IDS = torch.tensor([[0, 2, 1]])
LOGITS = torch.tensor(
    [[[2.0, 1.0, 0.0], [0.5, 0.5, 1.5], [9.0, -9.0, 3.0]]],  # the last row predicts nothing
    dtype=torch.float64,
)
# Position 0 predicts token 2: -log softmax([2, 1, 0])[2].
L0 = -(0.0 - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.0)))
# Position 1 predicts token 1: -log softmax([0.5, 0.5, 1.5])[1].
L1 = -(0.5 - math.log(math.exp(0.5) + math.exp(0.5) + math.exp(1.5)))


def test_mean_matches_hand_computation():
    assert causal_lm_loss(LOGITS, IDS).item() == pytest.approx((L0 + L1) / 2, abs=1e-6)


def test_sum_and_none_match_hand_computation():
    assert causal_lm_loss(LOGITS, IDS, reduction="sum").item() == pytest.approx(L0 + L1, abs=1e-6)
    per_token = causal_lm_loss(LOGITS, IDS, reduction="none")
    assert per_token.shape == (1, 2)
    assert per_token[0, 0].item() == pytest.approx(L0, abs=1e-6)
    assert per_token[0, 1].item() == pytest.approx(L1, abs=1e-6)


def test_labels_and_loss_mask_drop_targets():
    labels = torch.tensor([[0, -100, 1]])  # token 1 (id 2) is not a target
    assert causal_lm_loss(LOGITS, labels=labels).item() == pytest.approx(L1, abs=1e-6)
    masked = causal_lm_loss(LOGITS, IDS, loss_mask=torch.tensor([[1, 0, 1]]))
    assert masked.item() == pytest.approx(L1, abs=1e-6)
    assert causal_lm_targets(IDS, loss_mask=torch.tensor([[1, 0, 1]])).tolist() == [[-100, 1]]
    assert num_predicted_tokens(IDS, loss_mask=torch.tensor([[1, 0, 1]])) == 1


def test_no_targets_gives_zero_not_nan():
    loss = causal_lm_loss(LOGITS, labels=torch.full((1, 3), -100))
    assert loss.item() == 0.0


def test_sum_reduction_makes_gradient_accumulation_exact():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (4, 7), generator=g)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 3:] = 0  # micro-batch 1 holds far fewer predicted tokens than micro-batch 2
    mask[1, 2:] = 0
    logits = torch.randn(4, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)

    full = causal_lm_loss(logits, ids, loss_mask=mask)
    (grad_full,) = torch.autograd.grad(full, logits)

    total = sum(num_predicted_tokens(ids[s], loss_mask=mask[s]) for s in (slice(0, 2), slice(2, 4)))
    acc = sum(
        causal_lm_loss(logits[s], ids[s], loss_mask=mask[s], reduction="sum")
        for s in (slice(0, 2), slice(2, 4))
    )
    (grad_acc,) = torch.autograd.grad(acc / total, logits)
    assert (acc / total).item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(grad_acc, grad_full, rtol=0, atol=1e-12)

    naive = sum(causal_lm_loss(logits[s], ids[s], loss_mask=mask[s]) for s in (slice(0, 2), slice(2, 4))) / 2
    assert abs(naive.item() - full.item()) > 1e-3  # averaging means is not the same objective


def test_matches_transformers_causal_lm_loss():
    loss_utils = pytest.importorskip("transformers.loss.loss_utils")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 13, generator=g)
    labels = torch.randint(0, 13, (3, 6), generator=g)
    labels[0, :2] = -100
    expected = loss_utils.ForCausalLMLoss(logits, labels, vocab_size=13)
    assert torch.allclose(causal_lm_loss(logits, labels=labels), expected, rtol=0, atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="exactly one"):
        causal_lm_loss(LOGITS, IDS, labels=IDS)
    with pytest.raises(ValueError, match="reduction"):
        causal_lm_loss(LOGITS, IDS, reduction="avg")
    with pytest.raises(ValueError, match="do not match"):
        causal_lm_loss(LOGITS[:, :2], IDS)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        causal_lm_loss(LOGITS[:, :1], IDS[:, :1])


def test_pre_shifted_targets_give_the_same_loss():
    """Packed windows arrive as (inputs, targets) cut by the loader: the one loss takes them as they are."""
    torch.manual_seed(0)
    window = torch.randint(0, 11, (3, 9))
    logits = torch.randn(3, 8, 11)
    padded = torch.cat([logits, torch.randn(3, 1, 11)], dim=1)  # a last position that predicts nothing
    expected = causal_lm_loss(padded, window)
    assert torch.allclose(causal_lm_loss(logits, targets=window[:, 1:]), expected)
    for reduction in ("sum", "none"):
        assert torch.allclose(causal_lm_loss(logits, targets=window[:, 1:], reduction=reduction),
                              causal_lm_loss(padded, window, reduction=reduction))
    with pytest.raises(ValueError, match="already shifted"):
        causal_lm_loss(logits, window[:, :8], targets=window[:, 1:])
