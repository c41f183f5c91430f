"""Bottleneck adapters: Houlsby (2019) and Pfeiffer (2021).

An adapter is a small residual MLP, `h + up(act(down(h)))` with `down` d -> bottleneck and `up`
bottleneck -> d, inserted into every block of a frozen model; `up` starts at zero, so the adapted model
starts as the base. Houlsby et al. (2019) put one after the attention sublayer and one after the
feed-forward sublayer of every block (on their output projections, before the residual) and also train
the layer norms; Pfeiffer et al. (2021, AdapterFusion) keep only the one after the feed-forward
sublayer, and the norms frozen.

The adapter rides on the output projection it follows: `AdapterLinear` is that `nn.Linear` (the
base's own `weight` and `bias`, under their names) with the adapter as a child, so its tensors are
`...ffn.down_proj.adapter.down.weight` and so on, and base checkpoints still load.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.base import register
from lmforge.adapt.config import AdaptConfig, AdaptError
from lmforge.models.norms import RMSNorm

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Bottleneck(nn.Module):
    """`h + up(act(down(h)))`, with `up` zero-initialised (the identity at init)."""

    def __init__(self, d_model: int, width: int, activation: str = "gelu", device=None, dtype=None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise AdaptError(f"adapter activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.down = nn.Linear(d_model, width, device=device, dtype=dtype)  # nn.Linear's own init
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(width, d_model, device=device, dtype=dtype)
        self.reset_adapter_parameters()

    @torch.no_grad()
    def reset_adapter_parameters(self) -> None:
        """`up` zero: the identity (also after `Model.materialize` allocates meta parameters)."""
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))  # (..., d) -> (..., d)


class AdapterLinear(nn.Linear):
    """An output projection followed by a bottleneck adapter; it holds the base's own `weight` and `bias`."""

    adapted = True  # `fuse_projections` and `quantize_model` leave adapted layers alone

    def __init__(self, base: nn.Linear, width: int, activation: str = "gelu") -> None:
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapter = Bottleneck(base.out_features, width, activation, base.weight.device, base.weight.dtype)

    def forward(self, x):
        return self.adapter(super().forward(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bottleneck={self.adapter.down.out_features}"


def _wrap(model: nn.Module, cfg: AdaptConfig, where: tuple[str, ...]) -> None:
    """Put an adapter after the output projection of each sublayer in `where` ("attn", "ffn"), every block."""
    if not isinstance(cfg.bottleneck, int) or isinstance(cfg.bottleneck, bool) or cfg.bottleneck <= 0:
        raise AdaptError(f"method {cfg.method}: bottleneck={cfg.bottleneck!r} (the adapter width: a positive integer, "
                         "e.g. 64)")
    blocks = model.blocks() if hasattr(model, "blocks") else []
    if not blocks:
        raise AdaptError(f"method {cfg.method}: the model has no Transformer blocks to put adapters in")
    outputs = {"attn": "o_proj", "ffn": "down_proj"}
    for i, block in enumerate(blocks):
        for sublayer in where:
            parent = getattr(block, sublayer)
            layer = getattr(parent, outputs[sublayer])
            if not isinstance(layer, nn.Linear) or getattr(type(layer), "adapted", False):
                raise AdaptError(f"method {cfg.method}: block {i} {sublayer}.{outputs[sublayer]} is a "
                                 f"{type(layer).__name__}, not a plain Linear (a quantized or adapted layer)")
            setattr(parent, outputs[sublayer], AdapterLinear(layer, cfg.bottleneck))


@register("houlsby")
def houlsby(model: nn.Module, cfg: AdaptConfig) -> None:
    """Adapters after attention and after the FFN of every block; adapters and the body's norms train."""
    _wrap(model, cfg, ("attn", "ffn"))
    for module in model.body.modules():
        if isinstance(module, (nn.LayerNorm, RMSNorm)):
            for p in module.parameters():
                p.requires_grad_(True)


@register("pfeiffer")
def pfeiffer(model: nn.Module, cfg: AdaptConfig) -> None:
    """An adapter after the FFN of every block; only the adapters (and the task head) train."""
    _wrap(model, cfg, ("ffn",))
