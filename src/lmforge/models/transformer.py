"""Transformer bodies: a stack of blocks over embeddings, composed into the three families."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.models.attention import KVCache, attention_mask
from lmforge.models.block import Block
from lmforge.models.config import ModelConfig
from lmforge.models.norms import make_norm
from lmforge.models.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions


def embedding(num: int, dim: int) -> nn.Embedding:
    """An `nn.Embedding` left uninitialised: `Model.init_weights` initialises every parameter once (and
    skips those on the meta device, where an embedding's own random init would be a slow no-op)."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


@dataclass
class Cache:
    """Per-layer KV caches of a decoder stack (and its cross-attention, for encoder-decoders)."""

    layers: list[KVCache]
    cross: list[KVCache] | None = None

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` in every layer (beam search)."""
        for c in self.layers + (self.cross or []):
            c.reorder(index)


class TransformerStack(nn.Module):
    """Position/type embeddings, `n_layers` blocks and an optional final norm.

    The token embedding lives in `Transformer`, so encoder and decoder can share it.
    """

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross_attention: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = causal
        self.positions: nn.Module | None = None
        if cfg.position == "learned":
            self.positions = LearnedPositions(cfg)
        elif cfg.position == "sinusoidal":
            self.positions = SinusoidalPositions(cfg)
        self.rope = RotaryEmbedding(cfg) if cfg.position == "rope" else None
        self.token_types = embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.embed_norm = make_norm(cfg) if cfg.embedding_norm else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross_attention) for _ in range(n_layers))
        self.final_norm = make_norm(cfg) if cfg.final_norm else None
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        encoder_out: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, d) -> hidden states (B, T, d).

        `attention_mask` (B, S) marks real tokens with 1 over all S = cached + new positions.
        """
        b, t, _ = x.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:  # (1, T): broadcast over the batch, so RoPE tables are computed once
            position_ids = torch.arange(past, past + t, device=x.device)[None]
        if self.positions is not None:
            x = x + self.positions(position_ids).to(x.dtype)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            x = x + self.token_types(token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.dropout(x)

        kv_len = past + t
        window = self.cfg.sliding_window if self.causal else None
        padding = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        mask = attention_mask_for(t, kv_len, self.causal, padding, window, x.device)
        is_causal = self.causal and mask is None and past == 0
        enc_mask = None
        if encoder_out is not None and encoder_attention_mask is not None and not bool(encoder_attention_mask.all()):
            enc_mask = attention_mask_for(t, encoder_out.shape[1], False, encoder_attention_mask, None, x.device)
        rope = self.rope(position_ids) if self.rope is not None else None

        for i, block in enumerate(self.blocks):
            kwargs = dict(
                mask=mask, is_causal=is_causal, rope=rope,
                cache=cache.layers[i] if cache is not None else None,
                encoder_out=encoder_out, encoder_mask=enc_mask,
                cross_cache=cache.cross[i] if cache is not None and cache.cross is not None else None,
            )
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(lambda h, blk=block, kw=kwargs: blk(h, **kw), x, use_reentrant=False)
            else:
                x = block(x, **kwargs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


def attention_mask_for(q_len, kv_len, causal, padding, window, device) -> torch.Tensor | None:
    """`attention_mask`, except that a plain causal mask is left to SDPA's `is_causal` fast path."""
    if causal and padding is None and window is None and q_len == kv_len:
        return None
    return attention_mask(q_len, kv_len, causal=causal, key_padding=padding, sliding_window=window, device=device)


class Transformer(nn.Module):
    """The body of every family: token embedding plus an encoder stack, a decoder stack, or both."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = embedding(cfg.vocab_size, cfg.d_model)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.encoder = None
        self.decoder = None
        if cfg.family in ("encoder", "encoder-decoder"):
            self.encoder = TransformerStack(cfg, cfg.n_layers, causal=False)
        if cfg.family == "decoder":
            self.decoder = TransformerStack(cfg, cfg.n_layers, causal=True)
        elif cfg.family == "encoder-decoder":
            self.decoder = TransformerStack(cfg, cfg.n_decoder_layers, causal=True, cross_attention=True)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional encoding: (B, T) ids -> (B, T, d)."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.encoder(x, attention_mask=attention_mask, position_ids=position_ids, token_type_ids=token_type_ids)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, cache: Cache | None = None,
               encoder_out: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Causal decoding (with cross-attention to `encoder_out` in encoder-decoders): -> (B, T, d)."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.decoder(x, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            encoder_out=encoder_out, encoder_attention_mask=encoder_attention_mask)

    def make_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                   device: torch.device | None = None, encoder_len: int | None = None) -> Cache:
        """Preallocated KV caches for decoding up to `max_len` positions."""
        cfg = self.cfg
        dtype = dtype or self.tokens.weight.dtype
        device = device or self.tokens.weight.device
        n = len(self.decoder.blocks)

        def new(length: int) -> KVCache:
            return KVCache(batch_size, cfg.n_kv_heads, cfg.head_dim, length, dtype, device)

        cross = [new(0) for _ in range(n)] if cfg.family == "encoder-decoder" else None
        return Cache([new(max_len) for _ in range(n)], cross)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Encoder: encode; decoder: decode; encoder-decoder: decode `decoder_input_ids` over the encoding."""
        if self.cfg.family == "encoder":
            return self.encode(input_ids, attention_mask, **kwargs)
        if self.cfg.family == "decoder":
            return self.decode(input_ids, attention_mask, **kwargs)
        decoder_input_ids = kwargs.pop("decoder_input_ids")
        decoder_attention_mask = kwargs.pop("decoder_attention_mask", None)
        encoder_out = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, decoder_attention_mask, encoder_out=encoder_out,
                           encoder_attention_mask=attention_mask, **kwargs)
