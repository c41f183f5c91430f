"""The chunked cross-entropy equals F.cross_entropy (loss and gradient) in fp64, fp32 and bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.objectives import _common, causal_lm_loss, masked_lm_loss
from lmforge.objectives._common import chunked_cross_entropy, token_cross_entropy

VOCAB = 97


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 3 rows (and a ragged last one), so every test crosses chunk boundaries."""
    monkeypatch.setattr(_common, "CHUNK_ELEMENTS", 3 * VOCAB)


def _data(dtype=torch.float32, rows=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, length, VOCAB, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, VOCAB, (rows, length), generator=g)
    targets[0, :4] = -100  # some ignored targets
    targets[2, -1] = -100
    return logits, targets


def _reference(logits, targets, reduction):
    """F.cross_entropy on the upcast logits: the plain path the chunked one replaces."""
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)


def _loss_and_grad(fn, logits, scale=0.375):
    leaf = logits.detach().clone().requires_grad_()
    loss = fn(leaf)
    (loss * scale).backward()  # an incoming gradient other than 1 (e.g. gradient accumulation)
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_equals_f_cross_entropy(reduction, dtype, atol):
    logits, targets = _data(dtype)
    loss, grad = _loss_and_grad(lambda x: token_cross_entropy(x, targets, -100, reduction), logits)
    ref_loss, ref_grad = _loss_and_grad(lambda x: _reference(x, targets, reduction), logits)
    assert loss.dtype == ref_loss.dtype
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=atol)
    torch.testing.assert_close(grad, ref_grad, atol=atol * 1e-2, rtol=atol)
    assert grad[0, :4].abs().max() == 0  # ignored targets get no gradient


def test_bf16_logits_under_autocast_within_one_ulp():
    """bf16 logits (what the LM head gives under autocast): the same fp32 loss, gradients within one bf16 ulp."""
    logits, targets = _data(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad = _loss_and_grad(lambda x: token_cross_entropy(x, targets, -100, "mean"), logits)
        ref_loss, ref_grad = _loss_and_grad(lambda x: _reference(x, targets, "mean"), logits)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    ulp = ref_grad.float().abs().clamp(min=1e-30) * 2.0**-7  # bf16 keeps 8 significant bits
    assert ((grad.float() - ref_grad.float()).abs() <= ulp).all()


def test_overwrite_logits_gives_the_same_gradient_and_no_targets_give_zero():
    logits, targets = _data()
    weight = (targets.flatten() != -100).float() / (targets != -100).sum()
    ref_loss, ref_grad = _loss_and_grad(lambda x: chunked_cross_entropy(x.flatten(0, 1), targets.flatten(), weight),
                                        logits)
    head = torch.randn(logits.shape, requires_grad=True)
    out = head + (logits - head).detach()  # the logits, computed from `head` as an LM head's are from its input
    loss = chunked_cross_entropy(out.flatten(0, 1), targets.flatten(), weight, overwrite_logits=True)
    (loss * 0.375).backward()
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(head.grad, ref_grad)
    torch.testing.assert_close(out.detach(), ref_grad)  # the logits' memory now holds the gradient

    none = torch.full_like(targets, -100)
    loss, grad = _loss_and_grad(lambda x: token_cross_entropy(x, none, -100, "mean"), logits)
    assert loss.item() == 0.0 and grad.abs().max() == 0


def test_backward_runs_once_and_no_grad_computes_the_loss_only():
    logits, targets = _data()
    leaf = logits.clone().requires_grad_()
    loss = token_cross_entropy(leaf, targets, -100, "mean")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(token_cross_entropy(leaf, targets, -100, "mean"), _reference(logits, targets, "mean"))


def test_causal_lm_loss_without_the_last_position_copy_equals_the_sliced_logits():
    """`input_ids`: the last position counts as ignored instead of slicing the logits; same loss and gradient."""
    logits, ids = _data(rows=3, length=8)
    ids = ids.clamp(min=0)
    loss, grad = _loss_and_grad(lambda x: causal_lm_loss(x, ids), logits)
    ref_loss, ref_grad = _loss_and_grad(
        lambda x: F.cross_entropy(x[:, :-1].flatten(0, 1), ids[:, 1:].flatten()), logits)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[:, -1].abs().max() == 0
    assert causal_lm_loss(logits, ids, reduction="none").shape == (3, 7)


def test_masked_lm_loss_on_selected_rows_equals_full_logits():
    logits, labels = _data()
    selected = labels != -100
    full = masked_lm_loss(logits, labels, reduction="sum")
    assert torch.allclose(masked_lm_loss(logits[selected], labels[selected], reduction="sum"), full)
