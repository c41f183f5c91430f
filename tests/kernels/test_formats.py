"""The block formats against llama.cpp's: gguf-py's quantizers byte for byte, ggml's loops, and hand computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from lmforge.kernels import formats as F

F16_EPS = 2.0**-11  # fp16's unit roundoff: |d - fp16(d)| <= F16_EPS * |fp16(d)| for normal d

GGUF_TYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0,
              "q4_1": GGMLQuantizationType.Q4_1}
PACKERS = {"q8_0": F.pack_q8_0, "q4_0": F.pack_q4_0, "q4_1": F.pack_q4_1}


def awkward_weights(rows: int = 48, width: int = 256, seed: int = 0) -> torch.Tensor:
    """Normal rows, plus rows of zeros, outliers, constants, ties, tiny and huge values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, width, generator=g) * 10 ** torch.empty(rows, 1).uniform_(-3, 1, generator=g)
    w[0] = 0.0
    w[1] = 0.75  # constant row: Q4_1's d = 0
    w[2, torch.arange(0, width, 37)] = torch.tensor([80.0, -120.0, 55.0, -300.0, 1000.0, -2.0, 3.0])[: (width + 36) // 37]
    w[3] = torch.randint(-16, 17, (width,), generator=g).float() / 4 + 0.0  # many exact ties (+0.0 only)
    w[4, :32] = torch.tensor([1.0, -1.0] * 16)  # +1 / -1 tie for the largest magnitude
    w[5] *= 1e-4  # fp16-subnormal scales
    w[6, :64] = 0.0  # zero blocks inside a row
    w[7, width // 2] = -60000.0  # fp16's range edge
    return w


# ----------------------------------------------------------------------------------------------------
# GGUF oracle: gguf-py's quantizers are bit-exact ports of ggml-quants.c


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_gguf_bytes_equal_gguf_py(kind):
    w = awkward_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gguf-py's own fp16 overflow on the huge row
        expected = quantize(w.numpy(), GGUF_TYPES[kind])
    packed = PACKERS[kind](w)
    ours = F.to_gguf_blocks(kind, *packed)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)

    back = F.from_gguf_blocks(kind, expected, tuple(w.shape))
    assert len(back) == len(packed)
    for ours_t, back_t in zip(packed, back):
        assert back_t.dtype == ours_t.dtype and torch.equal(back_t.view(torch.uint8), ours_t.view(torch.uint8))


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_unpack_equals_gguf_dequantize(kind):
    w = awkward_weights(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = dequantize(quantize(w.numpy(), GGUF_TYPES[kind]), GGUF_TYPES[kind])
    packed = PACKERS[kind](w)
    ours = F.unpack_q8_0(*packed) if kind == "q8_0" else F.unpack_q4(*packed)
    np.testing.assert_array_equal(ours.numpy(), expected)


def ggml_q4_block(x: list[float], kind: str) -> tuple[float, float, list[int]]:
    """ggml-quants.c's quantize_row_q4_0_ref / q4_1_ref on one block, transcribed loop for loop in float32."""
    f = np.float32
    if kind == "q4_0":
        amax, peak = f(0.0), f(0.0)
        for v in map(f, x):
            if amax < abs(v):
                amax, peak = abs(v), v
        d = peak / f(-8)
        inv = f(1) / d if d else f(0)
        return float(np.float16(d)), 0.0, [min(15, int(f(v) * inv + f(8.5))) for v in x]
    low, high = f(np.finfo(np.float32).max), f(-np.finfo(np.float32).max)
    for v in map(f, x):
        low = v if v < low else low
        high = v if v > high else high
    d = (high - low) / f(15)
    inv = f(1) / d if d else f(0)
    return float(np.float16(d)), float(np.float16(low)), [min(15, int((f(v) - low) * inv + f(0.5))) for v in x]


@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
def test_q4_follows_ggml_loop_on_signed_zeros_and_ties(kind):
    # gguf-py's numpy min/max/argmax may pick a different zero (-0.0 / 0.0) than ggml's loop: follow ggml.
    blocks = [[-0.0, 0.0] * 16, [0.0, -0.0] * 16, [0.0] * 31 + [-0.0], [-0.0] * 32,
              [0.0, -0.0] + [1.0] * 30, [-1.0, -0.0] + [-2.0] * 30, [2.0, -2.0] * 16, [-2.0, 2.0] * 16]
    for block in blocks:
        w = torch.tensor([block])
        packed = PACKERS[kind](w)
        d, m, q = ggml_q4_block(block, kind)
        assert np.signbit(packed[1].item()) == np.signbit(d) and packed[1].item() == d
        if kind == "q4_1":
            assert np.signbit(packed[2].item()) == np.signbit(m) and packed[2].item() == m
        nibbles = packed[0][0]
        assert [int(b) & 15 for b in nibbles] + [int(b) >> 4 for b in nibbles] == q


# ----------------------------------------------------------------------------------------------------
# Round trips within each format's bound


def test_int8_round_trip():
    w = awkward_weights(width=96)
    q, scale = F.pack_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0],) and scale[0] == 0 and (q[0] == 0).all()
    err = (F.unpack_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] * (0.5 + 1e-6) + 1e-30).all()
    assert torch.equal(scale, w.abs().amax(dim=1) / 127)


