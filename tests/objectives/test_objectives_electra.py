"""ELECTRA: loss vs a hand computation, sampling semantics (equal = not replaced), no gradient through sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.objectives import electra_loss, mask_tokens, sample_replacements, share_embeddings

MASK = 3


def test_electra_loss_matches_hand_computation():
    # 3 tokens, vocabulary of 3; token 1 was masked (original id 2); token 2 is padding.
    gen_logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 2, -100]])
    disc_logits = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    is_replaced = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    attention_mask = torch.tensor([[1, 1, 0]])

    gen = -(2.0 - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(2.0)))
    bce_original = math.log(1 + math.exp(0.5))  # -log(1 - sigmoid(0.5))
    bce_replaced = math.log(1 + math.exp(1.0))  # -log(sigmoid(-1.0))
    disc = (bce_original + bce_replaced) / 2  # the pad token does not count
    total, parts = electra_loss(gen_logits, labels, disc_logits, is_replaced, attention_mask)
    assert parts["generator"].item() == pytest.approx(gen, abs=1e-6)
    assert parts["discriminator"].item() == pytest.approx(disc, abs=1e-6)
    assert total.item() == pytest.approx(gen + 50.0 * disc, abs=1e-6)
    total_1, _ = electra_loss(gen_logits, labels, disc_logits, is_replaced, attention_mask, disc_weight=1.0)
    assert total_1.item() == pytest.approx(gen + disc, abs=1e-6)


def test_sample_equal_to_original_is_not_replaced():
    original = torch.tensor([[5, 6, 7, 8]])
    masked = torch.tensor([[5, MASK, MASK, 8]])
    labels = torch.tensor([[-100, 6, 7, -100]])
    logits = torch.full((1, 4, 10), -50.0)
    logits[0, 1, 6] = 50.0  # the generator is sure of the original token at position 1
    logits[0, 2, 9] = 50.0  # and sure of a wrong token at position 2
    disc_ids, is_replaced = sample_replacements(
        logits, masked, labels, original, torch.Generator().manual_seed(0)
    )
    assert disc_ids.tolist() == [[5, 6, 9, 8]]
    assert is_replaced.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    assert is_replaced.dtype == torch.float32
    # original_ids default to the labels at masked positions.
    assert torch.equal(
        sample_replacements(logits, masked, labels, generator=torch.Generator())[1], is_replaced
    )


def test_replaced_fraction_under_a_uniform_generator():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(
        4, 9, (64, 128), generator=g
    )  # 5 real ids: a sample hits the original 1/5 of the time
    masked, labels = mask_tokens(
        ids, mask_token_id=MASK, vocab_size=9, special_ids={0, 1, 2, MASK}, generator=g
    )
    logits = torch.full((64, 128, 9), -1e4)
    logits[..., 4:] = 0.0
    disc_ids, is_replaced = sample_replacements(logits, masked, labels, ids, generator=g)
    selected = labels != -100
    assert torch.equal(disc_ids[~selected], ids[~selected]) and not is_replaced[~selected].any()
    assert is_replaced[selected].mean().item() == pytest.approx(0.8, abs=0.02)
    assert not (disc_ids == MASK).any()


def test_no_gradient_flows_through_sampling():
    torch.manual_seed(0)
    embed = nn.Embedding(10, 4)
    gen_head, disc_head = nn.Linear(4, 10), nn.Linear(4, 1)
    ids = torch.tensor([[4, 5, 6]])
    masked, labels = torch.tensor([[4, MASK, 6]]), torch.tensor([[-100, 5, -100]])
    gen_logits = gen_head(embed(masked))  # (1, 3, 10)
    disc_ids, is_replaced = sample_replacements(
        gen_logits, masked, labels, ids, torch.Generator().manual_seed(0)
    )
    assert not disc_ids.requires_grad and not is_replaced.requires_grad
    disc_logits = disc_head(embed(disc_ids)).squeeze(-1)  # (1, 3)
    _, parts = electra_loss(gen_logits, labels, disc_logits, is_replaced)
    parts["discriminator"].backward()
    assert gen_head.weight.grad is None  # the discriminator loss does not reach the generator
    assert disc_head.weight.grad is not None


def test_share_embeddings_ties_the_tables():
    gen_emb, disc_emb = nn.Embedding(10, 4), nn.Embedding(10, 4)
    share_embeddings(gen_emb, disc_emb)
    assert gen_emb.weight is disc_emb.weight
    (gen_emb(torch.tensor([1])).sum() + disc_emb(torch.tensor([1])).sum()).backward()
    assert disc_emb.weight.grad[1].tolist() == [2.0] * 4  # both uses accumulate into one table
    with pytest.raises(ValueError, match="shapes differ"):
        share_embeddings(nn.Embedding(10, 2), nn.Embedding(10, 4))


def test_bad_arguments_raise():
    logits, ids = torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        sample_replacements(logits, ids, ids, temperature=0.0)
    with pytest.raises(ValueError, match="must agree"):
        sample_replacements(logits, ids[:, :2], ids)
    with pytest.raises(ValueError, match="disc_weight"):
        electra_loss(logits, ids, torch.zeros(1, 3), torch.zeros(1, 3), disc_weight=-1.0)
