"""Shared helpers for the objectives: token cross-entropy with a documented reduction, padding, RNG adapters."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]
# Every random helper here takes one of these: Python's, NumPy's or torch's generator.
Rng = random.Random | np.random.Generator | torch.Generator

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise `ValueError` unless `reduction` is one of "mean", "sum", "none"."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits as float32 (a softmax over a large vocabulary in bf16 loses digits)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: Reduction,
    *, overwrite_logits: bool = False,
) -> torch.Tensor:
    """Cross-entropy of `logits` (..., V) against `targets` (...), skipping `ignore_index`.

    "mean" divides by the number of counted targets (0 when there are none, never NaN), "sum" adds them,
    "none" returns the per-target losses (0 at ignored targets) in the shape of `targets`. "mean" and
    "sum" run `chunked_cross_entropy` (same values, no fp32 copy of the logits; under `torch.compile`,
    F.cross_entropy, which the compiler fuses itself). `overwrite_logits`: see `chunked_cross_entropy`.
    """
    check_reduction(reduction)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} + (V,)")
    vocab = logits.shape[-1]
    flat_logits, flat_targets = logits.reshape(-1, vocab), targets.reshape(-1)
    if reduction == "none" or torch.compiler.is_compiling():
        per_token = F.cross_entropy(upcast(flat_logits), flat_targets, ignore_index=ignore_index, reduction="none")
        if reduction == "none":
            return per_token.view(targets.shape)
        total = per_token.sum()
        return total if reduction == "sum" else total / (flat_targets != ignore_index).sum().clamp(min=1)
    # Writing the gradient into a view would corrupt autograd's bookkeeping (e.g. logits gathered by a
    # tensor-parallel head come out as a view): only logits that own their memory are overwritten.
    overwrite_logits = overwrite_logits and logits._base is None
    counted = flat_targets != ignore_index
    weight = counted.to(torch.promote_types(logits.dtype, torch.float32))
    if reduction == "mean":
        weight = weight / counted.sum().clamp(min=1)
    return chunked_cross_entropy(flat_logits, flat_targets, weight, ignore_index, overwrite_logits=overwrite_logits)


# Rows of logits per chunk: about 2^18 fp32 values (1 MB), so a chunk's softmax stays in cache (fastest on
# the 2-core Xeon of bench/README.md among 2^15..2^20).
CHUNK_ELEMENTS = 1 << 18


def chunked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, ignore_index: int = -100,
    *, overwrite_logits: bool = False,
) -> torch.Tensor:
    """sum_i weight_i * CE(logits_i, targets_i) over (N, V) logits, in fp32 (fp64 for fp64), a few rows at a time.

    `weight` (N,) holds 1/count for a mean, 0 at ignored rows. The gradient, weight_i * (softmax_i -
    onehot_i), is computed with the loss and kept in the logits' dtype, so neither an fp32 copy of bf16
    logits nor their fp32 log-softmax is ever held whole, and the backward has nothing left to compute
    (it scales the gradient in place when the incoming one is not 1, so it runs once). Same loss and
    gradient as `F.cross_entropy(logits.float(), ...)`, to rounding (bf16 gradients: within one bf16 ulp).

    `overwrite_logits=True` writes the gradient over the logits (nothing else may read them afterwards;
    autograd refuses a backward that saved them): no second (N, V) buffer to allocate and fault in.
    No gradient flows to `weight`.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _ChunkedCrossEntropy.apply(logits, targets, weight, ignore_index, overwrite_logits)
    return _chunked_loss(logits, targets, weight, ignore_index, grad=None)


def _chunked_loss(logits, targets, weight, ignore_index, grad):
    """The weighted cross-entropy sum, chunk by chunk; with `grad` (N, V), its gradient written there too."""
    compute = torch.promote_types(logits.dtype, torch.float32)
    safe = targets.masked_fill(targets == ignore_index, 0)[:, None]  # (N, 1); ignored rows weigh 0
    weight = weight.to(compute)[:, None]  # (N, 1)
    total = torch.zeros((), dtype=compute, device=logits.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    for start in range(0, logits.shape[0], rows):
        chunk = slice(start, start + rows)
        log_probs = torch.log_softmax(logits[chunk], dim=-1, dtype=compute)  # (rows, V), a new tensor
        total = total - (log_probs.gather(1, safe[chunk]) * weight[chunk]).sum()
        if grad is not None:  # d total / d logits = weight * (softmax - onehot(target))
            probs = log_probs.exp_().mul_(weight[chunk])
            grad[chunk] = probs.scatter_add_(1, safe[chunk], -weight[chunk])
    return total


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, weight, ignore_index, overwrite_logits):
        grad = logits if overwrite_logits else torch.empty_like(logits)
        total = _chunked_loss(logits, targets, weight, ignore_index, grad)
        ctx.save_for_backward(grad)
        ctx.used = False
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        if ctx.used:
            raise RuntimeError("chunked_cross_entropy: backward runs once (its saved gradient is scaled in place)")
        ctx.used = True
        # In place: a fresh (N, V) tensor would cost more than the scaling. bf16 times a 0-dim fp32 tensor
        # multiplies in fp32 and rounds once. The usual incoming gradient is exactly 1 (on CPU, free to test).
        if grad_total.device.type != "cpu" or float(grad_total) != 1.0:
            grad.mul_(grad_total)
        return grad, None, None, None, None


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int) -> torch.Tensor:
    """Right-pad lists of ids to one length: (N, T_max) long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (N, T_max), right-padded: the one padding helper of lmforge's batches."""
    return pad_sequences(seqs, pad_value), pad_sequences([[1] * len(s) for s in seqs], 0)


def as_rng(rng: Rng | int | None) -> Rng:
    """An int seed or None becomes a NumPy generator; a generator passes through."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, (random.Random, np.random.Generator, torch.Generator)):
        return rng
    raise ValueError(
        f"rng must be random.Random, numpy.random.Generator, torch.Generator or int, got {type(rng)}"
    )


def uniform(rng: Rng) -> float:
    """One draw from U[0, 1)."""
    if isinstance(rng, torch.Generator):
        return float(torch.rand((), generator=rng, device=rng.device))
    return float(rng.random())


def randrange(rng: Rng, n: int) -> int:
    """One integer drawn uniformly from [0, n)."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (), generator=rng, device=rng.device))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    return rng.randrange(n)


def permutation(rng: Rng, n: int) -> list[int]:
    """A uniformly random permutation of range(n)."""
    if isinstance(rng, torch.Generator):
        return torch.randperm(n, generator=rng, device=rng.device).tolist()
    if isinstance(rng, np.random.Generator):
        return rng.permutation(n).tolist()
    perm = list(range(n))
    rng.shuffle(perm)
    return perm
