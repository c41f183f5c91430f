"""Contrastive sentence embeddings with in-batch negatives (Gao et al. 2021, "SimCSE: Simple Contrastive
Learning of Sentence Embeddings", eq. 1 and 5; the InfoNCE loss of van den Oord et al. 2018).

    l_i = -log( exp(sim(a_i, b_i) / tau) / sum_j exp(sim(a_i, b_j) / tau) ),   sim = cosine,  tau = 0.05

Unsupervised SimCSE passes the same batch through the encoder twice with dropout on (the model in train
mode): the two dropout masks are the only "augmentation", giving emb_a and emb_b; `simcse_views` doubles a
batch so that one forward pass gives both, and `split_views` separates the embeddings. Supervised SimCSE
uses (premise, entailment) pairs as (a, b) and contradictions as `hard_negatives`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import upcast


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the (B, T, D) hidden states over the tokens where `attention_mask` (B, T) is 1: (B, D)."""
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match hidden (B, T) = {tuple(hidden.shape[:2])}"
        )
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, D)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (N, M) between the rows of a (N, D) and b (M, D)."""
    return F.normalize(upcast(a), dim=-1) @ F.normalize(upcast(b), dim=-1).T


def info_nce_loss(
    emb_a: torch.Tensor,
    emb_b: torch.Tensor,
    temperature: float = 0.05,
    *,
    hard_negatives: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """SimCSE/InfoNCE loss (Gao et al. 2021, eq. 1): cross-entropy of cos(a_i, b_j) / tau with targets j = i.

    emb_a, emb_b (B, D); the other rows of emb_b are the negatives of a_i. `hard_negatives` (B, D) add
    cos(a_i, c_j) / tau columns (supervised SimCSE, eq. 5). `symmetric` averages with the b -> a direction
    (CLIP-style); SimCSE itself uses a -> b only. Mean over the batch.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(f"emb_a {tuple(emb_a.shape)} and emb_b {tuple(emb_b.shape)} must both be (B, D)")
    sim = cosine_similarity_matrix(emb_a, emb_b) / temperature  # (B, B)
    targets = torch.arange(emb_a.shape[0], device=emb_a.device)
    logits = sim
    if hard_negatives is not None:
        if hard_negatives.shape != emb_a.shape:
            raise ValueError(
                f"hard_negatives {tuple(hard_negatives.shape)} must match emb_a {tuple(emb_a.shape)}"
            )
        logits = torch.cat(
            [sim, cosine_similarity_matrix(emb_a, hard_negatives) / temperature], dim=1
        )  # (B, 2B)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + F.cross_entropy(sim.T, targets)) / 2
    return loss


def simcse_views(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch twice, (2B, T): one forward pass in train mode gives two dropout views of each sentence."""
    doubled_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    return torch.cat([input_ids, input_ids]), doubled_mask


def split_views(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (2B, D) embeddings of a `simcse_views` batch into (emb_a, emb_b), each (B, D)."""
    if embeddings.shape[0] % 2:
        raise ValueError(f"expected an even number of rows (2B), got {embeddings.shape[0]}")
    emb_a, emb_b = embeddings.chunk(2)
    return emb_a, emb_b
