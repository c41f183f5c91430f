"""LoRA, DoRA and QLoRA: a trainable low-rank update beside a frozen Linear layer.

LoRA (Hu et al. 2021) adds `B A x * s` to a frozen layer's output, with A (r, in) and B (out, r), B
zero-initialised so training starts at the base model, and s = alpha / r (rsLoRA, Kalajdzievski 2023:
alpha / sqrt(r)). DoRA (Liu et al. 2024) splits the updated weight into a direction and a trained
magnitude per output row: `m / ||W + s B A||_row * (W x + s B A x)`, the norm detached from the graph
as the paper suggests (section 4.3) and PEFT does. QLoRA (Dettmers et al. 2023) puts LoRA on a base
whose Linear layers are stored quantized (`lmforge.compress`): the base stays frozen, int8 or int4,
and gradients pass through it to the LoRA factors of earlier layers.

A wrapped layer *is* the layer it wraps, plus the factors: `LoRALinear` is an `nn.Linear` holding the
base's own `weight` and `bias` Parameters (and `QLoRALinear` a `QuantLinear` holding its packed
buffers), so the base tensors keep their names and `lora_A.weight` / `lora_B.weight` (and DoRA's
`lora_magnitude`) sit beside them. `merge_lora` folds the update into the weights for inference,
`unmerge_lora` takes it out again, and `merge_and_unload` returns plain Linear layers (exportable to
Hugging Face and GGUF). PEFT's layout of the same adapters is `peft_format.py`'s.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from lmforge.adapt.base import match_modules, register, set_module
from lmforge.adapt.config import AdaptConfig, AdaptError
from lmforge.compress.quantize import QuantConfig, QuantError, QuantLinear, is_quantized, quantize_model

QLORA_SCHEMES = {"int8": {}, "q8_0": {}, "int4": {"group_size": 32}}
"""cfg.quantize -> the QuantConfig fields of the frozen base (int4: group 32, symmetric)."""
BODY = "body."


class LoRAMixin:
    """The LoRA part shared by the wrappers: the factors, the scaling, the update and its weight."""

    adapted = True  # `fuse_projections` and `quantize_model` leave adapted layers alone
    in_features: int
    out_features: int

    def _init_lora(self, r: int, alpha: float, dropout: float, rslora: bool, device, dtype) -> None:
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.merged = False
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        """A as nn.Linear's (and PEFT's) kaiming-uniform init, B zero: the layer starts as the base layer."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def reset_adapter_parameters(self) -> None:
        """The method's own init again (`Model.materialize` calls it after allocating meta parameters)."""
        self.reset_lora()

    def lora_update(self, x: torch.Tensor) -> torch.Tensor:
        """s B A dropout(x): (..., in) -> (..., out), in the factors' dtype (f32 ones on a bf16 model's qlora)."""
        x = x.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """s B A, the (out, in) update LoRA adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # the base layer's own forward (nn.Linear or QuantLinear)
        return y if self.merged else y + self.lora_update(x).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}{', merged' if self.merged else ''}"


class LoRALinear(LoRAMixin, nn.Linear):
    """A frozen `nn.Linear` plus a LoRA update; it holds the base's own `weight` and `bias`."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self._init_lora(r, alpha, dropout, rslora, base.weight.device, base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """weight += s B A (once): the LoRA branch is then skipped."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """weight -= s B A: the base weight again (to rounding), the LoRA branch back on."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def unloaded(self) -> nn.Linear:
        """A plain `nn.Linear` holding this layer's weight and bias (merged or not, as they are now)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA: a trained magnitude per output row times the direction of W + s B A."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        super().__init__(base, r, alpha, dropout, rslora)
        with torch.no_grad():
            self.lora_magnitude = nn.Parameter(self.weight_norm())  # (out,): ||W||_row, so it starts at W
        self._merge_norm: torch.Tensor | None = None

    @torch.no_grad()
    def reset_adapter_parameters(self) -> None:
        self.reset_lora()
        self.lora_magnitude.copy_(self.weight_norm())

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W + s B A|| over each output row (out,), outside the graph (DoRA section 4.3)."""
        return torch.linalg.norm(self.weight + self.delta_weight().to(self.weight.dtype), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.Linear.forward(self, x)  # W x + b
        if self.merged:
            return y
        scale = self.lora_magnitude / self.weight_norm()  # (out,)
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # PEFT's order: the base output sees x, the DoRA correction the dropped-out x.
            x = self.lora_dropout(x)
            wx = nn.functional.linear(x, self.weight)
        else:
            wx = y - self.bias if self.bias is not None else y
        lora = self.lora_B(self.lora_A(x)) * self.scaling
        # b + m/n (W x + s B A x), written as PEFT writes it so the rounding matches.
        return y + (scale - 1) * wx + scale * lora

    @torch.no_grad()
    def merge(self) -> None:
        """weight = m / ||W + s B A|| * (W + s B A) (once); the norm is kept to unmerge."""
        if not self.merged:
            self._merge_norm = self.weight_norm()
            factor = (self.lora_magnitude / self._merge_norm)[:, None]
            self.weight.copy_(factor * (self.weight + self.delta_weight()))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """The base weight again (to rounding): weight / factor - s B A."""
        if self.merged:
            factor = (self.lora_magnitude / self._merge_norm)[:, None]
            self.weight.copy_(self.weight / factor - self.delta_weight())
            self.merged, self._merge_norm = False, None


class QLoRALinear(LoRAMixin, QuantLinear):
    """A frozen quantized Linear (`QuantLinear`, its packed buffers under their names) plus a LoRA update."""

    def __init__(self, base: QuantLinear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        nn.Module.__init__(self)  # not QuantLinear's: the packed buffers are the base's, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scheme, self.group_size, self.symmetric = base.scheme, base.group_size, base.symmetric
        for name, buffer in base._buffers.items():
            self.register_buffer(name, buffer)
        device = next(t for t in base.packed().values()).device
        # The factors train in f32 (the packed base computes in f32 anyway); `model.to(dtype)` casts them.
        self._init_lora(r, alpha, dropout, rslora, device, torch.float32)

    def merge(self) -> None:
        raise AdaptError("cannot merge LoRA into a quantized base (qlora): the sum is no longer the packed format; "
                         "load the float base, apply the adapter there (load_adapter) and merge that")

    unmerge = merge

    def _apply(self, fn, recurse: bool = True) -> QLoRALinear:
        super()._apply(fn, recurse)  # the packed buffers keep their formats (QuantLinear's rule)
        for child in self.children():  # the LoRA factors move and cast like any parameters
            child._apply(fn)
        return self


LORA_LAYERS = (LoRALinear, QLoRALinear)


def check_config(cfg: AdaptConfig) -> None:
    """Raise one AdaptError naming every bad LoRA field (r, alpha, dropout, and quantize for qlora)."""
    problems = []
    if not isinstance(cfg.r, int) or isinstance(cfg.r, bool) or cfg.r <= 0:
        problems.append(f"r={cfg.r!r} (the rank: a positive integer, e.g. 8)")
    if not isinstance(cfg.alpha, (int, float)) or cfg.alpha <= 0:
        problems.append(f"alpha={cfg.alpha!r} (a positive number, e.g. 16)")
    if not isinstance(cfg.dropout, (int, float)) or not 0 <= cfg.dropout < 1:
        problems.append(f"dropout={cfg.dropout!r} (a probability in [0, 1))")
    if cfg.method == "qlora" and cfg.quantize not in QLORA_SCHEMES:
        problems.append(f"quantize={cfg.quantize!r} (the frozen base's format: {', '.join(QLORA_SCHEMES)})")
    if problems:
        raise AdaptError(f"method {cfg.method}: " + "; ".join(problems))


def lora_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """The Linear (or quantized Linear) modules `patterns` choose; heads only when a pattern names them.

    A layer outside the body (`lm_head.proj`, `head.proj`, `pooler.dense`) is a pretrained output layer or
    a new task layer, not an adapter target: `*proj` does not reach it, `lm_head.proj` does.
    """
    names = match_modules(model, patterns, kind=(nn.Linear, QuantLinear))
    chosen = []
    for name in names:
        if name.startswith(BODY):
            chosen.append(name)
            continue
        top = name.split(".", 1)[0]
        if any(top in p and fnmatch.fnmatchcase(name, p) for p in patterns):
            chosen.append(name)
    lost = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in chosen)]
    if lost:
        raise AdaptError(f"target_modules: {', '.join(map(repr, lost))} match only layers outside the body (heads); "
                         "name a head explicitly to adapt it, e.g. 'lm_head.proj'")
    return chosen


