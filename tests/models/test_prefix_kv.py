"""Attention's `prefix_kv` (prefix-tuning's extra keys and values) against attention written out by hand,
and the fuse guard that leaves adapted projections apart."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.models import build_model
from lmforge.models.attention import Attention, KVCache, attention_mask
from lmforge.models.ffn import FeedForward
from lmforge.models.positions import RotaryEmbedding, apply_rotary
from lmforge.models.presets import get_preset

B, T, P = 2, 5, 3


def tiny_cfg(**overrides):
    return get_preset("llama-tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      **overrides)


def reference(attn: Attention, x, prefix_k, prefix_v, rope, mask):
    """softmax(Q [Kp; K]^T / sqrt(D) + mask) [Vp; V], heads repeated for GQA, the prefix unrotated."""
    b, t, _ = x.shape
    heads = lambda y: y.view(b, t, -1, attn.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    k = torch.cat([prefix_k.expand(b, -1, -1, -1), k], dim=2)
    v = torch.cat([prefix_v.expand(b, -1, -1, -1), v], dim=2)
    rep = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)  # (B, H, T, P + T)
    scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def setup(prefix_batch: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    attn = Attention(cfg).eval()
    x = torch.randn(B, T, cfg.d_model)
    rope = RotaryEmbedding(cfg)(torch.arange(T)[None])
    prefix = (torch.randn(prefix_batch, cfg.n_kv_heads, P, cfg.head_dim),
              torch.randn(prefix_batch, cfg.n_kv_heads, P, cfg.head_dim))
    return attn, x, rope, prefix


def full_mask(causal: bool, padding: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, T, P + T): the prefix columns open, then causality and padding over the real keys."""
    real = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        real &= torch.ones(T, T, dtype=torch.bool).tril()
    if padding is not None:
        real &= padding[:, None, None, :].bool()
    return torch.cat([torch.ones(B, 1, T, P, dtype=torch.bool), real], dim=-1)


@pytest.mark.parametrize("prefix_batch", [1, B])
@pytest.mark.parametrize("case", ["causal", "causal-padded", "bidirectional", "bidirectional-padded"])
def test_prefix_attention_matches_hand_computation(case, prefix_batch):
    attn, x, rope, prefix = setup(prefix_batch)
    causal = case.startswith("causal")
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]) if case.endswith("padded") else None
    mask = attention_mask(T, T, causal=causal, key_padding=padding) if (padding is not None) else None
    with torch.no_grad():
        got = attn(x, mask=mask, is_causal=causal and mask is None, rope=rope, prefix_kv=prefix)
        want = reference(attn, x, *prefix, rope, full_mask(causal, padding))
        base = attn(x, mask=mask, is_causal=causal and mask is None, rope=rope)
    rows = slice(None) if padding is None else (padding.bool()[:, :, None].expand_as(got))  # padded queries: ignored
    torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the prefix does change the output


def test_prefix_attention_fused_projections_agree():
    attn, x, rope, prefix = setup()
    with torch.no_grad():
        want = attn(x, is_causal=True, rope=rope, prefix_kv=prefix)
        attn.fuse_projections()
        assert attn.qkv_proj is not None
        got = attn(x, is_causal=True, rope=rope, prefix_kv=prefix)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prefix_is_never_cached_and_cached_chunks_match_one_pass():
    """Two cached chunks, each with the prefix, equal one pass over the whole sequence with it."""
    attn, x, rope, prefix = setup()
    cfg = tiny_cfg()
    with torch.no_grad():
        want = attn(x, is_causal=True, rope=rope, prefix_kv=prefix)
        cache = KVCache(B, cfg.n_kv_heads, cfg.head_dim, max_len=T + 4)
        first = attn(x[:, :2], is_causal=True, rope=(rope[0][:, :2], rope[1][:, :2]), cache=cache, prefix_kv=prefix)
        second_mask = attention_mask(3, T, causal=True)  # the last 3 queries over the 5 cached positions
        second = attn(x[:, 2:], mask=second_mask, rope=(rope[0][:, 2:], rope[1][:, 2:]), cache=cache,
                      prefix_kv=prefix)
    assert cache.length == T  # only the real tokens went into the cache
    assert cache.k[:, :, T:].abs().max() == 0
    torch.testing.assert_close(torch.cat([first, second], dim=1), want, atol=1e-5, rtol=1e-5)


def test_empty_prefix_changes_nothing():
    attn, x, rope, prefix = setup()
    empty = (prefix[0][:, :, :0], prefix[1][:, :, :0])
    with torch.no_grad():
        torch.testing.assert_close(attn(x, is_causal=True, rope=rope, prefix_kv=empty),
                                   attn(x, is_causal=True, rope=rope))


def test_cross_attention_refuses_a_prefix():
    attn, x, _, prefix = setup()
    cross = Attention(tiny_cfg(), cross=True)
    with pytest.raises(ValueError, match="self-attention"):
        cross(x, kv_input=x, prefix_kv=prefix)


def test_stack_wants_one_pair_per_block():
    model = build_model(tiny_cfg(), task="causal-lm")
    cfg = model.cfg
    pair = (torch.zeros(1, cfg.n_kv_heads, P, cfg.head_dim),) * 2
    with pytest.raises(ValueError, match="one pair per block"):
        model.body.decode(torch.zeros(1, 4, dtype=torch.long), prefix_kv=[pair])  # 1 pair, 2 blocks


def test_stack_passes_each_block_its_own_pair():
    """The stack's prefix for block i reaches block i: equal to running the blocks by hand."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), task="causal-lm").eval()
    cfg = model.cfg
    pairs = [(torch.randn(1, cfg.n_kv_heads, P, cfg.head_dim), torch.randn(1, cfg.n_kv_heads, P, cfg.head_dim))
             for _ in range(cfg.n_layers)]
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    stack = model.body.decoder
    with torch.no_grad():
        got = model.body.decode(ids, prefix_kv=pairs)
        h = model.body.embed(ids)
        rope = stack.rope(torch.arange(T)[None])
        for block, pair in zip(stack.blocks, pairs):
            h = block(h, is_causal=True, rope=rope, prefix_kv=pair)
        want = stack.final_norm(h)
    torch.testing.assert_close(got, want)


class AdaptedLinear(nn.Linear):
    """A stand-in for a LoRA wrapper: a Linear subclass that says it is adapted."""

    adapted = True


def _adapt(layer: nn.Linear) -> AdaptedLinear:
    new = AdaptedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new.load_state_dict(layer.state_dict())
    return new


def test_fuse_leaves_adapted_projections_apart():
    cfg = tiny_cfg()
    plain, adapted = Attention(cfg), Attention(cfg)
    adapted.v_proj = _adapt(adapted.v_proj)
    plain.fuse_projections(), adapted.fuse_projections()
    assert plain.qkv_proj is not None  # the control: unadapted parts do fuse
    assert adapted.qkv_proj is None and isinstance(adapted.v_proj, AdaptedLinear) and hasattr(adapted, "q_proj")

    plain, adapted = FeedForward(cfg), FeedForward(cfg)
    adapted.up_proj = _adapt(adapted.up_proj)
    plain.fuse_projections(), adapted.fuse_projections()
    assert plain.gate_up_proj is not None
    assert adapted.gate_up_proj is None and adapted.gate_proj is not None and isinstance(adapted.up_proj, AdaptedLinear)
