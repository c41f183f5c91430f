"""Positional encodings: sinusoidal, learned absolute, and rotary (RoPE) with scaling."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.config import ModelConfig


def sinusoidal_table(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position embeddings (no parameters)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_positions, self.dim = cfg.max_seq_len, cfg.d_model
        self.register_buffer("table", sinusoidal_table(self.num_positions, self.dim), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the table (after building on the meta device)."""
        self.table = sinusoidal_table(self.num_positions, self.dim).to(device)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


class LearnedPositions(nn.Module):
    """A learned embedding per absolute position (BERT, GPT-2, BART with an offset of 2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.offset = cfg.position_offset
        self.weight = nn.Parameter(torch.empty(cfg.max_seq_len + cfg.position_offset, cfg.d_model))  # init_weights

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(position_ids + self.offset, self.weight)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), in the `rotate_half` layout that Hugging Face checkpoints use.

    Scaling for contexts longer than training (`cfg.rope_scaling`):
    - `linear`: positions divided by `factor` (Chen et al. 2023, position interpolation);
    - `ntk`: base raised to `base * factor^(d/(d-2))` (NTK-aware scaling, static);
    - `dynamic`: NTK base recomputed from the current length once it exceeds `max_seq_len`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = int(cfg.head_dim * cfg.rope_fraction)
        self.base = cfg.rope_theta
        self.max_seq_len = cfg.max_seq_len
        scaling = cfg.rope_scaling or {}
        self.kind = scaling.get("type")
        self.factor = float(scaling.get("factor", 1.0))
        self.static_base = self.base
        if self.kind == "ntk":
            self.static_base = self.base * self.factor ** (self.dim / (self.dim - 2))
        self.register_buffer("inv_freq", self._inv_freq(self.static_base), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the frequencies (after building on the meta device)."""
        self.inv_freq = self._inv_freq(self.static_base).to(device)

    def _inv_freq(self, base: float) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, each (B, T, rot_dim), for integer positions (B, T)."""
        inv_freq = self.inv_freq
        if self.kind == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_seq_len:
                ratio = self.factor * seq_len / self.max_seq_len - (self.factor - 1)
                inv_freq = self._inv_freq(self.base * ratio ** (self.dim / (self.dim - 2))).to(inv_freq.device)
        positions = position_ids.float()
        if self.kind == "linear":
            positions = positions / self.factor
        freqs = positions[..., None] * inv_freq  # (B, T, rot_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by position; only the first `cos.shape[-1]` dims turn."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, rot_dim)
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)