def wrap(layer: nn.Module, cfg: AdaptConfig, dora: bool = False, name: str = "layer") -> nn.Module:
    """`layer` with a LoRA (or DoRA) update: a `QuantLinear` gets `QLoRALinear`, an `nn.Linear` `LoRALinear`."""
    if getattr(type(layer), "adapted", False):
        raise AdaptError(f"{name} is already adapted ({type(layer).__name__})")
    if isinstance(layer, QuantLinear):
        if dora:
            raise AdaptError(f"{name}: DoRA on a quantized layer is not supported (use lora or qlora)")
        return QLoRALinear(layer, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora)
    if isinstance(layer, nn.Linear):
        kind = DoRALinear if dora else LoRALinear
        return kind(layer, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora)
    raise AdaptError(f"{name}: LoRA wraps Linear layers, not {type(layer).__name__}")


def apply_lora(model: nn.Module, cfg: AdaptConfig, dora: bool = False) -> list[str]:
    """Wrap every layer `cfg.target_modules` chooses (in place); return their names."""
    check_config(cfg)
    targets = lora_targets(model, cfg.target_modules)
    for name in targets:
        set_module(model, name, wrap(model.get_submodule(name), cfg, dora, name))
    return targets


@register("lora")
def lora(model: nn.Module, cfg: AdaptConfig) -> None:
    """LoRA on the target Linear layers (quantized ones too); only the factors (and the task head) train."""
    apply_lora(model, cfg)


