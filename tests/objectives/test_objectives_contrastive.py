"""SimCSE / InfoNCE: loss vs a hand computation and vs cross_entropy on the similarity matrix; pooling; views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.objectives import cosine_similarity_matrix, info_nce_loss, mean_pool, simcse_views, split_views


def test_info_nce_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    tau = 0.5
    # cos(a0, b0) = 1/sqrt(2), cos(a0, b1) = 0, cos(a1, b0) = 1/sqrt(2), cos(a1, b1) = 1.
    s00, s01, s10, s11 = (1 / math.sqrt(2)) / tau, 0.0 / tau, (1 / math.sqrt(2)) / tau, 1.0 / tau
    l0 = -(s00 - math.log(math.exp(s00) + math.exp(s01)))
    l1 = -(s11 - math.log(math.exp(s10) + math.exp(s11)))
    assert info_nce_loss(a, b, temperature=tau).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # b -> a direction: columns become rows.
    m0 = -(s00 - math.log(math.exp(s00) + math.exp(s10)))
    m1 = -(s11 - math.log(math.exp(s01) + math.exp(s11)))
    sym = info_nce_loss(a, b, temperature=tau, symmetric=True).item()
    assert sym == pytest.approx(((l0 + l1) / 2 + (m0 + m1) / 2) / 2, abs=1e-6)


def test_info_nce_equals_cross_entropy_on_similarity_matrix():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)  # (5, 5)
    assert torch.allclose(cosine_similarity_matrix(a, b), sim, rtol=0, atol=1e-12)
    targets = torch.arange(5)
    assert torch.allclose(info_nce_loss(a, b), F.cross_entropy(sim / 0.05, targets), rtol=0, atol=1e-9)
    hard = F.cosine_similarity(a.unsqueeze(1), c.unsqueeze(0), dim=-1)
    expected = F.cross_entropy(torch.cat([sim, hard], 1) / 0.05, targets)  # in-batch + hard negatives
    assert torch.allclose(info_nce_loss(a, b, hard_negatives=c), expected, rtol=0, atol=1e-9)


def test_mean_pool_skips_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 4.0]]
    assert mean_pool(hidden, torch.tensor([[0, 0, 0]])).tolist() == [[0.0, 0.0]]  # no NaN on empty rows


def test_unsupervised_simcse_views_differ_only_by_dropout():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Embedding(20, 16), nn.Dropout(0.1))
    ids = torch.randint(0, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    doubled_ids, doubled_mask = simcse_views(ids, mask)
    assert doubled_ids.shape == (8, 6) and torch.equal(doubled_ids[4:], ids)

    encoder.train()
    emb_a, emb_b = split_views(mean_pool(encoder(doubled_ids), doubled_mask))  # (4, 16) each
    assert not torch.equal(emb_a, emb_b)  # dropout is the only noise
    loss = info_nce_loss(emb_a, emb_b)
    loss.backward()
    assert loss.item() > 0 and encoder[0].weight.grad is not None

    encoder.eval()
    emb_a, emb_b = split_views(mean_pool(encoder(doubled_ids), doubled_mask))
    assert torch.equal(emb_a, emb_b)


def test_bad_arguments_raise():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(a, a, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        info_nce_loss(a, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="even"):
        split_views(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(torch.zeros(2, 3, 4), torch.zeros(2, 4))
