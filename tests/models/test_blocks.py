"""Building blocks against hand computations and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.models import Attention, KVCache, ModelConfig, attention_mask
from lmforge.models.norms import RMSNorm
from lmforge.models.positions import RotaryEmbedding, apply_rotary, sinusoidal_table


def test_sinusoidal_table_by_hand():
    """Every entry: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) (Vaswani et al. 2017)."""
    n, d = 7, 6
    table = sinusoidal_table(n, d)
    assert table.shape == (n, d)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_rmsnorm_by_hand():
    norm = RMSNorm(2, eps=0.0)
    norm.weight.data = torch.tensor([1.0, 2.0])
    x = torch.tensor([[3.0, 4.0]])
    rms = math.sqrt((9 + 16) / 2)
    assert torch.allclose(norm(x), torch.tensor([[3 / rms, 8 / rms]]))


def test_rope_scores_depend_only_on_relative_position():
    cfg = ModelConfig(d_model=16, n_heads=1, n_layers=1, d_ff=8)
    rope = RotaryEmbedding(cfg)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    assert score(7, 3) == pytest.approx(float(score(14, 10)), rel=1e-4)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), rel=1e-5)  # position 0 is the identity


def test_rope_linear_scaling_is_position_interpolation():
    base = ModelConfig(d_model=16, n_heads=1, n_layers=1, d_ff=8)
    scaled = base.replace(rope_scaling={"type": "linear", "factor": 4.0})
    c1, s1 = RotaryEmbedding(base)(torch.tensor([[2]]))
    c4, s4 = RotaryEmbedding(scaled)(torch.tensor([[8]]))
    assert torch.allclose(c1, c4) and torch.allclose(s1, s4)


def test_rope_ntk_scaling_raises_the_base():
    cfg = ModelConfig(d_model=16, n_heads=1, n_layers=1, d_ff=8, rope_scaling={"type": "ntk", "factor": 2.0})
    rope = RotaryEmbedding(cfg)
    assert rope.inv_freq[1] == pytest.approx((10000 * 2 ** (16 / 14)) ** (-2 / 16), rel=1e-5)


def test_masks_causal_padding_window():
    pad = torch.tensor([[1, 1, 1, 0]])
    m = attention_mask(4, 4, causal=True, key_padding=pad, sliding_window=2)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],  # the padded key 3 is hidden even from itself
    ]).bool()
    assert torch.equal(m, expected)
    # A query with no visible key (left padding under a causal mask) is opened fully, so softmax
    # stays finite; its output is ignored anyway.
    left = attention_mask(3, 3, causal=True, key_padding=torch.tensor([[0, 1, 1]]))[0, 0]
    assert left.tolist() == [[True, True, True], [False, True, False], [False, True, True]]
    assert attention_mask(3, 3, causal=False) is None
    # Cached decoding: one query at absolute position 4 sees keys 0..4.
    assert attention_mask(1, 5, causal=True)[0, 0].tolist() == [[True] * 5]


def _attention_by_hand(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_attention_matches_hand_softmax(n_kv_heads):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=4, n_kv_heads=n_kv_heads, n_layers=1, d_ff=8)
    attn = Attention(cfg)
    x = torch.randn(2, 5, 16)
    mask = attention_mask(5, 5, causal=True)
    out = attn(x, mask=mask)
    q = attn.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)
    k = attn.k_proj(x).view(2, 5, n_kv_heads, 4).transpose(1, 2).repeat_interleave(4 // n_kv_heads, 1)
    v = attn.v_proj(x).view(2, 5, n_kv_heads, 4).transpose(1, 2).repeat_interleave(4 // n_kv_heads, 1)
    ref = attn.o_proj(_attention_by_hand(q, k, v, mask).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(attn(x, is_causal=True), ref, atol=1e-5)  # SDPA's causal fast path


def test_cross_attention_uses_the_other_sequence():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=4, n_layers=1, d_ff=8)
    attn = Attention(cfg, cross=True)
    x, enc = torch.randn(1, 3, 16), torch.randn(1, 7, 16)
    cache = KVCache(1, 4, 4, 0)
    first = attn(x, kv_input=enc, cache=cache)
    assert cache.length == 7
    again = attn(x, kv_input=None, cache=cache)  # keys/values come from the cache now
    assert torch.allclose(first, again)
    assert not torch.allclose(first, attn(x, kv_input=torch.randn(1, 7, 16)))


def test_kv_cache_overflow_is_a_clear_error():
    cache = KVCache(1, 1, 2, 3)
    cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny", "bart-tiny"])
def test_fused_projections_give_the_same_logits(preset):
    from lmforge.generate import generate
    from lmforge.models import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                                   max_seq_len=64)).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        kwargs = {"decoder_input_ids": ids[:, :5]} if preset == "bart-tiny" else {}
        before, greedy = model(ids, **kwargs), generate(model, ids, 6)
        n_params = model.num_parameters()
        model.fuse_projections()
        block = model.blocks()[0]
        assert block.attn.qkv_proj is not None and not hasattr(block.attn, "q_proj")
        assert (block.ffn.gate_up_proj is not None) == (preset == "llama-tiny")  # only gated FFNs have two
        assert model.num_parameters() == n_params
        assert torch.allclose(model(ids, **kwargs), before, atol=1e-5)
        assert torch.equal(generate(model, ids, 6), greedy)


def test_attention_falls_back_to_the_math_kernel_where_the_fused_one_refuses(monkeypatch):
    """torch's CPU flash kernel raises for bf16 under ATEN_CPU_CAPABILITY=avx2 on an AMX machine."""
    import lmforge.models.attention as attention

    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    ref = attention.F.scaled_dot_product_attention(q, k, v, is_causal=True)
    real = attention.F.scaled_dot_product_attention

    def refusing(*args, **kwargs):
        from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

        if SDPBackend.MATH not in _cur_sdpa_kernel_backends() or len(_cur_sdpa_kernel_backends()) > 1:
            raise RuntimeError("pack_vnni2 is only supported when avx512 is supported")
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "_SDPA_MATH_ONLY", False)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", refusing)
    assert torch.allclose(attention.sdpa(q, k, v, is_causal=True), ref, atol=1e-6)
    assert attention._SDPA_MATH_ONLY  # decided once, not retried every call
    monkeypatch.setattr(attention, "_SDPA_MATH_ONLY", False)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("some other failure")))
    with pytest.raises(RuntimeError, match="some other failure"):
        attention.sdpa(q, k, v)
