"""Causal language modelling: predict token t+1 from positions <= t (Radford et al. 2018, "Improving
Language Understanding by Generative Pre-Training", eq. 1: L = -sum_t log P(u_t | u_<t)).

Gradient accumulation over micro-batches with unequal numbers of predicted tokens is exact when each
micro-batch returns `reduction="sum"` and the total is divided once by `num_predicted_tokens` summed over
all micro-batches (averaging per-micro-batch means weights short micro-batches too much).
"""

from __future__ import annotations

import torch

from ._common import Reduction, token_cross_entropy


def causal_lm_targets(
    input_ids: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The next-token targets (B, T-1) for positions 0..T-2, with `ignore_index` where nothing is predicted.

    Give exactly one of `input_ids` (every next token is a target) or `labels` (same alignment as the
    input ids, Hugging Face convention: `ignore_index` marks tokens that are not targets, e.g. padding or a
    prompt). `loss_mask` (B, T), aligned with the input ids, keeps token t as a target only where it is
    nonzero (pass the attention mask to skip padding, or a response mask for instruction tuning).
    """
    if (input_ids is None) == (labels is None):
        raise ValueError("give exactly one of input_ids or labels")
    tokens = input_ids if labels is None else labels
    if tokens.dim() < 1 or tokens.shape[-1] < 2:
        raise ValueError(
            f"need at least 2 tokens per sequence to predict one, got shape {tuple(tokens.shape)}"
        )
    targets = tokens[..., 1:]  # (B, T-1): the token after each position
    if loss_mask is not None:
        if loss_mask.shape != tokens.shape:
            raise ValueError(f"loss_mask {tuple(loss_mask.shape)} must match ids {tuple(tokens.shape)}")
        targets = torch.where(loss_mask[..., 1:].bool(), targets, torch.full_like(targets, ignore_index))
    return targets


def num_predicted_tokens(
    input_ids: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> int:
    """How many tokens `causal_lm_loss` averages over: the divisor for exact gradient accumulation."""
    targets = causal_lm_targets(input_ids, labels=labels, loss_mask=loss_mask, ignore_index=ignore_index)
    return int((targets != ignore_index).sum())


def causal_lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    overwrite_logits: bool = False,
) -> torch.Tensor:
    """Next-token cross-entropy of `logits` (B, T, V) (Radford et al. 2018): the one causal-LM loss.

    Give one of: `input_ids` or unshifted `labels` (B, T) (see `causal_lm_targets`; the shift happens
    here, so the logits at the last position are unused; `labels` at `ignore_index` and `loss_mask` 0
    are not targets: the answer-only mask of chat SFT), or `targets` (B, T) already shifted, one per
    logits position (packed windows whose loader cut inputs and targets apart). "mean" averages over
    predicted tokens (not over sequences) and is 0 when none are predicted; "sum" adds them (divide by
    `num_predicted_tokens` over all micro-batches); "none" returns per-target losses, 0 where ignored.
    `overwrite_logits=True` lets the loss keep its gradient in the logits' memory (a trainer whose logits
    are read by nothing else; see `chunked_cross_entropy`).
    """
    if targets is not None:
        if input_ids is not None or labels is not None or loss_mask is not None:
            raise ValueError("targets are already shifted: give them alone, not with input_ids, labels or loss_mask")
        return token_cross_entropy(logits, targets, ignore_index, reduction, overwrite_logits=overwrite_logits)
    targets = causal_lm_targets(input_ids, labels=labels, loss_mask=loss_mask, ignore_index=ignore_index)
    if logits.shape[:-1] != targets.shape[:-1] + (targets.shape[-1] + 1,):
        raise ValueError(
            f"logits {tuple(logits.shape)} do not match ids of shape (..., {targets.shape[-1] + 1})"
        )
    if reduction == "none":
        return token_cross_entropy(logits[..., :-1, :], targets, ignore_index, reduction)  # (B, T-1)
    # The last position predicts nothing: an ignored target there, instead of a copy of the logits without it.
    padded = torch.nn.functional.pad(targets, (0, 1), value=ignore_index)  # (B, T)
    return token_cross_entropy(logits, padded, ignore_index, reduction, overwrite_logits=overwrite_logits)
