"""The methods that only choose which pretrained parameters train: full, ffn, head, bitfit, freeze.

BitFit (Ben Zaken et al. 2022) trains the biases; a bias-free model (LLaMA, SmolLM2) has none, so BitFit
there gives every Linear of the body a zero-initialised bias to train (the model's outputs do not change
until it trains), the usual way BitFit is carried to such models.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.base import AdaptConfig, AdaptError, match_parameters, register


@register("full")
def full(model: nn.Module, cfg: AdaptConfig) -> None:
    """Every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)


@register("ffn")
def ffn_only(model: nn.Module, cfg: AdaptConfig) -> None:
    """Only the feed-forward layers of every block train (plus the task head)."""
    found = False
    for name, p in model.named_parameters():
        if ".ffn." in name:
            p.requires_grad_(True)
            found = True
    if not found:
        raise AdaptError("method ffn: this model has no feed-forward layers (`*.ffn.*` parameters)")


@register("head")
def head_only(model: nn.Module, cfg: AdaptConfig) -> None:
    """Only the task head trains (a linear probe on frozen features)."""
    if not cfg.train_head or (getattr(model, "head", None) is None and getattr(model, "heads", None) is None):
        raise AdaptError("method head trains the task head only, but this model has none (a classification, "
                         "token-classification or question-answering model has one)")


@register("bitfit")
def bitfit(model: nn.Module, cfg: AdaptConfig) -> None:
    """Only the biases of the pretrained model train (body and BERT's pooler; an LM head's stays frozen);
    bias-free Linear layers of the body get a zero bias to train."""
    for name, module in model.named_modules():
        if not name.startswith(("body.", "pooler.")):
            continue
        if isinstance(module, nn.Linear) and module.bias is None and name.startswith("body."):
            module.bias = nn.Parameter(torch.zeros(module.out_features, device=module.weight.device,
                                                   dtype=module.weight.dtype))
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)


@register("freeze")
def freeze_patterns(model: nn.Module, cfg: AdaptConfig) -> None:
    """Everything trains except the parameters matching `cfg.freeze` (layer freezing by name)."""
    if not cfg.freeze:
        raise AdaptError("method freeze needs freeze: parameter-name patterns to freeze, e.g. ['body.tokens.*']")
    frozen = set(match_parameters(model, cfg.freeze, "freeze"))
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
