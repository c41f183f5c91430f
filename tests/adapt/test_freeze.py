"""The methods that choose what trains (lmforge.adapt.freeze) and the shared machinery (lmforge.adapt.base).

Each method's trainable set is checked against a count computed independently, from the parameter
names and the config (not from `requires_grad`); adapter files must reproduce logits on the same base
and refuse another.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.adapt import AdaptConfig, AdaptError, adapt, load_adapter, save_adapter, trainable_summary
from lmforge.models import build_model
from lmforge.models.presets import get_preset

VOCAB = 256
MODELS = ["bert-classifier", "llama-lm", "llama-classifier"]


def _model(kind: str, seed: int = 0) -> nn.Module:
    """A tiny random model in eval mode (the classifier heads' dropout off)."""
    torch.manual_seed(seed)
    return _build(kind).eval()


def _build(kind: str) -> nn.Module:
    if kind == "bert-classifier":
        cfg = get_preset("bert-tiny", vocab_size=VOCAB, n_layers=2, dropout=0.0, attn_dropout=0.0)
        return build_model(cfg, task="sequence-classification", num_labels=3)
    cfg = get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2, d_ff=384)
    if kind == "llama-lm":
        return build_model(cfg)
    return build_model(cfg, task="sequence-classification", num_labels=3)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(seed))


def _numel(model: nn.Module, keep) -> int:
    """Parameters whose name `keep` accepts, each tensor once (`named_parameters` skips tied copies)."""
    return sum(p.numel() for name, p in model.named_parameters() if keep(name))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _is_head(name: str) -> bool:
    return name.startswith("head.")


@pytest.mark.parametrize("kind", MODELS)
def test_full_trains_everything(kind):
    model = adapt(_model(kind), AdaptConfig(method="full"))
    total = _numel(model, lambda n: True)
    assert _trainable(model) == total == trainable_summary(model).trainable == trainable_summary(model).total


@pytest.mark.parametrize("kind", MODELS)
def test_ffn_trains_the_feed_forward_layers_and_head(kind):
    model = _model(kind)
    expected = _numel(model, lambda n: ".ffn." in n or _is_head(n))
    adapt(model, AdaptConfig(method="ffn"))
    assert _trainable(model) == expected
    cfg = model.cfg  # the same count from the config: up/down (and gate) weights and biases per block
    per_block = (3 if cfg.gated_ffn else 2) * cfg.d_model * cfg.d_ff
    if cfg.ffn_bias:
        per_block += cfg.d_ff + cfg.d_model
    head = _numel(model, _is_head)
    assert expected == cfg.n_layers * per_block + head


@pytest.mark.parametrize("kind", ["bert-classifier", "llama-classifier"])
def test_head_trains_the_task_head_only(kind):
    model = adapt(_model(kind), AdaptConfig(method="head"))
    cfg = model.cfg
    assert _trainable(model) == cfg.d_model * cfg.num_labels + (cfg.num_labels if cfg.sequence_classifier_bias else 0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                            if _is_head(n)}


def test_head_on_a_model_without_one_is_an_error():
    with pytest.raises(AdaptError, match="has none"):
        adapt(_model("llama-lm"), AdaptConfig(method="head"))


def test_bitfit_on_bert_trains_the_body_and_pooler_biases():
    model = _model("bert-classifier")
    expected = _numel(model, lambda n: (n.startswith(("body.", "pooler.")) and n.endswith(".bias")) or _is_head(n))
    adapt(model, AdaptConfig(method="bitfit"))
    assert _trainable(model) == expected
    assert all(n.endswith(".bias") or _is_head(n) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["llama-lm", "llama-classifier"])
