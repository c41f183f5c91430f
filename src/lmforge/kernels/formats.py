"""The block-quantized weight formats, in pure PyTorch: packing, unpacking, GGUF bytes, and the references.

Decoding reads every weight once per token, so fewer bytes per weight is faster. These are llama.cpp's
formats with its arithmetic (ggml-quants.c's reference quantizers), so a packed tensor converts to and
from GGUF block bytes without dequantising, byte for byte equal to what llama.cpp (and gguf-py) writes:

- int8 per output channel: one f32 scale per row (for the fp32-activation kernels);
- Q8_0: blocks of 32 along K, int8 values and one fp16 scale per block;
- Q4_0 / Q4_1 (symmetric / asymmetric int4): groups of G in {32, 64, 128} along K with an fp16 scale
  (and an fp16 minimum); G = 32 is llama.cpp's format. Within each 32-element block byte i holds element
  i in its low nibble and element i + 16 in its high nibble (llama.cpp's order).

Weights are (N, K) row-major (out x in), quantized along K. The separate tensors (values, scales, mins)
are what the kernels read; GGUF interleaves them per block, see `to_gguf_blocks` / `from_gguf_blocks`.

The kernels quantize the activations once per call to Q8_0 blocks (Q8_1 for the asymmetric format, which
also needs d * sum(q) per block) and sum exact integer block products; `reference_gemv_*` do the same in
float64 and are the parity oracle of the C++ ops (`torch.ops.lmforge.gemv_q8_0` / `gemv_q4`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BLOCK_SIZE = 32  # elements per Q8_0 / Q4 block along K
GROUP_SIZES = (32, 64, 128)  # int4 scale groups
GGUF_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}  # fp16 d [+ fp16 m] + the values


# ----------------------------------------------------------------------------------------------------
# Validation and small helpers


def _matrix(w: Tensor, name: str) -> Tensor:
    """`w` as a 2-D float32 tensor, or a ValueError naming it."""
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        desc = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{name} must be a 2-D float tensor (rows, input width), got {desc}")
    return w.detach().to(torch.float32)


def _check_width(width: int, size: int, what: str = "block size") -> None:
    if width % size:
        raise ValueError(f"{what} {size} does not divide the input width {width}")


def _check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")


def _check_tensor(t: Tensor | None, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
        got = f"{_dtype_name(t.dtype)} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be {_dtype_name(dtype)} of shape {shape}, got {got}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _inverse(d: Tensor) -> Tensor:
    """1 / d, and 0 where d == 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _round_half_away(v: Tensor) -> Tensor:
    """C's roundf (ties away from zero), exact in float32: floor(|v|) + floor(2 * frac(|v|))."""
    a = v.abs()
    whole = a.floor()
    return torch.sign(v) * (whole + (2 * (a - whole)).floor())


def _first_equal(groups: Tensor, value: Tensor) -> Tensor:
    """(N, G', 1): the first element of each group equal to `value`, so -0.0 and 0.0 keep ggml's loop's sign."""
    return groups.gather(-1, (groups == value[..., None]).to(torch.uint8).argmax(dim=-1, keepdim=True))


