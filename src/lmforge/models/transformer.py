"""Transformer bodies: a stack of blocks over embeddings, composed into the three families."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lmforge.models.attention import CacheWrite, KVCache, attention_mask
from lmforge.models.block import Block
from lmforge.models.config import ModelConfig
from lmforge.models.norms import make_norm
from lmforge.models.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions


def embedding(num: int, dim: int) -> nn.Embedding:
    """An `nn.Embedding` left uninitialised: `Model.init_weights` initialises every parameter once (and
    skips those on the meta device, where an embedding's own random init would be a slow no-op)."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class Cache:
    """The KV caches of a decoder stack: `batch_size` rows, each at its own position.

    Every row owns `max_len` slots (plus one scratch slot that idle rows write into). `slot_pos` (B, L)
    holds the position of the token in each slot (-1: empty or padding), and a query sees the slots
    whose position is <= its own and within the sliding window. That one rule serves rows of different
    lengths decoding together, left-padded prompts, and a sliding-window model's bounded cache (a ring
    of `max_len` slots). The row bookkeeping (`fill`: slots used, `active`: rows that take part) lives on
    the host, so a decode step never waits for the device.
    """

    def __init__(self, layers: list[KVCache], cross: list[KVCache] | None = None, window: int | None = None,
                 ring: bool = False) -> None:
        self.layers, self.cross = layers, cross
        rows, slots = layers[0].k.shape[0], layers[0].max_len
        device = layers[0].k.device
        self.max_len = slots - 1  # the last slot is the scratch slot
        self.slot_pos = torch.full((rows, slots), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)  # real tokens per row: its next position
        self.fill = np.zeros(rows, dtype=np.int64)  # slots written per row
        self.active = np.ones(rows, dtype=bool)  # rows that take part in the next forward
        self.window, self.ring = window, ring
        self.prepared: tuple[CacheWrite, torch.Tensor] | None = None  # a plan made outside a compiled forward

    def rows(self, start: int, stop: int) -> Cache:
        """A view of rows `start:stop` that writes through to this cache (a decoder prefilling one request)."""
        view = Cache.__new__(Cache)
        view.__dict__.update(self.__dict__)
        view.layers = [_row_view(c, start, stop) for c in self.layers]
        view.cross = [_row_view(c, start, stop) for c in self.cross] if self.cross else None
        view.slot_pos, view.count = self.slot_pos[start:stop], self.count[start:stop]
        view.fill, view.active = self.fill[start:stop], self.active[start:stop]  # numpy views
        return view

    def reset_rows(self, rows) -> None:
        """Empty `rows` (a finished request's row is free for the next one)."""
        rows = list(rows)
        self.slot_pos[rows] = -1
        self.count[rows] = 0
        self.fill[rows] = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` in every layer (beam search)."""
        for c in self.layers + (self.cross or []):
            c.reorder(index)
        self.slot_pos, self.count = self.slot_pos.index_select(0, index), self.count.index_select(0, index)
        host = index.cpu().numpy()
        self.fill, self.active = self.fill[host], self.active[host]

    def prepare(self, t: int, position_ids: torch.Tensor | None,
                new_mask: torch.Tensor | None) -> tuple[CacheWrite, torch.Tensor]:
        """Plan the write of T new tokens per row and the mask their queries use; returns it and the positions.

        `new_mask` (B, T) is False at padding; positions default to each row's count of real tokens.
        """
        device = self.slot_pos.device
        steps = torch.arange(t, device=device)
        active = torch.from_numpy(self.active).to(device)
        real = active[:, None].expand(-1, t) if new_mask is None else new_mask & active[:, None]  # (B, T)
        if position_ids is None:
            offsets = steps[None] if new_mask is None else (new_mask.long().cumsum(-1) - 1).clamp(min=0)
            position_ids = self.count[:, None] + offsets
        self.count += real.sum(-1)
        fill, L = self.fill, self.max_len
        live = fill[self.active]
        if self.ring:
            if t > L - (self.window or 0) + 1:
                raise ValueError(f"{t} tokens in one forward overrun this sliding-window cache ({L} slots, window "
                                 f"{self.window}): feed at most {L - self.window + 1} at a time")
        elif len(live) and int(live.max()) + t > L:
            raise ValueError(f"KV cache full: {int(live.max()) + t} positions requested, {L} allocated")
        uniform = bool(self.active.all()) and (fill == fill[0]).all() and fill[0] + t <= L
        if uniform:
            start = int(fill[0])
            if start == 0 and new_mask is None and self.window is None:
                write = CacheWrite(0, None, t, None)  # a fresh causal prefill: SDPA's fast path
                self.slot_pos[:, :t] = position_ids
                self.fill += t
                return write, position_ids
            self.slot_pos[:, start:start + t] = torch.where(real, position_ids, -1)
            slots = None
        else:
            slots = torch.from_numpy(fill).to(device)[:, None] + steps  # (B, T)
            if self.ring:
                slots = slots % L
            slots = torch.where(active[:, None], slots, L)  # idle rows write into the scratch slot
            self.slot_pos.scatter_(1, slots, torch.where(real, position_ids, -1))
            self.slot_pos[:, L] = -1
            start = None
        self.fill[self.active] += t
        kv_len = min(int(self.fill.max()), L)  # a ring that wrapped reads all its slots
        visible_pos = self.slot_pos[:, None, :kv_len]  # (B, 1, S)
        q = position_ids[:, :, None]  # (B, T, 1)
        visible = (visible_pos >= 0) & (visible_pos <= q)
        if self.window is not None:
            visible &= (q - visible_pos) < self.window
        visible |= ~visible.any(-1, keepdim=True)  # a query that sees nothing (padding, idle row) stays finite
        return CacheWrite(start, slots, kv_len, visible[:, None]), position_ids


def _row_view(cache: KVCache, start: int, stop: int) -> KVCache:
    view = KVCache.__new__(KVCache)
    view.__dict__.update(cache.__dict__)
    view.k, view.v = cache.k[start:stop], cache.v[start:stop]
    return view


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
        # Each block is built from its layer's widths (they differ after structured pruning).
        self.blocks = nn.ModuleList(Block(cfg.for_layer(i), cross_attention) for i in range(n_layers))
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
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, d) -> hidden states (B, T, d).

        `attention_mask` (B, S) marks real tokens with 1 over all S = cached + new positions. `prefix_kv`
        holds one (keys, values) pair (B or 1, H_kv, P, D) per block, seen by every query of that block's
        self-attention and never cached (prefix-tuning).
        """
        b, t, _ = x.shape
        if prefix_kv is not None and len(prefix_kv) != len(self.blocks):
            raise ValueError(f"prefix_kv holds {len(prefix_kv)} (keys, values) pairs; this stack has "
                             f"{len(self.blocks)} blocks: one pair per block")
        write = None
        if cache is not None:  # the cache knows each row's position and which slots each query sees
            new_mask = attention_mask[:, -t:].bool() if attention_mask is not None else None
            if cache.prepared is not None:  # planned before a compiled forward, which cannot run the host bookkeeping
                write, position_ids = cache.prepared
                cache.prepared = None
            else:
                write, position_ids = cache.prepare(t, position_ids, new_mask)
            for layer in cache.layers:
                layer.write = write
        elif position_ids is None:  # (1, T): broadcast over the batch, so RoPE tables are computed once
            position_ids = torch.arange(t, device=x.device)[None]
        if self.positions is not None:
            x = x + self.positions(position_ids).to(x.dtype)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            x = x + self.token_types(token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.dropout(x)

        if write is not None:
            mask, is_causal = write.mask, write.mask is None
        else:
            window = self.cfg.sliding_window if self.causal else None
            padding = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
            mask = attention_mask_for(t, t, self.causal, padding, window, x.device)
            is_causal = self.causal and mask is None
        enc_mask = None
        if encoder_out is not None and encoder_attention_mask is not None and (
                cache is not None or not bool(encoder_attention_mask.all())):  # decoding: no device read per step
            enc_mask = attention_mask_for(t, encoder_out.shape[1], False, encoder_attention_mask, None, x.device)
        rope = self.rope(position_ids) if self.rope is not None else None

        for i, block in enumerate(self.blocks):
            kwargs = dict(
                mask=mask, is_causal=is_causal, rope=rope,
                cache=cache.layers[i] if cache is not None else None,
                encoder_out=encoder_out, encoder_mask=enc_mask,
                cross_cache=cache.cross[i] if cache is not None and cache.cross is not None else None,
                prefix_kv=prefix_kv[i] if prefix_kv is not None else None,
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

    virtual_tokens: int = 0
    """Positions the decoder stack prepends to every sequence (a soft prompt, `lmforge.adapt.prompt`):
    the KV cache keeps that many more slots per row."""

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
               inputs_embeds: torch.Tensor | None = None,
               prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Bidirectional encoding: (B, T) ids -> (B, T, d)."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.encoder(x, attention_mask=attention_mask, position_ids=position_ids, token_type_ids=token_type_ids,
                            prefix_kv=prefix_kv)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, cache: Cache | None = None,
               encoder_out: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None,
               prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Causal decoding (with cross-attention to `encoder_out` in encoder-decoders): -> (B, T, d)."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.decoder(x, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            encoder_out=encoder_out, encoder_attention_mask=encoder_attention_mask,
                            prefix_kv=prefix_kv)

    def make_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                   device: torch.device | None = None, max_chunk: int = 512) -> Cache:
        """Preallocated KV caches for `batch_size` rows of up to `max_len` positions each.

        A sliding-window model keeps `window + max_chunk` slots per row when that is fewer; it then takes
        at most `max_chunk` new tokens per forward (prefill long prompts in chunks).
        """
        cfg = self.cfg
        dtype = dtype or self.tokens.weight.dtype
        device = device or self.tokens.weight.device
        n = len(self.decoder.blocks)
        max_len += self.virtual_tokens  # a soft prompt's embeddings fill the first slots of every row

        def new(length: int, layer: int) -> KVCache:  # each layer's own key/value heads (pruned models differ)
            return KVCache(batch_size, cfg.for_layer(layer).n_kv_heads, cfg.head_dim, length, dtype, device)

        window = cfg.sliding_window
        ring = window is not None and max_len > window + max_chunk
        slots = window + max_chunk if ring else max_len  # a sliding window keeps a bounded ring of slots
        cross = [new(0, i) for i in range(n)] if cfg.family == "encoder-decoder" else None
        return Cache([new(slots + 1, i) for i in range(n)], cross, window, ring)

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