@register("dora")
def dora(model: nn.Module, cfg: AdaptConfig) -> None:
    """DoRA on the target Linear layers: the LoRA factors and a magnitude per output row train."""
    apply_lora(model, cfg, dora=True)


@register("qlora")
def qlora(model: nn.Module, cfg: AdaptConfig) -> None:
    """Quantize every Linear of the blocks (`cfg.quantize`), frozen, then LoRA on the targets.

    A model that is already quantized in that format (a qlora checkpoint being loaded, whose packed
    modules `load_model` restored first) is taken as it is: nothing is quantized twice.
    """
    check_config(cfg)
    lora_targets(model, cfg.target_modules)  # a bad pattern fails before anything is quantized
    if is_quantized(model):
        scheme = getattr(getattr(model, "quantization", None), "scheme", None)
        if scheme != cfg.quantize:
            raise AdaptError(f"method qlora with quantize={cfg.quantize!r}, but the model is already quantized as "
                             f"{scheme!r}: load the float base, or set quantize={scheme!r}")
    else:
        try:
            quantize_model(model, QuantConfig(scheme=cfg.quantize, **QLORA_SCHEMES[cfg.quantize]))
        except QuantError as err:
            raise AdaptError(f"method qlora: {err}") from None
    apply_lora(model, cfg)


# ------------------------------------------------------------------------------------------- model level

def lora_layers(model: nn.Module) -> dict[str, LoRAMixin]:
    """The LoRA-wrapped layers of `model`, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LORA_LAYERS)}


def _mergeable(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers, after checking every one can merge (float base, weight not shared with another)."""
    layers = lora_layers(model)
    if not layers:
        raise AdaptError("the model has no LoRA layers to merge")
    quantized = [n for n, m in layers.items() if isinstance(m, QLoRALinear)]
    if quantized:
        raise AdaptError(f"cannot merge LoRA into a quantized base (qlora: {quantized[0]}, ...): load the float base, "
                         "apply the adapter there (load_adapter) and merge that")
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name, m in layers.items():
        if len(owners.get(id(m.weight), [])) > 1:
            raise AdaptError(f"{name}: its weight is shared ({', '.join(owners[id(m.weight)])}); merging would change "
                             "the other one too (a tied LM head): keep the adapter unmerged")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA/DoRA update into its layer's weight (inference: one GEMM per layer again).

    The factors stay, so `unmerge_lora` can undo it; to save or export, use `merge_and_unload`.
    """
    for layer in _mergeable(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every merged LoRA/DoRA update out of the weights again (to continue training)."""
    for layer in _mergeable(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """The model with every LoRA/DoRA layer merged and replaced by a plain `nn.Linear`, no adaptation recorded.

    What remains is an ordinary model of the same class: `save_pretrained` and the GGUF export take it.
    Parameters keep their `requires_grad` (the merged weights stay frozen).
    """
    method = getattr(getattr(model, "adaptation", None), "method", "lora")
    if method not in ("lora", "dora", "qlora"):
        raise AdaptError(f"merge_and_unload merges LoRA and DoRA; method {method!r} cannot be merged into the weights")
    layers = _mergeable(model)
    for name, layer in layers.items():
        layer.merge()
        set_module(model, name, layer.unloaded())
    if hasattr(model, "adaptation"):
        del model.adaptation
    return model
