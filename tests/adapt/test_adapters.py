"""Bottleneck adapters (lmforge.adapt.adapters): Houlsby and Pfeiffer placement, identity at init, what trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.adapt import AdaptConfig, AdaptError, adapt, load_adapter, save_adapter, trainable_summary
from lmforge.adapt.adapters import AdapterLinear
from lmforge.compress.quantize import QuantConfig, QuantError, quantize_model
from lmforge.models import build_model
from lmforge.models.presets import get_preset

VOCAB = 256
WIDTH = 16


def _bert(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_preset("bert-tiny", vocab_size=VOCAB, n_layers=2, dropout=0.0, attn_dropout=0.0),
                       task="sequence-classification", num_labels=2)


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2, d_ff=384))


def _ids(batch: int = 8, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _norm_parameters(model: nn.Module) -> int:
    """Parameters of the body's norms, counted from the names (attn_norm, ffn_norm, embed_norm, final_norm)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("body.") and "norm" in n.split(".")[-2])


def _head_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("make", [_bert, _llama], ids=["bert", "llama"])
def test_identity_at_init_and_base_names_kept(method, make):
    model = make()
    base_state = model.state_dict(keep_vars=True)
    ids = _ids()
    model.eval()
    with torch.no_grad():
        ref = model(ids)
    adapt(model, AdaptConfig(method=method, bottleneck=WIDTH))
    with torch.no_grad():
        assert torch.equal(model(ids), ref)  # up = 0: exactly the base
    state = model.state_dict(keep_vars=True)
    added = set(state) - set(base_state)
    assert set(base_state) <= set(state)
    assert all(state[k] is base_state[k] for k in base_state)  # the same tensors, under the same names
    stack = "encoder" if model.cfg.family == "encoder" else "decoder"
    where = ["attn.o_proj", "ffn.down_proj"] if method == "houlsby" else ["ffn.down_proj"]
    assert added == {f"body.{stack}.blocks.{i}.{w}.adapter.{part}.{t}"
                     for i in range(2) for w in where for part in ("down", "up") for t in ("weight", "bias")}


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("make", [_bert, _llama], ids=["bert", "llama"])
def test_only_adapters_norms_and_head_train(method, make):
    model = make()
    norms, head = _norm_parameters(model), _head_parameters(model)
    adapt(model, AdaptConfig(method=method, bottleneck=WIDTH))
    d, layers = model.cfg.d_model, model.cfg.n_layers
    per_adapter = d * WIDTH + WIDTH + WIDTH * d + d  # down (weight, bias) and up (weight, bias)
    expected = layers * per_adapter * (2 if method == "houlsby" else 1) + head
    if method == "houlsby":
        expected += norms  # Houlsby trains the layer norms; Pfeiffer does not
    assert trainable_summary(model).trainable == expected
    for name, p in model.named_parameters():
        trains = ".adapter." in name or name.startswith("head.") or (method == "houlsby" and name in _norm_names(model))
        assert p.requires_grad == trains, name


def _norm_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("body.") and "norm" in n.split(".")[-2]}


def test_adapter_computes_the_bottleneck_by_hand():
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    layer = AdapterLinear(base, 5)
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
        layer.adapter.up.bias.normal_()
    x = torch.randn(3, 20)
    h = x @ base.weight.T + base.bias
    a = layer.adapter
    by_hand = h + (torch.nn.functional.gelu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(layer(x), by_hand)
    assert layer.weight is base.weight and layer.bias is base.bias


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
def test_adapters_learn_a_tiny_task_and_round_trip(method, tmp_path):
    model = _bert()
    adapt(model, AdaptConfig(method=method, bottleneck=WIDTH))
    ids = _ids()
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(ids), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(_bert(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


def test_encoder_decoder_gets_adapters_in_both_stacks():
    torch.manual_seed(0)
    model = build_model(get_preset("bart-tiny", vocab_size=VOCAB, n_layers=1))
    adapt(model, AdaptConfig(method="pfeiffer", bottleneck=WIDTH))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdapterLinear)]
    assert wrapped == ["body.encoder.blocks.0.ffn.down_proj", "body.decoder.blocks.0.ffn.down_proj"]


@pytest.mark.parametrize("width", [0, -4])
def test_bad_bottleneck_is_named(width):
    with pytest.raises(AdaptError, match=f"bottleneck={width}"):
        adapt(_llama(), AdaptConfig(method="houlsby", bottleneck=width))


def test_adapters_need_plain_linear_layers_and_stop_quantization():
    model = _llama()
    quantize_model(model, QuantConfig("int8"))
    with pytest.raises(AdaptError, match="not a plain Linear"):
        adapt(model, AdaptConfig(method="pfeiffer"))
    adapted = adapt(_llama(), AdaptConfig(method="houlsby", bottleneck=WIDTH))
    with pytest.raises(QuantError, match="cannot quantize adapted layers"):
        quantize_model(adapted, QuantConfig("int8"))
