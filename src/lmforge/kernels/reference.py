"""Pure-PyTorch references of the float ops: what the C++ kernels must equal, and what runs without a compiler.

Each takes x (M, K) float32 and returns (M, N) float32 with the arithmetic the kernel promises (up to the
order of the sums): f32 products and sums. The block formats' references (Q8_0, Q4) live in `formats.py`.
"""

from __future__ import annotations

import torch


def reference_gemv_f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) f32 @ w (N, K) f32 ^T -> (M, N) f32."""
    return x @ w.t()


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest bf16 (ties to even), returned as float32."""
    return x.to(torch.bfloat16).to(torch.float32)


def reference_gemv_bf16(x: torch.Tensor, w: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """x (M, K) f32 @ w (N, K) bf16 ^T in f32; exact=False first rounds x to bf16 (a bf16 x bf16 product)."""
    xs = x if exact else round_to_bf16(x)
    return xs @ w.to(torch.float32).t()  # widening bf16 -> f32 is exact


def reference_gemv_int8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale[n] * sum_k x[m, k] * w[n, k] for x (M, K) f32, w (N, K) int8, scale (N,) f32."""
    return (x @ w.to(torch.float32).t()) * scale
