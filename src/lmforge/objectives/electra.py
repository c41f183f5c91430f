"""ELECTRA replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators", sec. 2).

A small generator G (an MLM) fills the masked positions with samples from its softmax; the discriminator
D predicts for every token whether it was replaced. The objective is

    min  L_MLM(x, G) + lambda * L_Disc(x, D),   lambda = 50,

with no gradient through the sampling (the generator learns only from its MLM loss). A sampled token
equal to the original counts as original, not replaced. G and D share the token (and position)
embeddings (sec. 3.2): build G about 1/4-1/2 the width of D and tie with `share_embeddings`.

Typical step: `masked, labels = mask_tokens(ids, ...)`; `gen_logits = G(masked)`;
`disc_ids, is_replaced = sample_replacements(gen_logits, masked, labels, ids)`;
`disc_logits = D(disc_ids)`; `loss, parts = electra_loss(gen_logits, labels, disc_logits, is_replaced, mask)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import upcast
from .mlm import masked_lm_loss

ELECTRA_DISC_WEIGHT = 50.0


@torch.no_grad()
def sample_replacements(
    generator_logits: torch.Tensor,
    masked_input_ids: torch.Tensor,
    labels: torch.Tensor,
    original_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator inputs (B, T) and is_replaced (B, T) float from generator samples (Clark et al. 2020, sec. 2).

    At each position where `labels != ignore_index`, a token is sampled from softmax(generator_logits /
    temperature); elsewhere the input is unchanged. `is_replaced` is 1 where the result differs from the
    original (a sample equal to the original counts as not replaced). `original_ids` default to the labels
    at masked positions and the input elsewhere. Runs under `no_grad`: nothing flows back through sampling.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if generator_logits.shape[:-1] != masked_input_ids.shape or labels.shape != masked_input_ids.shape:
        raise ValueError(
            f"generator_logits {tuple(generator_logits.shape)}, masked_input_ids {tuple(masked_input_ids.shape)} "
            f"and labels {tuple(labels.shape)} must agree as (B, T, V), (B, T), (B, T)"
        )
    selected = labels != ignore_index  # (B, T)
    if original_ids is None:
        original_ids = torch.where(selected, labels, masked_input_ids)
    disc_input = masked_input_ids.clone()
    if bool(selected.any()):
        probs = torch.softmax(generator_logits[selected].float() / temperature, dim=-1)  # (N, V)
        where = generator.device if generator is not None else probs.device
        sampled = torch.multinomial(probs.to(where), 1, generator=generator).squeeze(-1)  # (N,)
        disc_input[selected] = sampled.to(disc_input)
    is_replaced = (disc_input != original_ids).float()
    return disc_input, is_replaced


def replaced_token_detection_loss(
    disc_logits: torch.Tensor, is_replaced: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of (B, T) discriminator logits vs is_replaced, averaged over non-pad tokens (ELECTRA sec. 2)."""
    if disc_logits.shape != is_replaced.shape:
        raise ValueError(
            f"disc_logits {tuple(disc_logits.shape)} must match is_replaced {tuple(is_replaced.shape)}"
        )
    per_token = F.binary_cross_entropy_with_logits(
        upcast(disc_logits), is_replaced.to(upcast(disc_logits).dtype), reduction="none"
    )  # (B, T)
    if attention_mask is None:
        return per_token.mean()
    weights = attention_mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def electra_loss(
    gen_logits: torch.Tensor,
    labels: torch.Tensor,
    disc_logits: torch.Tensor,
    is_replaced: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    disc_weight: float = ELECTRA_DISC_WEIGHT,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ELECTRA's L_MLM(G) + lambda * L_Disc(D), lambda = 50 (Clark et al. 2020, sec. 2): (total, parts).

    The generator term is the MLM cross-entropy over masked positions; the discriminator term the binary
    cross-entropy over all tokens where `attention_mask` is 1. `parts` holds both terms ("generator",
    "discriminator"), still attached to the graph.
    """
    if disc_weight < 0:
        raise ValueError(f"disc_weight must be >= 0, got {disc_weight}")
    gen = masked_lm_loss(gen_logits, labels, ignore_index)
    disc = replaced_token_detection_loss(disc_logits, is_replaced, attention_mask)
    return gen + disc_weight * disc, {"generator": gen, "discriminator": disc}


def share_embeddings(generator_embedding: nn.Embedding, discriminator_embedding: nn.Embedding) -> None:
    """Make the generator use the discriminator's embedding matrix (ELECTRA sec. 3.2, tied embeddings)."""
    if generator_embedding.weight.shape != discriminator_embedding.weight.shape:
        raise ValueError(
            f"embedding shapes differ: generator {tuple(generator_embedding.weight.shape)} vs "
            f"discriminator {tuple(discriminator_embedding.weight.shape)}; project the generator's hidden "
            "states to the embedding size instead of resizing the table"
        )
    generator_embedding.weight = discriminator_embedding.weight
