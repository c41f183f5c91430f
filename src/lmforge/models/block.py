"""The Transformer block: attention, optional cross-attention, FFN; residuals; pre- or post-norm."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.attention import Attention, KVCache
from lmforge.models.config import ModelConfig
from lmforge.models.ffn import FeedForward
from lmforge.models.norms import make_norm


class Block(nn.Module):
    """One layer. Pre-norm: `x + f(norm(x))`; post-norm (BERT, BART): `norm(x + f(x))`."""

    def __init__(self, cfg: ModelConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.attn = Attention(cfg)
        self.attn_norm = make_norm(cfg)
        self.cross_attn = Attention(cfg, cross=True) if cross_attention else None
        self.cross_attn_norm = make_norm(cfg) if cross_attention else None
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        encoder_out: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        cross_cache: KVCache | None = None,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). `prefix_kv` (prefix-tuning) goes to the self-attention."""
        attend = dict(mask=mask, is_causal=is_causal, rope=rope, cache=cache, prefix_kv=prefix_kv)
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.attn_norm(x), **attend))
        else:
            x = self.attn_norm(x + self.dropout(self.attn(x, **attend)))
        if self.cross_attn is not None:
            if self.pre_norm:
                h = self.cross_attn(self.cross_attn_norm(x), mask=encoder_mask, kv_input=encoder_out, cache=cross_cache)
                x = x + self.dropout(h)
            else:
                h = self.cross_attn(x, mask=encoder_mask, kv_input=encoder_out, cache=cross_cache)
                x = self.cross_attn_norm(x + self.dropout(h))
        if self.pre_norm:
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))
