"""ELECTRA's pretraining pair (Clark et al. 2020): a small MLM generator and a discriminator, jointly.

`ElectraPretraining` holds both networks. The discriminator is a `TokenClassifier` with one logit per
token (an encoder body + a linear head): it is what training is for, and what is exported. The
generator is a narrower encoder (by default 1/4 of the heads, width and feed-forward size, all the
layers, as ELECTRA-Small's) that reads the discriminator's token embeddings through a projection and
predicts with the same embedding matrix (sec. 3.2, tied embeddings), as Hugging Face's
`ElectraForMaskedLM` does when its hidden size is smaller than the embedding size.

The generator's shape lives in `cfg.extra["electra_generator"]` (ModelConfig overrides), so a
checkpoint rebuilds from its config alone; the class is the "electra-pretraining" task of
`lmforge.models.tasks`. The training objective that drives it is `lmforge.train.objective_electra`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.ffn import ACTIVATIONS
from lmforge.models.model import Model, TokenClassifier
from lmforge.models.norms import make_norm
from lmforge.models.transformer import Transformer, TransformerStack
from lmforge.objectives import sample_replacements

GENERATOR_KEY = "electra_generator"


def generator_overrides(cfg: ModelConfig, size: float = 0.25) -> dict:
    """ModelConfig overrides for a generator `size` times the discriminator (heads, width, FFN; same layers)."""
    if not 0 < size <= 1:
        raise ConfigError(f"ELECTRA generator size must be in (0, 1], got {size}")
    n_heads = max(1, round(cfg.n_heads * size))
    return {"n_heads": n_heads, "n_kv_heads": n_heads, "head_dim": cfg.head_dim, "d_model": n_heads * cfg.head_dim,
            "d_ff": max(1, round(cfg.d_ff * size)), "layer_n_heads": None, "layer_n_kv_heads": None, "layer_d_ff": None}


class ElectraGenerator(nn.Module):
    """ELECTRA's generator: an encoder stack over projected shared embeddings, an MLM head onto them."""

    def __init__(self, cfg: ModelConfig, embedding_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.project = nn.Linear(embedding_dim, cfg.d_model) if cfg.d_model != embedding_dim else None
        self.encoder = TransformerStack(cfg, cfg.n_layers, causal=False)
        self.dense = nn.Linear(cfg.d_model, embedding_dim)
        self.act = ACTIVATIONS[cfg.activation if not cfg.gated_ffn else "gelu"]
        self.norm = make_norm(cfg, embedding_dim)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, embeddings: torch.Tensor, embedding_weight: torch.Tensor,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, E) token embeddings -> (B, T, V) logits through the (V, E) shared embedding matrix."""
        x = self.project(embeddings) if self.project is not None else embeddings
        hidden = self.encoder(x, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return F.linear(self.norm(self.act(self.dense(hidden))), embedding_weight, self.bias)


class ElectraOutput(NamedTuple):
    generator_logits: torch.Tensor
    """(B, T, V) MLM logits of the generator."""
    discriminator_logits: torch.Tensor
    """(B, T) replaced-token logits of the discriminator."""
    discriminator_input_ids: torch.Tensor
    """(B, T) the input with the generator's samples at the masked positions."""
    is_replaced: torch.Tensor
    """(B, T) 1.0 where the sample differs from the original token."""


class ElectraPretraining(Model):
    """Generator + discriminator with shared token embeddings, trained jointly (Clark et al. 2020, sec. 2-3)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.family != "encoder":
            raise ConfigError(f"ElectraPretraining needs family='encoder', got {cfg.family!r}")
        self.cfg = cfg
        self.discriminator = TokenClassifier(cfg, num_labels=1)
        gen_cfg = cfg.replace(**{**generator_overrides(cfg), **cfg.extra.get(GENERATOR_KEY, {}), "extra": {}})
        self.generator = ElectraGenerator(gen_cfg, cfg.d_model)
        self.init_weights()

    @property
    def body(self) -> Transformer:
        """The discriminator's body (embeddings shared with the generator); the loop and FSDP see this one."""
        return self.discriminator.body

    def generator_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V) generator MLM logits for (masked) ids."""
        return self.generator(self.body.embed(input_ids), self.body.tokens.weight, attention_mask, token_type_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                sampler: torch.Generator | None = None) -> ElectraOutput:
        """Generator on masked ids, samples at the `labels != -100` positions, discriminator on the result.

        One forward for both networks (so DDP sees every weight used); samples come from `sampler`, or
        the global RNG when None, and no gradient flows through them.
        """
        if labels is None:
            raise ValueError("ElectraPretraining needs the MLM labels (-100 off the masked positions)")
        gen_logits = self.generator_logits(input_ids, attention_mask, token_type_ids)
        disc_ids, is_replaced = sample_replacements(gen_logits, input_ids, labels, generator=sampler)
        disc_logits = self.discriminator(disc_ids, attention_mask, token_type_ids).squeeze(-1)
        return ElectraOutput(gen_logits, disc_logits, disc_ids, is_replaced)

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Discriminator FLOPs plus the generator's (its stack, head and vocabulary projection)."""
        g = self.generator.cfg
        seq_len = seq_len or self.cfg.max_seq_len
        gen_matmul = sum(m.weight.numel() for m in self.generator.modules() if isinstance(m, nn.Linear))
        gen_matmul += self.body.tokens.weight.numel()
        forward = 2 * gen_matmul + 4 * g.n_layers * g.n_heads * g.head_dim * seq_len
        return self.discriminator.flops_per_token(seq_len, training) + (3 * forward if training else forward)