def _pack_nibbles(q: Tensor) -> Tensor:
    """(N, K) uint8 in 0..15 -> (N, K/2): per 32-block, byte i = element i | element i + 16 << 4."""
    n, k = q.shape
    q = q.reshape(n, k // BLOCK_SIZE, 2, BLOCK_SIZE // 2)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, k // 2)


def _unpack_nibbles(q: Tensor) -> Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 in 0..15, the inverse of `_pack_nibbles`."""
    n, half = q.shape
    q = q.reshape(n, half // (BLOCK_SIZE // 2), 1, BLOCK_SIZE // 2)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(n, 2 * half)


# ----------------------------------------------------------------------------------------------------
# int8 per output channel


def pack_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float -> (q int8 (N, K), scale f32 (N,)): scale = amax_row / 127, q = round(w / scale)."""
    w = _matrix(w, "w")
    scale = w.abs().amax(dim=1) / 127  # (N,)
    q = torch.round(w * _inverse(scale)[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def unpack_int8(q: Tensor, scale: Tensor) -> Tensor:
    """The f32 weights (N, K) of `pack_int8`'s output."""
    if not isinstance(q, Tensor) or q.dim() != 2 or q.dtype != torch.int8:
        raise ValueError(f"q must be a 2-D int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    _check_tensor(scale, "scale", torch.float32, (q.shape[0],))
    return q.to(torch.float32) * scale[:, None]


# ----------------------------------------------------------------------------------------------------
# Q8_0


def pack_q8_0(w: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float -> (q int8 (N, K), scale f16 (N, K/32)); ggml's quantize_row_q8_0_ref."""
    w = _matrix(w, "w")
    n, k = w.shape
    _check_width(k, BLOCK_SIZE)
    blocks = w.reshape(n, k // BLOCK_SIZE, BLOCK_SIZE)
    d = blocks.abs().amax(dim=-1) / 127  # (N, B)
    q = _round_half_away(blocks * _inverse(d)[..., None]).to(torch.int8)
    return q.reshape(n, k), d.to(torch.float16)


def unpack_q8_0(q: Tensor, scale: Tensor) -> Tensor:
    """The f32 weights (N, K) of `pack_q8_0`'s output (value = q * d)."""
    if not isinstance(q, Tensor) or q.dim() != 2 or q.dtype != torch.int8:
        raise ValueError(f"q must be a 2-D int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    n, k = q.shape
    _check_width(k, BLOCK_SIZE)
    _check_tensor(scale, "scale", torch.float16, (n, k // BLOCK_SIZE))
    return q.to(torch.float32) * scale.to(torch.float32).repeat_interleave(BLOCK_SIZE, dim=1)


# ----------------------------------------------------------------------------------------------------
# int4: Q4_0 (symmetric) and Q4_1 (asymmetric), groups of 32 / 64 / 128


def _groups(w: Tensor, group_size: int) -> Tensor:
    w = _matrix(w, "w")
    _check_group_size(group_size)
    n, k = w.shape
    _check_width(k, group_size, "group size")
    return w.reshape(n, k // group_size, group_size)


def pack_q4_0(w: Tensor, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """(N, K) float -> (q uint8 (N, K/2), scale f16 (N, K/G)); ggml's quantize_row_q4_0_ref for G = 32."""
    groups = _groups(w, group_size)  # (N, K/G, G)
    n, g, _ = groups.shape
    # The signed value of largest magnitude (the first one on ties) maps to -8, so the range is used fully;
    # ggml's loop starts from max = +0.0, so an all-zero group gets d = -0.0 whatever its zeros' signs.
    magnitude = groups.abs()
    peak = groups.gather(-1, magnitude.argmax(dim=-1, keepdim=True))  # (N, K/G, 1)
    peak = torch.where(magnitude.amax(dim=-1, keepdim=True) == 0, torch.zeros_like(peak), peak)
    d = peak / -8
    q = torch.trunc(groups * _inverse(d) + 8.5).clamp(0, 15).to(torch.uint8)
    return _pack_nibbles(q.reshape(n, g * group_size)), d.squeeze(-1).to(torch.float16)


def pack_q4_1(w: Tensor, group_size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """(N, K) float -> (q uint8 (N, K/2), scale f16 (N, K/G), min f16 (N, K/G)); ggml's quantize_row_q4_1_ref."""
    groups = _groups(w, group_size)  # (N, K/G, G)
    n, g, _ = groups.shape
    low, high = _first_equal(groups, groups.amin(dim=-1)), _first_equal(groups, groups.amax(dim=-1))
    d = (high - low) / 15
    q = torch.trunc((groups - low) * _inverse(d) + 0.5).clamp(0, 15).to(torch.uint8)
    return (_pack_nibbles(q.reshape(n, g * group_size)), d.squeeze(-1).to(torch.float16),
            low.squeeze(-1).to(torch.float16))


def _check_q4(q: Tensor, scale: Tensor, min: Tensor | None, group_size: int) -> tuple[int, int]:
    """(N, K) of packed int4 tensors, or a ValueError naming the one that does not fit."""
    _check_group_size(group_size)
    if not isinstance(q, Tensor) or q.dim() != 2 or q.dtype != torch.uint8:
        raise ValueError(f"q must be a 2-D uint8 tensor (N, K/2), got {getattr(q, 'dtype', type(q).__name__)}")
    n, k = q.shape[0], 2 * q.shape[1]
    _check_width(k, group_size, "group size")
    _check_tensor(scale, "scale", torch.float16, (n, k // group_size))
    if min is not None:
        _check_tensor(min, "min", torch.float16, (n, k // group_size))
    return n, k


def unpack_q4(q: Tensor, scale: Tensor, min: Tensor | None = None, group_size: int = 32) -> Tensor:
    """The f32 weights (N, K): (q - 8) * d without `min` (Q4_0), q * d + m with it (Q4_1)."""
    _check_q4(q, scale, min, group_size)
    values = _unpack_nibbles(q).to(torch.float32)  # (N, K)
    d = scale.to(torch.float32).repeat_interleave(group_size, dim=1)
    if min is None:
        return (values - 8) * d
    return d * values + min.to(torch.float32).repeat_interleave(group_size, dim=1)


# ----------------------------------------------------------------------------------------------------
# GGUF block bytes (G = 32 only)


def _kind(kind: str) -> str:
    if kind not in GGUF_BLOCK_BYTES:
        raise ValueError(f"kind must be one of {', '.join(GGUF_BLOCK_BYTES)}, got {kind!r}")
    return kind


def _bytes(t: Tensor, n: int, blocks: int) -> np.ndarray:
    """A CPU tensor's bytes as uint8 (N, B, bytes per block)."""
    return t.detach().cpu().contiguous().numpy().view(np.uint8).reshape(n, blocks, -1)


def to_gguf_blocks(kind: str, *packed: Tensor) -> np.ndarray:
    """Packed tensors (`pack_q8_0` / `pack_q4_0` / `pack_q4_1` output, G = 32) -> GGUF bytes uint8 (N, K/32 * block bytes)."""
    _kind(kind)
    expected = 3 if kind == "q4_1" else 2
    if len(packed) != expected:
        raise ValueError(f"{kind} takes {expected} tensors (q, scale{', min' if expected == 3 else ''}), got {len(packed)}")
    q, scale = packed[0], packed[1]
    if kind == "q8_0":
        if not isinstance(q, Tensor) or q.dim() != 2 or q.dtype != torch.int8:
            raise ValueError(f"q must be a 2-D int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
        n, k = q.shape
        _check_width(k, BLOCK_SIZE)
        _check_tensor(scale, "scale", torch.float16, (n, k // BLOCK_SIZE))
    else:
        n, k = _check_q4(q, scale, packed[2] if kind == "q4_1" else None, BLOCK_SIZE)
    blocks = k // BLOCK_SIZE
    parts = [_bytes(t, n, blocks) for t in (scale, *packed[2:], q)]  # d [, m], values: ggml's block order
    return np.concatenate(parts, axis=-1).reshape(n, blocks * GGUF_BLOCK_BYTES[kind])


def from_gguf_blocks(kind: str, data: np.ndarray | Tensor, shape: tuple[int, int]) -> tuple[Tensor, ...]:
    """GGUF block bytes of an (N, K) tensor -> the packed tensors of `pack_q8_0` / `pack_q4_0` / `pack_q4_1` (G = 32)."""
    _kind(kind)
    n, k = shape
    _check_width(k, BLOCK_SIZE)
    blocks = k // BLOCK_SIZE
    raw = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    size = n * blocks * GGUF_BLOCK_BYTES[kind]
    if raw.size != size:
        raise ValueError(f"{kind} data of shape {shape} must have {size} bytes "
                         f"({n} rows x {blocks} blocks x {GGUF_BLOCK_BYTES[kind]}), got {raw.size}")
    raw = raw.reshape(n, blocks, GGUF_BLOCK_BYTES[kind])

    def part(start: int, stop: int, dtype: type, width: int) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw[:, :, start:stop]).view(dtype).reshape(n, width))

    scale = part(0, 2, np.float16, blocks)
    if kind == "q8_0":
        return part(2, 34, np.int8, k), scale
    if kind == "q4_0":
        return part(2, 18, np.uint8, k // 2), scale
    return part(4, 20, np.uint8, k // 2), scale, part(2, 4, np.float16, blocks)


# ----------------------------------------------------------------------------------------------------
# Activations and the reference products


def quantize_activations_q8(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, K) -> (q int8 (M, K), d f32 (M, K/32), s f32 (M, K/32)): what the kernels do to x once per call.

    llama.cpp's SIMD quantize_row_q8_0 / q8_1: d = amax / 127, q = round-half-to-even(x / d); d and
    s = d * sum(q) are rounded to fp16 (returned as the f32 values the products use).
    """
    x = _matrix(x, "x")
    m, k = x.shape
    _check_width(k, BLOCK_SIZE)
    blocks = x.reshape(m, k // BLOCK_SIZE, BLOCK_SIZE)
    d = blocks.abs().amax(dim=-1) / 127  # (M, B)
    q = torch.round(blocks * _inverse(d)[..., None])  # ties to even, like _mm256_round_ps / cvtps2dq
    s = d * q.sum(dim=-1)
    return (q.to(torch.int8).reshape(m, k), d.to(torch.float16).to(torch.float32),
            s.to(torch.float16).to(torch.float32))


def _block_dots(qx: Tensor, qw: Tensor) -> Tensor:
    """Exact integer block sums (M, N, B) = sum_i qw[n, b, i] * qx[m, b, i], in float64, rows in chunks."""
    m, k = qx.shape
    blocks = k // BLOCK_SIZE
    xb = qx.to(torch.float64).reshape(m, blocks, BLOCK_SIZE).transpose(0, 1)  # (B, M, 32)
    chunks = []
    for start in range(0, qw.shape[0], 4096):
        wb = qw[start:start + 4096].to(torch.float64).reshape(-1, blocks, BLOCK_SIZE).permute(1, 2, 0)  # (B, 32, n)
        chunks.append(torch.bmm(xb, wb).permute(1, 2, 0))  # (M, n, B); |sums| < 2^53: exact
    return torch.cat(chunks, dim=1)


def _check_x(x: Tensor, k: int) -> Tensor:
    x = _matrix(x, "x")
    if x.shape[1] != k:
        raise ValueError(f"x has input width {x.shape[1]}, the weights {k}")
    return x


def reference_gemv_q8_0(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    """x (M, K) f32 @ Q8_0 weights (N, K) -> (M, N) f32: sum_b d_w d_x sum_i q_w q_x (ggml's q8_0 x q8_0 dot)."""
    if not isinstance(w, Tensor) or w.dim() != 2 or w.dtype != torch.int8:
        raise ValueError(f"w must be a 2-D int8 tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    n, k = w.shape
    _check_width(k, BLOCK_SIZE)
    _check_tensor(scale, "scale", torch.float16, (n, k // BLOCK_SIZE))
    qx, dx, _ = quantize_activations_q8(_check_x(x, k))
    sums = _block_dots(qx, w)  # (M, N, B)
    dw = scale.to(torch.float64)
    return (sums * dw[None] * dx.to(torch.float64)[:, None]).sum(dim=-1).to(torch.float32)


def reference_gemv_q4(x: Tensor, w: Tensor, scale: Tensor, min: Tensor | None = None, group_size: int = 32) -> Tensor:
    """x (M, K) f32 @ int4 weights (N, K) -> (M, N) f32, as ggml's q4_0 x q8_0 / q4_1 x q8_1 dots.

    Symmetric: sum_b d_w d_x sum_i (q_w - 8) q_x; asymmetric: sum_b [d_w d_x sum_i q_w q_x + m_w s_x].
    """
    n, k = _check_q4(w, scale, min, group_size)
    qx, dx, sx = quantize_activations_q8(_check_x(x, k))
    qw = _unpack_nibbles(w).to(torch.int16)
    if min is None:
        qw = qw - 8
    sums = _block_dots(qx, qw)  # (M, N, B)
    per_block = group_size // BLOCK_SIZE
    dw = scale.to(torch.float64).repeat_interleave(per_block, dim=1)  # (N, B)
    out = (sums * dw[None] * dx.to(torch.float64)[:, None]).sum(dim=-1)
    if min is not None:
        out = out + sx.to(torch.float64) @ min.to(torch.float64).repeat_interleave(per_block, dim=1).T
    return out.to(torch.float32)