def test_q8_0_round_trip():
    w = awkward_weights()
    q, scale = F.pack_q8_0(w)
    d = scale.float().repeat_interleave(32, dim=1)
    err = (F.unpack_q8_0(q, scale) - w).abs()
    # d/2 from rounding, plus |q| <= 127 times fp16's rounding of d; 2^-24 for fp16-subnormal scales
    assert (err <= d * (0.5 + 127 * F16_EPS) * (1 + 1e-6) + 127 * 2.0**-25).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_q4_round_trip(group_size):
    w = awkward_weights()[:, :].clone()
    w[7, 128] = -600.0  # keep the scales and mins in fp16's range
    q, scale = F.pack_q4_0(w, group_size)
    assert q.dtype == torch.uint8 and q.shape == (48, 128) and scale.shape == (48, 256 // group_size)
    d = scale.float().abs().repeat_interleave(group_size, dim=1)
    err = (F.unpack_q4(q, scale, group_size=group_size) - w).abs()
    assert (err <= d * (1 + 8 * F16_EPS) * (1 + 1e-6) + 8 * 2.0**-25).all()

    q, scale, low = F.pack_q4_1(w, group_size)
    d = scale.float().repeat_interleave(group_size, dim=1)
    m = low.float().abs().repeat_interleave(group_size, dim=1)
    err = (F.unpack_q4(q, scale, low, group_size) - w).abs()
    assert (err <= (d * (1 + 15 * F16_EPS) + m * F16_EPS) * (1 + 1e-6) + 16 * 2.0**-25).all()


@pytest.mark.parametrize("group_size", [64, 128])
def test_q4_group_equals_blocks_with_the_same_range(group_size):
    # when every 32-block of a group has the group's max and min, a group of G quantizes like its 32-blocks
    w = torch.rand(8, 256, generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    w[:, 0::32], w[:, 1::32] = 2.0, -1.75
    for pack in (F.pack_q4_0, F.pack_q4_1):
        by_group, by_block = pack(w, group_size), pack(w, 32)
        assert torch.equal(by_group[0], by_block[0])
        for group_t, block_t in zip(by_group[1:], by_block[1:]):
            assert torch.equal(group_t, block_t[:, :: group_size // 32])
    with pytest.raises(AssertionError):  # and the test can tell: a group's range differs from its blocks'
        w[:, 32] = 4.0
        assert torch.equal(F.pack_q4_0(w, group_size)[0], F.pack_q4_0(w, 32)[0])


# ----------------------------------------------------------------------------------------------------
# Activations and the reference products


def test_quantize_activations_by_hand():
    # block 0: amax 127 -> d = 1, q = x rounded half to even; block 1: zeros; block 2: d = 0.02 (f32, fp16)
    ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.0]
    b0 = ties + [3.2, -3.7] * 12
    b2 = [2.54] + [0.01 * i for i in range(31)]
    q, d, s = F.quantize_activations_q8(torch.tensor([b0 + [0.0] * 32 + b2]))
    assert q.dtype == torch.int8 and q.shape == (1, 96) and d.shape == s.shape == (1, 3)
    q0 = [round(v) for v in b0]  # Python's round() ties to even
    assert q[0, :32].tolist() == q0 and q0[:8] == [0, 2, 2, 0, -2, -2, 126, -127]
    assert d[0, 0] == 1.0 and s[0, 0] == float(np.float16(sum(q0)))
    assert d[0, 1] == 0 and s[0, 1] == 0 and (q[0, 32:64] == 0).all()
    d2 = np.float32(2.54) / np.float32(127)
    q2 = [round(float(np.float32(v) * (np.float32(1) / d2))) for v in b2]
    assert q[0, 64:].tolist() == q2 and q2[0] == 127
    assert d[0, 2] == float(np.float16(d2)) and s[0, 2] == float(np.float16(d2 * np.float32(sum(q2))))


def dequantised_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_x * d_x in float64 (M, K), d_x * sum(q_x) per block in float64, s_x in float64): all exact."""
    q, d, s = F.quantize_activations_q8(x)
    m, k = q.shape
    qd = q.double().reshape(m, k // 32, 32)
    return (qd * d.double()[..., None]).reshape(m, k), qd.sum(-1) * d.double(), s.double()


@pytest.mark.parametrize("m", [1, 3])
def test_reference_q8_0_equals_matmul_of_dequantised(m):
    g = torch.Generator().manual_seed(m)
    w, x = torch.randn(40, 192, generator=g), torch.randn(m, 192, generator=g) * 3
    q, scale = F.pack_q8_0(w)
    xd, _, _ = dequantised_activations(x)
    expected = (xd @ F.unpack_q8_0(q, scale).double().T).float()  # q * d is exact in f32
    torch.testing.assert_close(F.reference_gemv_q8_0(x, q, scale), expected, rtol=2**-23, atol=0)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_reference_q4_equals_matmul_of_dequantised(group_size, symmetric):
    g = torch.Generator().manual_seed(group_size)
    w, x = torch.randn(40, 256, generator=g) + 0.3, torch.randn(3, 256, generator=g)
    xd, xsum, s = dequantised_activations(x)
    if symmetric:
        q, scale = F.pack_q4_0(w, group_size)
        low = None
        expected = xd @ F.unpack_q4(q, scale, group_size=group_size).double().T  # (q - 8) * d: exact in f32
    else:
        q, scale, low = F.pack_q4_1(w, group_size)
        m = low.double().repeat_interleave(group_size // 32, dim=1)  # (N, B)
        wd = F.unpack_q4(q, scale, torch.zeros_like(low), group_size).double()  # q * d: exact in f32
        wd = wd + low.double().repeat_interleave(group_size, dim=1)
        # llama.cpp's q4_1 x q8_1 uses s_x = fp16(d_x sum q_x) for the sum of the dequantised activations
        expected = xd @ wd.T + (s - xsum) @ m.T
    got = F.reference_gemv_q4(x, q, scale, low, group_size)
    torch.testing.assert_close(got, expected.float(), rtol=2**-22, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_sizes_name_the_sizes():
    with pytest.raises(ValueError, match="group size 64 does not divide the input width 96"):
        F.pack_q4_0(torch.randn(4, 96), group_size=64)
    with pytest.raises(ValueError, match="group size 128 does not divide the input width 96"):
        F.pack_q4_1(torch.randn(4, 96), group_size=128)
    with pytest.raises(ValueError, match="block size 32 does not divide the input width 40"):
        F.pack_q8_0(torch.randn(4, 40))
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, got 48"):
        F.pack_q4_0(torch.randn(4, 96), group_size=48)
    with pytest.raises(ValueError, match="block size 32 does not divide the input width 40"):
        F.quantize_activations_q8(torch.randn(1, 40))
    with pytest.raises(ValueError, match="w must be a 2-D float tensor"):
        F.pack_q8_0(torch.randn(64))

    q, scale = F.pack_q8_0(torch.randn(4, 64))
    with pytest.raises(ValueError, match="x has input width 32, the weights 64"):
        F.reference_gemv_q8_0(torch.randn(1, 32), q, scale)
    with pytest.raises(ValueError, match=r"scale must be float16 of shape \(4, 2\), got float32 of shape \(4, 2\)"):
        F.reference_gemv_q8_0(torch.randn(1, 64), q, scale.float())
    q4, scale4 = F.pack_q4_0(torch.randn(4, 128), group_size=32)
    with pytest.raises(ValueError, match="group size 128|scale must be float16 of shape \\(4, 1\\)"):
        F.reference_gemv_q4(torch.randn(1, 128), q4, scale4, None, 128)
    with pytest.raises(ValueError, match="group size 64 does not divide the input width 96"):
        F.reference_gemv_q4(torch.randn(1, 96), q4[:, :48], scale4[:, :3], None, 64)
    with pytest.raises(ValueError, match="q4_0 data of shape \\(4, 128\\) must have 288 bytes"):
        F.from_gguf_blocks("q4_0", np.zeros(100, np.uint8), (4, 128))
    with pytest.raises(ValueError, match="kind must be one of q8_0, q4_0, q4_1, got 'q5_0'"):
        F.to_gguf_blocks("q5_0", q4, scale4)
    with pytest.raises(ValueError, match="q4_1 takes 3 tensors"):
        F.to_gguf_blocks("q4_1", q4, scale4)