def test_bitfit_on_llama_adds_zero_biases_without_changing_outputs(kind):
    model = _model(kind)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids)
    before = {n for n, _ in model.named_parameters()}
    adapt(model, AdaptConfig(method="bitfit"))
    with torch.no_grad():
        assert torch.equal(model(ids), ref)
    added = {n for n, _ in model.named_parameters()} - before
    cfg = model.cfg
    projections = {"attn.q_proj": cfg.n_heads * cfg.head_dim, "attn.k_proj": cfg.n_kv_heads * cfg.head_dim,
                   "attn.v_proj": cfg.n_kv_heads * cfg.head_dim, "attn.o_proj": cfg.d_model,
                   "ffn.gate_proj": cfg.d_ff, "ffn.up_proj": cfg.d_ff, "ffn.down_proj": cfg.d_model}
    assert added == {f"body.decoder.blocks.{i}.{p}.bias" for i in range(cfg.n_layers) for p in projections}
    head = _numel(model, _is_head)
    assert _trainable(model) == cfg.n_layers * sum(projections.values()) + head  # lm_head stays frozen


@pytest.mark.parametrize("kind", MODELS)
def test_freeze_freezes_exactly_the_patterns(kind):
    model = _model(kind)
    patterns = ["body.tokens.*", "body.*.blocks.0.*"]
    frozen = _numel(model, lambda n: n.startswith("body.tokens.") or ".blocks.0." in n)
    total = _numel(model, lambda n: True)
    adapt(model, AdaptConfig(method="freeze", freeze=patterns))
    assert _trainable(model) == total - frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".blocks.0." in n)


def test_freeze_errors():
    with pytest.raises(AdaptError, match=r"'body\.nothing\.\*' match no parameter"):
        adapt(_model("llama-lm"), AdaptConfig(method="freeze", freeze=["body.tokens.*", "body.nothing.*"]))
    with pytest.raises(AdaptError, match="needs freeze"):
        adapt(_model("llama-lm"), AdaptConfig(method="freeze"))


def test_unknown_method_and_adapting_an_adapted_model_twice_are_errors():
    with pytest.raises(AdaptError, match="unknown adaptation method 'lorra'"):
        adapt(_model("llama-lm"), AdaptConfig(method="lorra"))
    model = adapt(_model("llama-lm"), AdaptConfig(method="lora", target_modules=["*q_proj"]))
    with pytest.raises(AdaptError, match="already adapted with 'lora'"):
        adapt(model, AdaptConfig(method="ffn"))


def test_a_model_a_weight_only_method_tuned_adapts_again():
    """ffn / full / bitfit ... only chose which weights trained: the result is a plain model (a pruned fine-tune
    recovers, a run continues), so a second method applies, and it alone decides what trains."""
    model = adapt(_model("llama-lm"), AdaptConfig(method="ffn"))
    adapt(model, AdaptConfig(method="bitfit"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("bias") or n.startswith("head.") or "lm_head" in n for n in trainable)
    assert model.adaptation.method == "bitfit"


def _perturb_trainable(model: nn.Module) -> None:
    """Stand-in for training: move every trainable tensor (so a file that lost one would show)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("kind, method", [("bert-classifier", "ffn"), ("bert-classifier", "bitfit"),
                                          ("llama-lm", "bitfit"), ("llama-classifier", "head"),
                                          ("llama-lm", "freeze"), ("llama-classifier", "lora")])
def test_adapter_file_reproduces_logits_on_its_base(kind, method, tmp_path):
    cfg = AdaptConfig(method=method, freeze=["body.tokens.*", "body.decoder.blocks.1.*"] if method == "freeze" else [])
    model = adapt(_model(kind), cfg)
    _perturb_trainable(model)
    ids = _ids()
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(_model(kind), tmp_path / "adapter")
    assert loaded.adaptation == cfg
    with torch.no_grad():
        ref = model(ids)
        assert not torch.equal(ref, _model(kind)(ids))  # the adapter matters
        assert torch.equal(loaded(ids), ref)


def test_adapter_file_refuses_another_base(tmp_path):
    model = adapt(_model("bert-classifier"), AdaptConfig(method="bitfit"))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(AdaptError, match="trained on another base model"):
        load_adapter(_model("bert-classifier", seed=7), tmp_path / "adapter")
    with pytest.raises(AdaptError, match="sequence-classification"):
        load_adapter(_model("llama-lm"), tmp_path / "adapter")
