"""MaskedLM's head at the predicted positions only: the same logits, loss and gradients as the full head."""

from __future__ import annotations

import pytest
import torch

from lmforge.models import build_model, get_preset
from lmforge.objectives import masked_lm_loss, nsp_loss, predicted_positions
from lmforge.train.objective_encoder import MaskedLMObjective, NextSentenceObjective

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
CPU = torch.device("cpu")


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 97, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a padded row
    labels = input_ids.masked_fill(torch.rand(input_ids.shape, generator=g) >= 0.3, -100)
    labels[1, 9:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "token_type_ids": (torch.arange(12) >= 6).long().expand(3, 12),
            "next_sentence_label": torch.tensor([0, 1, 0])}


def _model(nsp: bool = False):
    torch.manual_seed(0)
    return build_model(get_preset("bert-tiny", **TINY), task="masked-lm", nsp=nsp)


def test_logits_at_positions_equal_the_full_logits_there():
    model, b = _model().eval(), _batch()
    positions, targets = predicted_positions(b["labels"])
    assert torch.equal(targets, b["labels"][b["labels"] != -100])
    with torch.no_grad():
        full = model(b["input_ids"], b["attention_mask"]).logits  # (B, T, V): inference and parity keep this
        some = model(b["input_ids"], b["attention_mask"], positions=positions).logits  # (N, V)
    assert some.shape == (positions.numel(), 97)
    torch.testing.assert_close(some, full.flatten(0, 1)[positions], atol=1e-5, rtol=1e-5)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("nsp", [False, True])
def test_objective_loss_and_gradients_equal_the_full_logits_loss(nsp):
    """The trainer's MLM (and MLM + NSP) loss on the selected positions = the loss of the full logits, in fp32."""
    b = _batch()
    model = _model(nsp).train()
    objective = NextSentenceObjective() if nsp else MaskedLMObjective()
    loss, _ = objective.loss(model, b, CPU)
    loss.backward()
    fast = _grads(model)

    model.zero_grad(set_to_none=True)
    args = (b["input_ids"], b["attention_mask"]) + ((b["token_type_ids"],) if nsp else ())
    out = model(*args)
    reference = masked_lm_loss(out.logits, b["labels"])
    if nsp:
        reference = reference + nsp_loss(out.nsp_logits, b["next_sentence_label"])
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    slow = _grads(model)
    assert fast.keys() == slow.keys()
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=1e-5, msg=name)

    total, count = objective.eval_sums(model, b, CPU)
    assert count == int((b["labels"] != -100).sum())
    assert total == pytest.approx(float(masked_lm_loss(out.logits.detach(), b["labels"], reduction="sum")), rel=1e-5)


def test_bf16_autocast_loss_within_tolerance():
    """Under bf16 autocast the head's GEMM over fewer rows may round differently: the loss agrees to 1e-3."""
    b, model = _batch(), _model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        fast, _ = MaskedLMObjective().loss(model, b, CPU)
        full = masked_lm_loss(model(b["input_ids"], b["attention_mask"]).logits, b["labels"])
    assert fast.dtype == torch.float32
    assert abs(fast.item() - full.item()) < 1e-3
