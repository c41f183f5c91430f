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
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: Reduction
) -> torch.Tensor:
    """Cross-entropy of `logits` (..., V) against `targets` (...), skipping `ignore_index`.

    "mean" divides by the number of counted targets (0 when there are none, never NaN), "sum" adds them,
    "none" returns the per-target losses (0 at ignored targets) in the shape of `targets`.
    """
    check_reduction(reduction)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} + (V,)")
    vocab = logits.shape[-1]
    per_token = F.cross_entropy(
        upcast(logits).reshape(-1, vocab), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).view(targets.shape)
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp(min=1)


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
