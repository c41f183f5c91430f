"""Structured pruning: pruned models equal the masked dense ones, importance by hand, shapes, reload, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.compress.structured import (
    PruneError,
    importance_scores,
    prune_ffn,
    prune_heads,
    structured_prune,
)
from lmforge.interop.native import load_model, save_model
from lmforge.models import ConfigError, ModelConfig, build_model

V = 67
BERT = dict(family="encoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
            position="learned", activation="gelu", gated_ffn=False, norm="layernorm", norm_position="post",
            final_norm=False, embedding_norm=True, qkv_bias=True, out_bias=True, ffn_bias=True, type_vocab_size=2,
            pooler=True)
LLAMA = dict(family="decoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32)
GPT2 = dict(family="decoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
            position="learned", activation="gelu_tanh", gated_ffn=False, norm="layernorm", qkv_bias=True,
            out_bias=True, ffn_bias=True)


def tiny(shape: dict, task: str | None = None, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**shape), task=task, **kwargs).float().eval()
    with torch.no_grad():  # non-zero biases and norm weights, so that slicing them wrongly shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def masked(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]):
    """The dense reference: a copy whose pruned heads' o_proj columns and neurons' down_proj columns are zero."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(dense.blocks()):
            d = block.attn.head_dim
            for h in heads.get(layer, []):
                block.attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
            for j in neurons.get(layer, []):
                block.ffn.down_proj.weight[:, j] = 0
    return dense


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("shape, task, heads, neurons", [
    (BERT, "sequence-classification", {0: [1, 3], 1: [0]}, {0: [0, 5, 63], 1: list(range(20, 50))}),
    (LLAMA, "causal-lm", {1: [2, 3]}, {0: list(range(0, 64, 2)), 1: [7]}),  # GQA: group 1 of layer 1
    (GPT2, "causal-lm", {0: [0], 1: [1, 2, 3]}, {0: [3, 4], 1: list(range(40))}),
])
def test_pruned_model_equals_the_masked_dense_model(shape, task, heads, neurons):
    model = tiny(shape, task)
    dense = masked(model, heads, neurons)
    prune_heads(model, heads)
    prune_ffn(model, neurons)
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), dense(ids, mask), atol=1e-5, rtol=0)
    for layer, block in enumerate(model.blocks()):
        n_heads = 4 - len(heads.get(layer, []))
        assert block.attn.q_proj.weight.shape == (n_heads * 8, 32)
        assert block.attn.o_proj.weight.shape == (32, n_heads * 8)
        assert block.ffn.down_proj.weight.shape == (32, 64 - len(neurons.get(layer, [])))
    assert model.cfg.layer_n_heads == [4 - len(heads.get(i, [])) for i in range(2)]
    assert model.cfg.layer_d_ff == [64 - len(neurons.get(i, [])) for i in range(2)]
    stack = model.body.encoder or model.body.decoder
    assert model.body.cfg is model.cfg and stack.cfg is model.cfg


def test_gqa_pruning_removes_key_value_heads_with_their_query_heads():
    model = tiny(LLAMA)
    prune_heads(model, {0: [0, 1]})
    attn = model.blocks()[0].attn
    assert (attn.n_heads, attn.n_kv_heads) == (2, 1)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (8, 32)
    assert model.cfg.layer_n_kv_heads == [1, 2]
    assert [c.k.shape[1] for c in model.make_cache(1, 8).layers] == [1, 2]


def test_structured_prune_matches_the_masked_model_and_saves_smaller(tmp_path):
    model = tiny(LLAMA, seed=3)
    save_model(model, tmp_path / "dense")
    reference = copy.deepcopy(model)
    summary = structured_prune(model, heads=0.3, ffn=0.3, multiple_of=8)
    assert summary.parameters_after < summary.parameters_before == reference.num_parameters()
    assert summary.parameters_after == model.num_parameters()
    assert all(w % 8 == 0 for w in model.cfg.layer_d_ff)
    assert sum(summary.d_ff_after) == pytest.approx(0.7 * 128, abs=8)
    dense = masked(reference, summary.pruned_heads, summary.pruned_neurons)
    ids, mask = inputs()
    with torch.no_grad():
        expected = dense(ids, mask)
        torch.testing.assert_close(model(ids, mask), expected, atol=1e-5, rtol=0)
    save_model(model, tmp_path / "pruned")
    again = load_model(tmp_path / "pruned").eval()
    assert again.cfg.layer_d_ff == model.cfg.layer_d_ff
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), expected, atol=1e-5, rtol=0)
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("dense", "pruned")}
    assert size["pruned"] < size["dense"]


