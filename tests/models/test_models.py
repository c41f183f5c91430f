"""Families, presets, heads and invariants (cached vs uncached, padded vs alone)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T

from lmforge.generate import generate
from lmforge.interop import hf
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


def _lm_loss(model, ids):
    logits = model(ids)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))


def test_post_norm_and_pre_norm_differ_and_both_train():
    torch.manual_seed(0)
    pre = build_model(get_preset("gpt2-tiny", **TINY, norm_position="pre"))
    post = build_model(get_preset("gpt2-tiny", **TINY, norm_position="post"))
    post.load_state_dict(pre.state_dict())  # the same weights, only the norms' places differ
    ids = torch.randint(0, 97, (4, 16))
    with torch.no_grad():
        assert (pre(ids) - post(ids)).abs().max() > 0.05
    for model in (pre, post):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(10):
            loss = _lm_loss(model, ids)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert all(math.isfinite(x) for x in losses)
        assert losses[-1] < losses[0] - 0.5  # ln(97) = 4.57 at the start; memorising one batch goes fast


def test_tied_embeddings_share_storage():
    model = build_model(get_preset("gpt2-tiny", **TINY))
    assert model.lm_head.proj.weight is model.body.tokens.weight
    untied = build_model(get_preset("llama-tiny", **TINY))
    assert untied.lm_head.proj.weight is not untied.body.tokens.weight


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering"])
@pytest.mark.parametrize("preset", ["bert-tiny", "llama-tiny", "gpt2-tiny"])
def test_heads_on_a_right_padded_row_equal_the_row_alone(task, preset):
    """Padding changes nothing real: the pooled (first / last real) token and every real position agree.

    Logits against transformers are in tests/interop/test_heads.py.
    """
    torch.manual_seed(0)
    model = build_model(get_preset(preset, **TINY, init_std=0.2), task=task).eval()
    row = torch.randint(1, 97, (1, 5))
    padded = torch.cat([row, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone, batched = model(row, torch.ones_like(row)), model(padded, mask)
        other = model(torch.cat([row[:, :-1], (row[:, -1:] + 1) % 97], 1))  # the last real token changed
    alone, batched, other = [x if isinstance(x, tuple) else (x,) for x in (alone, batched, other)]
    for a, b, c in zip(alone, batched, other, strict=True):
        b = b if task == "sequence-classification" else b[:, :5]
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(a, c, atol=1e-3)  # and the outputs do depend on the tokens


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_num_labels_argument_is_kept_in_the_config(task):
    model = build_model(get_preset("bert-tiny", **TINY), task=task, num_labels=5)
    assert model.cfg.num_labels == 5 and model.head.proj.out_features == 5
    assert build_model(model.cfg, task=task).head.proj.out_features == 5  # rebuilt from its config alone


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


def _transformers_count(model) -> int:
    """Parameters of the matching transformers model, built on meta from the exported config.

    BART keeps its LM-head bias as a buffer (`final_logits_bias`); lmforge trains it, so it counts.
    """
    cfg = model.cfg
    arch = hf.hf_architecture(model)
    fields = hf.export_family(cfg).config_to_hf(cfg, arch)
    config = T.AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        ref = getattr(T, arch)(config)
    lm_bias = dict(ref.named_buffers()).get("final_logits_bias")
    return sum(p.numel() for p in ref.parameters()) + (lm_bias.numel() if lm_bias is not None else 0)


def _transformer_count_by_hand(cfg) -> int:
    """Vaswani et al.'s Transformer: shared embedding, no position weights, biased Linears, post-LayerNorms."""
    d, f = cfg.d_model, cfg.d_ff
    attention, ffn, norm = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    return (cfg.vocab_size * d + cfg.n_layers * (attention + ffn + 2 * norm)
            + cfg.n_decoder_layers * (2 * attention + ffn + 3 * norm))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_with_the_reference_count(name):
    with torch.device("meta"):
        model = build_model(name)
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    expected = _transformer_count_by_hand(model.cfg) if name.startswith("transformer") else _transformers_count(model)
    assert model.num_parameters() == expected
