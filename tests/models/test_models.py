"""Families, presets, heads and invariants (cached vs uncached, padded vs alone)."""

from __future__ import annotations

import pytest
import torch

from lmforge.generate import generate
from lmforge.models import PRESETS, ConfigError, ModelConfig, build_model, get_preset

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


@pytest.mark.parametrize("name, params", [
    ("gpt2", 124_439_808),       # GPT-2 small, as published / counted by transformers
    ("bert-base", 109_482_240),  # bert-base-uncased BertModel with pooler
    ("llama-7b", 6_738_415_616),  # LLaMA-7B
])
def test_reference_presets_have_the_published_sizes(name, params):
    with torch.device("meta"):
        model = build_model(name)
    assert model.num_parameters() == params


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-tiny", "bart-tiny", "transformer-tiny"])
def test_tiny_presets_are_cpu_sized(name):
    model = build_model(name)
    assert 5e6 <= model.num_parameters() <= 30e6
    assert model.flops_per_token(128) > 2 * model.num_parameters(exclude_embeddings=True)


def test_flops_per_token_by_hand():
    model = build_model(ModelConfig(**TINY, family="decoder", tie_embeddings=True))
    n_linear = 2 * (4 * 32 * 32 + 3 * 32 * 64) + 97 * 32  # blocks + tied LM head
    assert model.matmul_parameters() == n_linear
    assert model.flops_per_token(10) == 2 * n_linear + 4 * 2 * 32 * 10
    assert model.flops_per_token(10, training=True) == 3 * model.flops_per_token(10)


def test_config_errors_list_every_problem():
    with pytest.raises(ConfigError) as err:
        ModelConfig(d_model=30, n_heads=4)
    assert "d_model=30 is not divisible by n_heads=4" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ModelConfig(family="rnn", norm="batchnorm", n_heads=4, n_kv_heads=3)
    assert "family='rnn'" in str(err.value) and "norm='batchnorm'" in str(err.value)
    assert "n_kv_heads=3" in str(err.value)
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"d_modle": 3})
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("gpt5")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_cached_decoding_equals_full_forward(preset):
    torch.manual_seed(0)
    model = build_model(get_preset(preset, **TINY)).eval()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache(2, 10)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(6, 10)]
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def test_left_padded_batch_generates_as_each_row_alone():
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", **TINY, init_std=0.2)).eval()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 5))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    out = generate(model, batch, 8, attention_mask=mask)
    assert torch.equal(out[0], generate(model, a, 8)[0])
    assert torch.equal(out[1], generate(model, b, 8)[0])


def test_sliding_window_limits_what_a_token_sees():
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", **TINY, sliding_window=3)).eval()
    ids = torch.randint(0, 97, (1, 12))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % 97
    with torch.no_grad():
        x, y = model(ids), model(other)
    # Two layers of window 3 reach 2 * (3 - 1) = 4 tokens back: position 5 and later cannot see token 0.
    assert not torch.allclose(x[0, 4], y[0, 4])
    assert torch.allclose(x[0, 5:], y[0, 5:], atol=1e-6)


def test_post_norm_and_pre_norm_differ_and_both_train():
    torch.manual_seed(0)
    for position in ("pre", "post"):
        model = build_model(get_preset("gpt2-tiny", **TINY, norm_position=position))
        ids = torch.randint(0, 97, (2, 8))
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tied_embeddings_share_storage():
    model = build_model(get_preset("gpt2-tiny", **TINY))
    assert model.lm_head.proj.weight is model.body.tokens.weight
    untied = build_model(get_preset("llama-tiny", **TINY))
    assert untied.lm_head.proj.weight is not untied.body.tokens.weight


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering"])
@pytest.mark.parametrize("preset", ["bert-tiny", "llama-tiny"])
def test_heads_on_any_body(task, preset):
    model = build_model(get_preset(preset, **TINY), task=task)
    ids, mask = torch.randint(0, 97, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    out = model(ids, mask)
    if task == "sequence-classification":
        assert out.shape == (2, 2)
    elif task == "token-classification":
        assert out.shape == (2, 6, 2)
    else:
        assert out[0].shape == out[1].shape == (2, 6)


def test_encoder_decoder_original_transformer():
    torch.manual_seed(0)
    model = build_model(get_preset("transformer-tiny", **TINY)).eval()
    src, tgt = torch.randint(0, 97, (2, 7)), torch.randint(0, 97, (2, 5))
    logits = model(src, decoder_input_ids=tgt)
    assert logits.shape == (2, 5, 97)
    # The decoder is causal: changing a later target token leaves earlier logits alone.
    tgt2 = tgt.clone()
    tgt2[:, 4] = (tgt[:, 4] + 1) % 97
    assert torch.allclose(logits[:, :4], model(src, decoder_input_ids=tgt2)[:, :4], atol=1e-6)


def test_every_preset_builds_on_meta():
    for name in PRESETS:
        with torch.device("meta"):
            assert build_model(name).num_parameters() > 0