def test_layer_scope_prunes_each_layer_alike_and_keeps_a_minimum():
    model = tiny(BERT, "token-classification", num_labels=3)
    summary = structured_prune(model, heads=0.5, ffn=0.5, scope="layer", multiple_of=8)
    assert summary.heads_after == [2, 2] and summary.d_ff_after == [32, 32]
    scores = importance_scores(tiny(BERT, "token-classification", num_labels=3))
    for layer in range(2):  # the lowest-scored units went
        lowest = scores.groups[layer].argsort()[:2].sort().values.tolist()
        assert summary.pruned_heads[layer] == lowest
    model = tiny(LLAMA)
    summary = structured_prune(model, heads=0.99, ffn=0.99, multiple_of=16)
    assert summary.kv_heads_after == [1, 1] and summary.heads_after == [2, 2]  # one whole group stays
    assert summary.d_ff_after == [16, 16]


def test_global_scope_ranks_layers_together():
    model = tiny(GPT2)
    with torch.no_grad():  # half of layer 1's neurons matter little, also relative to their layer's others
        ffn = model.blocks()[1].ffn
        ffn.up_proj.weight[32:] *= 0.01
        ffn.up_proj.bias[32:] *= 0.01
        ffn.down_proj.weight[:, 32:] *= 0.01
    summary = structured_prune(model, heads=0.0, ffn=0.25, scope="global", multiple_of=8)
    assert summary.d_ff_after == [64, 32] and summary.pruned_neurons[1] == list(range(32, 64))
    assert summary.heads_after == [4, 4] and "heads 8 -> 8" in str(summary)


@torch.no_grad()
def test_l1_importance_by_hand():
    model = tiny(BERT)
    scores = importance_scores(model, "l1")
    attn, ffn = model.blocks()[1].attn, model.blocks()[1].ffn
    h = 2
    rows = slice(8 * h, 8 * h + 8)
    expected = sum(float(m.weight[rows].abs().sum() + m.bias[rows].abs().sum())
                   for m in (attn.q_proj, attn.k_proj, attn.v_proj)) + float(attn.o_proj.weight[:, rows].abs().sum())
    assert float(scores.groups[1][h]) == pytest.approx(expected, rel=1e-5)
    j = 10
    expected = float(ffn.up_proj.weight[j].abs().sum() + ffn.up_proj.bias[j].abs() + ffn.down_proj.weight[:, j].abs().sum())
    assert float(scores.neurons[1][j]) == pytest.approx(expected, rel=1e-5)


def lm_loss(model, batch):
    logits = model(batch)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), batch[:, 1:].reshape(-1))


