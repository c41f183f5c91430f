"""Per-layer widths in ModelConfig (pruned models): validation, building, KV cache, save/load, export errors."""

from __future__ import annotations

import pytest
import torch

from lmforge.adapt import AdaptConfig, AdaptError, adapt
from lmforge.generate import generate
from lmforge.interop.hf import CheckpointError, save_pretrained
from lmforge.interop.native import load_model, save_model
from lmforge.models import ConfigError, ModelConfig, build_model

LLAMA = dict(family="decoder", vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
             max_seq_len=64, layer_n_heads=[4, 2, 2], layer_n_kv_heads=[2, 1, 2], layer_d_ff=[48, 16, 24])
BERT = dict(family="encoder", vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
            position="learned", activation="gelu", gated_ffn=False, norm="layernorm", norm_position="post",
            final_norm=False, embedding_norm=True, qkv_bias=True, out_bias=True, ffn_bias=True, type_vocab_size=2,
            layer_n_heads=[3, 1], layer_n_kv_heads=[3, 1], layer_d_ff=[40, 8])


def test_blocks_take_their_layers_widths():
    model = build_model(ModelConfig(**LLAMA))
    for block, heads, kv, ff in zip(model.blocks(), [4, 2, 2], [2, 1, 2], [48, 16, 24]):
        assert block.attn.q_proj.weight.shape == (heads * 8, 32)
        assert block.attn.k_proj.weight.shape == block.attn.v_proj.weight.shape == (kv * 8, 32)
        assert block.attn.o_proj.weight.shape == (32, heads * 8)
        assert block.ffn.gate_proj.weight.shape == block.ffn.up_proj.weight.shape == (ff, 32)
        assert block.ffn.down_proj.weight.shape == (32, ff)
    ids = torch.randint(0, 61, (2, 7))
    assert model(ids).shape == (2, 7, 61)


def test_an_encoder_with_layer_widths_reloads_with_the_same_outputs(tmp_path):
    model = build_model(ModelConfig(**BERT), task="sequence-classification", num_labels=3).eval()
    assert [b.attn.o_proj.in_features for b in model.blocks()] == [3 * 8, 1 * 8]
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    ids, mask = torch.randint(0, 61, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), model(ids, mask), atol=1e-6, rtol=0)


def test_for_layer_and_has_layer_widths():
    plain = ModelConfig(**{k: v for k, v in LLAMA.items() if not k.startswith("layer_")})
    assert not plain.has_layer_widths and plain.for_layer(1) is plain
    cfg = ModelConfig(**LLAMA)
    assert cfg.has_layer_widths
    one = cfg.for_layer(1)
    assert (one.n_heads, one.n_kv_heads, one.d_ff, one.head_dim) == (2, 1, 16, 8)
    assert not one.has_layer_widths
    only_ffn = plain.replace(layer_d_ff=[8, 16, 24])
    assert [only_ffn.for_layer(i).n_kv_heads for i in range(3)] == [2, 2, 2]
    with pytest.raises(ConfigError, match="layer=3 is out of range"):
        cfg.for_layer(3)


def test_validate_reports_every_per_layer_problem_at_once():
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**LLAMA, "layer_n_heads": [4, 2], "layer_n_kv_heads": [2, 0, 2], "layer_d_ff": [48, 16, 2.5]})
    text = str(err.value)
    assert "layer_n_heads has 2 entries but n_layers=3" in text
    assert "layer_n_kv_heads[1]=0 must be a positive integer" in text
    assert "layer_d_ff[2]=2.5 must be a positive integer" in text
    with pytest.raises(ConfigError, match=r"layer 1: n_heads=3 is not a multiple of n_kv_heads=2"):
        ModelConfig(**{**LLAMA, "layer_n_heads": [4, 3, 2], "layer_n_kv_heads": [2, 2, 2]})
    with pytest.raises(ConfigError, match="layer 0: n_heads=3 is not a multiple of n_kv_heads=4"):
        ModelConfig(**{**BERT, "layer_n_kv_heads": None})  # the global n_kv_heads (4) applies where no list is given
    with pytest.raises(ConfigError, match="layer_d_ff=8 must be a list"):
        ModelConfig(**{**LLAMA, "layer_d_ff": 8})
    with pytest.raises(ConfigError, match="not for encoder-decoder"):
        ModelConfig(family="encoder-decoder", vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                    layer_d_ff=[32, 64])


def test_dict_round_trip_and_checkpoint_reload(tmp_path):
    cfg = ModelConfig(**LLAMA)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg).eval()
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    assert again.cfg.layer_n_heads == [4, 2, 2] and again.cfg.layer_d_ff == [48, 16, 24]
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=1e-6, rtol=0)


def test_cache_has_each_layers_kv_heads_and_greedy_decoding_matches_the_uncached_argmax_loop():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**LLAMA)).eval()
    cache = model.make_cache(2, 16)
    assert [c.k.shape[1] for c in cache.layers] == [2, 1, 2]
    prompt = torch.randint(0, 61, (2, 5))
    with torch.no_grad():
        got = generate(model, prompt, 8)
        tokens = prompt
        for _ in range(8):  # the reference: the whole sequence every step, no cache
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, tokens[:, 5:])


def test_flops_count_each_layers_heads():
    model = build_model(ModelConfig(**LLAMA))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                 and m.weight is not model.body.tokens.weight) + 61 * 32  # the tied LM head once
    assert model.matmul_parameters() == linear
    assert model.flops_per_token(10) == 2 * linear + 4 * (4 + 2 + 2) * 8 * 10


def test_hf_and_gguf_export_refuse_per_layer_widths(tmp_path):
    from lmforge.interop.gguf_export import check_llama

    model = build_model(ModelConfig(**LLAMA))
    with pytest.raises(ConfigError, match=r"per-layer widths \(pruned.*num_attention_heads.*lmforge's format"):
        save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(CheckpointError, match="per-layer widths.*head_count"):
        check_llama(model)


def test_prefix_tuning_needs_uniform_kv_heads():
    with pytest.raises(AdaptError, match="prefix-tuning needs uniform layer widths"):
        adapt(build_model(ModelConfig(**LLAMA)), AdaptConfig(method="prefix", num_virtual_tokens=2))
    ffn_only = {**LLAMA, "layer_n_heads": None, "layer_n_kv_heads": None}  # kv heads uniform: it works
    model = adapt(build_model(ModelConfig(**ffn_only)), AdaptConfig(method="prefix", num_virtual_tokens=2))
    assert model(torch.randint(0, 61, (1, 4))).shape == (1, 4, 61)
