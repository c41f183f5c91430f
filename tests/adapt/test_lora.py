"""LoRA, DoRA and QLoRA (lmforge.adapt.lora): PEFT's layers as the oracle, merge invariants, a quantized base."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import transformers as T
from torch import nn

from lmforge.adapt import (
    AdaptConfig,
    AdaptError,
    adapt,
    base_digest,
    load_adapter,
    save_adapter,
    trainable_summary,
)
from lmforge.adapt.lora import DoRALinear, LoRALinear, QLoRALinear, merge_and_unload, merge_lora, unmerge_lora
from lmforge.compress.quantize import QuantConfig, QuantError, QuantLinear, quantize_model
from lmforge.interop import load_model, save_model, save_pretrained
from lmforge.models import build_model
from lmforge.models.presets import get_preset

VOCAB = 256


def _llama(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2, d_ff=384, init_std=0.05, **overrides))


def _ids(batch: int = 4, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _lm_loss(model, ids):
    logits = model(ids)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _train(model, ids, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few Adam steps on next-token loss over one batch; the losses before each step."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = _lm_loss(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------ the layer against PEFT's

def _peft_pair(kind: str, bias: bool, r: int = 4, alpha: float = 8.0, dropout: float = 0.0):
    """One random Linear wrapped by PEFT and by lmforge, with the same random non-zero A, B (and magnitude)."""
    torch.manual_seed(0)
    base = nn.Linear(24, 20, bias=bias)
    holder = nn.Sequential()
    holder.add_module("proj", copy.deepcopy(base))
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"],
                             use_dora=kind == "dora", use_rslora=kind == "rslora", init_lora_weights=False)
    theirs = peft.inject_adapter_in_model(config, holder).proj
    cls = DoRALinear if kind == "dora" else LoRALinear
    ours = cls(copy.deepcopy(base), r, alpha, dropout, rslora=kind == "rslora")
    with torch.no_grad():
        ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)
        ours.lora_B.weight.copy_(theirs.lora_B["default"].weight)
        if kind == "dora":
            theirs.lora_magnitude_vector["default"].weight.mul_(1 + 0.3 * torch.rand(20))
            ours.lora_magnitude.copy_(theirs.lora_magnitude_vector["default"].weight)
    return theirs, ours


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_matches_peft(kind, bias):
    theirs, ours = _peft_pair(kind, bias)
    assert theirs.scaling["default"] == ours.scaling  # alpha / r, or alpha / sqrt(r)
    x = torch.randn(3, 5, 24)
    ref = theirs(x)
    assert (ref - theirs.base_layer(x)).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(ours(x), ref, atol=1e-6, rtol=1e-6)
    # Their merged weight is ours.
    theirs.merge()
    ours.merge()
    torch.testing.assert_close(ours.weight, theirs.base_layer.weight, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_layer_matches_peft_with_dropout_in_training(kind):
    theirs, ours = _peft_pair(kind, bias=True, dropout=0.3)
    theirs.train()
    ours.train()
    x = torch.randn(4, 24)
    torch.manual_seed(5)
    ref = theirs(x)
    torch.manual_seed(5)  # the same dropout mask: one dropout call each, on x
    torch.testing.assert_close(ours(x), ref, atol=1e-6, rtol=1e-6)


def test_dora_magnitude_starts_at_the_row_norms():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = DoRALinear(copy.deepcopy(base), r=2, alpha=4.0)
    by_hand = torch.stack([row.pow(2).sum().sqrt() for row in base.weight.detach()])
    torch.testing.assert_close(layer.lora_magnitude.detach(), by_hand)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), base(x), atol=1e-6, rtol=1e-6)  # m / ||W|| = 1 with B = 0


# -------------------------------------------------------------------------------------- on a model

def test_lora_keeps_base_names_and_starts_at_the_base():
    model = _llama()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _ids()
    with torch.no_grad():
        ref = model(ids)
    adapt(model, AdaptConfig(method="lora", r=4, target_modules=["*q_proj", "*v_proj"]))
    state = model.state_dict()
    lora_keys = {k for k in state if ".lora_" in k}
    assert set(state) - lora_keys == set(base_state)  # base names unchanged
    assert lora_keys == {f"body.decoder.blocks.{i}.attn.{p}.lora_{f}.weight"
                         for i in range(2) for p in ("q_proj", "v_proj") for f in "AB"}
    assert base_digest(model, lora_keys) == base_digest(_llama(), set())  # the frozen tensors are the base's
    result = model.load_state_dict(base_state, strict=False)  # a base checkpoint loads into the adapted model
    assert not result.unexpected_keys and set(result.missing_keys) == lora_keys
    with torch.no_grad():
        assert torch.equal(model(ids), ref)  # B = 0: exactly the base
    cfg = model.cfg
    per_layer = {"q_proj": 4 * (cfg.d_model + cfg.n_heads * cfg.head_dim),
                 "v_proj": 4 * (cfg.d_model + cfg.n_kv_heads * cfg.head_dim)}
    assert trainable_summary(model).trainable == 2 * sum(per_layer.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == lora_keys


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merge_equals_unmerged_and_unmerge_restores(method):
    model = _llama()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    adapt(model, AdaptConfig(method=method, r=4, target_modules=["*_proj"], dropout=0.1))
    ids = _ids()
    _train(model, ids, steps=3)
    model.eval()
    assert model.body.decoder.blocks[0].attn.q_proj.lora_B.weight.abs().max() > 0  # it trained
    with torch.no_grad():
        unmerged = model(ids)
        merge_lora(model)
        merge_lora(model)  # a second merge changes nothing
        merged = model(ids)
        assert (merged - unmerged).abs().max() <= 1e-5
        assert (model.body.decoder.blocks[0].ffn.up_proj.weight - original["body.decoder.blocks.0.ffn.up_proj.weight"]
                ).abs().max() > 1e-4  # merged into the weight
        unmerge_lora(model)
        for name, tensor in original.items():
            assert (model.state_dict()[name] - tensor).abs().max() <= 1e-6, name
        assert (model(ids) - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merge_and_unload_gives_a_plain_model_transformers_reads(method, tmp_path):
    model = _llama()
    adapt(model, AdaptConfig(method=method, r=4, target_modules=["*attn.*_proj", "*ffn.*_proj"]))
    ids = _ids()
    _train(model, ids, steps=3)
    model.eval()
    with torch.no_grad():
        adapted = model(ids)
    merge_and_unload(model)
    assert getattr(model, "adaptation", None) is None
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.body.decoder.blocks[1].ffn.down_proj) is nn.Linear
    assert not any("lora" in k for k in model.state_dict())
    save_pretrained(model, tmp_path / "hf")  # refuses any tensor it has no name for
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - adapted).abs().max() <= 1e-4


def test_save_model_load_model_round_trip(tmp_path):
    model = _llama()
    adapt(model, AdaptConfig(method="dora", r=4, target_modules=["*q_proj", "*down_proj"]))
    ids = _ids()
    _train(model, ids, steps=2)
    model.eval()
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert isinstance(loaded.body.decoder.blocks[0].ffn.down_proj, DoRALinear)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_fuse_projections_leaves_lora_layers_alone():
    model = _llama()
    adapt(model, AdaptConfig(method="lora", r=4, target_modules=["*q_proj", "*gate_proj"]))
    _train(model, _ids(), steps=2)
    model.eval()
    ids = _ids(seed=3)
    with torch.no_grad():
        before = model(ids)
        model.fuse_projections()
        assert isinstance(model.body.decoder.blocks[0].attn.q_proj, LoRALinear)
        torch.testing.assert_close(model(ids), before)


def test_heads_are_wrapped_only_when_named():
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2), task="sequence-classification",
                        num_labels=3)
    adapt(model, AdaptConfig(method="lora", r=2, target_modules=["*proj"]))
    assert not isinstance(model.head.proj, LoRALinear)  # `*proj` does not reach the head
    assert isinstance(model.body.decoder.blocks[0].attn.o_proj, LoRALinear)
    lm = _llama()
    adapt(lm, AdaptConfig(method="lora", r=2, target_modules=["*q_proj", "lm_head.proj"]))
    assert isinstance(lm.lm_head.proj, LoRALinear)
    with pytest.raises(AdaptError, match="outside the body"):
        adapt(_llama(), AdaptConfig(method="lora", target_modules=["*.proj"]))  # only the heads' `proj`


# ----------------------------------------------------------------------------------------- QLoRA

@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_qlora_trains_with_a_frozen_quantized_base(scheme):
    model = _llama()
    adapt(model, AdaptConfig(method="qlora", quantize=scheme, r=8, target_modules=["*_proj"]))
    q_proj = model.body.decoder.blocks[0].attn.q_proj
    assert isinstance(q_proj, QLoRALinear) and q_proj.scheme == scheme
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    ids = _ids()
    losses = _train(model, ids, steps=20, lr=1e-2)
    assert losses[-1] < 0.8 * losses[0], losses
    for name, tensor in model.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name  # the packed base is bit-identical
    loss = _lm_loss(model, ids)
    loss.backward()
    assert q_proj.lora_A.weight.grad.abs().max() > 0  # reached through every quantized layer after it


def test_qlora_gradients_equal_lora_on_the_dequantized_weights():
    """Backward through a quantized layer is backward through its dequantized weight (the float oracle).

    int8: its kernel keeps the activations f32 (q8_0 and int4 kernels quantize them), so the forward of a
    layer whose input needs no gradient (the first) is the dequantized one too."""
    model = _llama()
    adapt(model, AdaptConfig(method="qlora", quantize="int8", r=4, target_modules=["*q_proj", "*down_proj"]))
    reference = _llama()
    with torch.no_grad():  # the reference's float weights are the packed ones, dequantized
        for name, module in model.named_modules():
            if isinstance(module, QuantLinear):
                reference.get_submodule(name).weight.copy_(module.dequantize())
    adapt(reference, AdaptConfig(method="lora", r=4, target_modules=["*q_proj", "*down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
                reference.get_parameter(name).copy_(p)
    ids = _ids()
    _lm_loss(model, ids).backward()
    _lm_loss(reference, ids).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().max() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference.get_parameter(name).grad, atol=1e-5, rtol=1e-4)


def test_qlora_merge_is_refused():
    model = _llama()
    adapt(model, AdaptConfig(method="qlora", r=4))
    with pytest.raises(AdaptError, match="quantized base"):
        merge_lora(model)
    with pytest.raises(AdaptError, match="quantized base"):
        merge_and_unload(model)
    with pytest.raises(AdaptError, match="quantized base"):
        model.body.decoder.blocks[0].attn.q_proj.merge()


def test_qlora_checkpoints_round_trip(tmp_path):
    model = _llama()
    adapt(model, AdaptConfig(method="qlora", quantize="int4", r=4, target_modules=["*_proj"]))
    ids = _ids()
    _train(model, ids, steps=2)
    model.eval()
    with torch.no_grad():
        ref = model(ids)
    save_adapter(model, tmp_path / "adapter")  # onto a fresh float base: quantized again, identically
    fresh = load_adapter(_llama(), tmp_path / "adapter").eval()
    save_model(model, tmp_path / "ckpt")  # a whole checkpoint: packed base restored, not quantized twice
    loaded = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(fresh(ids), ref)
        assert torch.equal(loaded(ids), ref)


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("field, value, message", [
    ("r", 0, "r=0"), ("r", -2, "r=-2"), ("alpha", 0.0, "alpha=0.0"), ("alpha", -1.0, "alpha=-1.0"),
    ("dropout", 1.0, "dropout=1.0"), ("dropout", -0.1, "dropout=-0.1"),
])
@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_bad_lora_fields_are_named(method, field, value, message):
    with pytest.raises(AdaptError, match=message):
        adapt(_llama(), AdaptConfig(method=method, **{field: value}))


def test_unknown_target_pattern_is_an_error():
    with pytest.raises(AdaptError, match=r"'\*query' match no"):
        adapt(_llama(), AdaptConfig(method="lora", target_modules=["*q_proj", "*query"]))


def test_unknown_qlora_format_is_an_error():
    with pytest.raises(AdaptError, match="quantize='nf4'"):
        adapt(_llama(), AdaptConfig(method="qlora", quantize="nf4"))


def test_quantizing_an_adapted_model_is_refused():
    model = _llama()
    adapt(model, AdaptConfig(method="lora", r=2))
    with pytest.raises(QuantError, match="merge the adapter first"):
        quantize_model(model, QuantConfig("int8"))
    merge_and_unload(model)
    quantize_model(model, QuantConfig("int8"))  # a merged model is a plain one


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_adapt_works_on_a_meta_model(method):
    with torch.device("meta"):
        model = build_model(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2))
    adapt(model, AdaptConfig(method=method, r=4))
    assert model.body.decoder.blocks[0].attn.q_proj.lora_A.weight.is_meta


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_materializing_a_meta_adapted_model_keeps_the_methods_init(method):
    """A base loaded on the meta device, adapted, then materialized: the adapter starts as the identity."""
    base = _llama()
    with torch.device("meta"):
        model = build_model(base.cfg)
    adapt(model, AdaptConfig(method=method, r=4))  # as `load_model` does: adapt, then take the base's tensors
    model.load_state_dict(base.state_dict(), strict=False, assign=True)
    assert model.materialize()  # the LoRA tensors were allocated here
    layer = model.body.decoder.blocks[0].attn.q_proj
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), base.eval()(ids), rtol=1e-5, atol=1e-5)