def test_taylor_importance_by_hand():
    model = tiny(LLAMA)
    batches = [torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    model.blocks()[0].attn.q_proj.weight.requires_grad_(False)  # frozen parameters are scored too
    scores = importance_scores(model, "taylor", lm_loss, batches)
    assert not model.blocks()[0].attn.q_proj.weight.requires_grad and model.blocks()[0].attn.q_proj.weight.grad is None
    reference = copy.deepcopy(model)
    for p in reference.parameters():
        p.requires_grad_(True)
    groups = torch.zeros(2, 2)  # (layer, key/value group)
    neurons = torch.zeros(2, 64)
    for batch in batches:
        reference.zero_grad()
        lm_loss(reference, batch).backward()
        for layer, block in enumerate(reference.blocks()):
            a, f = block.attn, block.ffn
            wg = {name: m.weight * m.weight.grad for name, m in
                  [("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj), ("gate", f.gate_proj),
                   ("up", f.up_proj), ("down", f.down_proj)]}
            for g in range(2):  # group g: query heads 2g, 2g+1 (rows 16g:16g+16), key/value head g (rows 8g:8g+8)
                q, kv = slice(16 * g, 16 * g + 16), slice(8 * g, 8 * g + 8)
                total = wg["q"][q].sum() + wg["k"][kv].sum() + wg["v"][kv].sum() + wg["o"][:, q].sum()
                groups[layer, g] += total.abs().item()
            neurons[layer] += (wg["gate"].sum(1) + wg["up"].sum(1) + wg["down"].sum(0)).abs().detach()
    for layer in range(2):
        torch.testing.assert_close(scores.groups[layer], groups[layer], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores.neurons[layer], neurons[layer], rtol=1e-4, atol=1e-7)


def test_taylor_structured_prune_runs_on_a_classifier():
    model = tiny(BERT, "sequence-classification")
    ids, mask = inputs()
    labels = torch.tensor([0, 1, 1])

    def loss_fn(m, batch):
        return F.cross_entropy(m(*batch), labels)

    summary = structured_prune(model, heads=0.25, ffn=0.25, importance="taylor", loss_fn=loss_fn,
                               batches=[(ids, mask)])
    assert sum(summary.heads_after) == 6 and model.training is False
    assert model(ids, mask).shape == (3, 2)


def test_bad_input_is_a_prune_error_naming_it():
    model = tiny(LLAMA)
    for value in (-0.1, 1.0, True, "0.3"):
        with pytest.raises(PruneError, match=f"heads={value!r} must be a fraction in"):
            structured_prune(model, heads=value)
    with pytest.raises(PruneError, match="ffn=1.5 must be a fraction"):
        structured_prune(model, ffn=1.5)
    with pytest.raises(PruneError, match="importance='l2' is not one of l1, taylor"):
        structured_prune(model, importance="l2")
    with pytest.raises(PruneError, match="scope='all'.*multiple_of=0"):
        structured_prune(model, scope="all", multiple_of=0)
    with pytest.raises(PruneError, match="needs loss_fn"):
        structured_prune(model, importance="taylor")
    with pytest.raises(PruneError, match="held no batch"):
        importance_scores(model, "taylor", lm_loss, [])
    with pytest.raises(PruneError, match="layer 1: cannot prune 4 heads, it has 4"):
        prune_heads(model, {1: [0, 1, 2, 3]})
    with pytest.raises(PruneError) as err:
        prune_heads(model, {0: [4, 1, 1], 2: [0], 1: [0]})
    text = str(err.value)
    assert "layer 0: head 4 is out of range [0, 4)" in text and "layer 0: head 1 is listed twice" in text
    assert "layer 2 is out of range: the model has 2 layers" in text
    assert "layer 1: heads [0] break key/value group 0 (query heads 0-1)" in text
    with pytest.raises(PruneError, match="layer 0: cannot prune 64 FFN neurons, it has 64"):
        prune_ffn(model, {0: range(64)})
    with pytest.raises(PruneError, match="layer 0: neuron -1 is out of range"):
        prune_ffn(model, {0: [-1]})
    assert model.cfg.layer_n_heads is None and model.blocks()[0].attn.n_heads == 4  # nothing changed on errors


def test_unsupported_models_are_refused():
    fused = tiny(LLAMA).fuse_projections()
    with pytest.raises(PruneError, match="layer 0 has fused projections"):
        prune_heads(fused, {0: [0, 1]})
    seq2seq = build_model(ModelConfig(family="encoder-decoder", vocab_size=V, d_model=32, n_layers=1, n_heads=4,
                                      d_ff=64, max_seq_len=32))
    with pytest.raises(PruneError, match="not 'encoder-decoder'"):
        structured_prune(seq2seq)
    from lmforge.adapt import AdaptConfig, adapt

    lora = adapt(tiny(LLAMA), AdaptConfig(method="lora"))
    with pytest.raises(PruneError, match="layer 0 attn.q_proj is a .*not a plain nn.Linear"):
        structured_prune(lora)


def test_hf_export_of_a_pruned_model_is_a_clear_error(tmp_path):
    from lmforge.interop.hf import save_pretrained

    model = tiny(BERT, "sequence-classification")
    structured_prune(model, heads=0.3, ffn=0.3)
    with pytest.raises(ConfigError, match="per-layer widths .*save it in lmforge's format"):
        save_pretrained(model, tmp_path / "hf")


@pytest.mark.slow
@pytest.mark.assets
def test_minilm_pruned_30_percent_equals_its_masked_self(minilm_dir):
    from lmforge.interop import load_pretrained

    model = load_pretrained(minilm_dir, task="sequence-classification").float().eval()
    reference = copy.deepcopy(model)
    summary = structured_prune(model, heads=0.3, ffn=0.3)
    print(summary)
    assert summary.heads_before == [12] * 6 and sum(summary.heads_after) == 72 - 22  # round(0.3 * 72)
    assert sum(summary.d_ff_after) == pytest.approx(0.7 * 6 * 1536, abs=6 * 8)
    dense = masked(reference, summary.pruned_heads, summary.pruned_neurons)
    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), dense(ids), atol=1e-4, rtol=0)
