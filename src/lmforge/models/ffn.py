"""Position-wise feed-forward networks: GELU / ReLU MLPs and gated (SwiGLU) ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.attention import is_adapted
from lmforge.models.config import ModelConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """`down(act(up(x)))`, or gated `down(act(gate(x)) * up(x))` (Shazeer 2020, SwiGLU with silu)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.activation]
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias) if cfg.gated_ffn else None
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ffn_bias)
        self.gate_up_proj: nn.Linear | None = None  # gate and up in one, after `fuse_projections` (inference)

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Replace gate/up by one Linear for inference (one GEMM); the separate ones are gone afterwards.

        Parts that are not `nn.Linear` (quantized ones) fuse through their class's `concat(parts)`; an
        adapted part (LoRA, adapter: its class sets `adapted = True`) keeps both apart, so the adapter stays.
        """
        if self.gate_proj is None:
            return
        gate, up = self.gate_proj, self.up_proj
        if is_adapted(gate) or is_adapted(up):
            return
        if not (isinstance(gate, nn.Linear) and isinstance(up, nn.Linear)):  # packed (lmforge.compress): concat rows
            if type(gate) is not type(up):
                return  # one quantized, one not: they stay apart
            fused = type(gate).concat([gate, up])
        else:
            fused = nn.Linear(gate.in_features, 2 * gate.out_features, bias=gate.bias is not None,
                              device=gate.weight.device, dtype=gate.weight.dtype)
            fused.weight.copy_(torch.cat([gate.weight, up.weight]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([gate.bias, up.bias]))
        self.gate_up_proj = fused
        self.gate_proj = None
        del self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        if self.gate_proj is not None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))
