"""The block-quantized kernels (Q8_0, int4 Q4_0 / Q4_1-style) against formats.py's references, on every ISA path.

The integer block sums are exact on every path, so the kernels differ from the float64 references only by
the f32 arithmetic on top: the products d_w * d_x * isum (a few roundings each) and their sum in the
kernels' order. Per output element the tolerance is
    C * eps32 * (sum_b |d_w d_x| * sum_i |q_w' q_x| + sum_b |m_w s_x|),    q_w' = q_w (Q8_0, Q4_1), q_w - 8 (Q4_0)
(the lanes hold partial sums of 4 products, so sum_i |q_w' q_x| bounds them, not just |isum|); with C = 16
like the float kernels' tests, while a wrong nibble, block, scale or row is off by whole terms.
"""

from __future__ import annotations

import pytest
import torch

import lmforge.kernels as kernels
from lmforge.kernels import formats as F

C = 16
EPS32 = torch.finfo(torch.float32).eps
SMOL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (960, 576), (3072, 576)]
ODD_SHAPES = [(1, 32), (7, 96), (33, 224)]
MS = (1, 2, 3, 8, 13)
FORMATS = [("q8_0", 32)] + [(kind, g) for kind in ("q4_0", "q4_1") for g in (32, 64, 128)]


@pytest.fixture(scope="module")
def isas() -> list[str]:
    """The C++ paths this CPU has (scalar, avx2[, avx512]); skips the module on the reference backend."""
    if kernels.backend() != "cpp":
        pytest.skip(f"no C++ kernels ({kernels.build_error()}): the reference backend runs formats.py itself")
    return kernels.available_isas()


def pack(kind: str, w: torch.Tensor, group_size: int) -> tuple:
    return F.pack_q8_0(w) if kind == "q8_0" else (F.pack_q4_0 if kind == "q4_0" else F.pack_q4_1)(w, group_size)


def gemv(kind: str, x: torch.Tensor, packed: tuple, group_size: int) -> torch.Tensor:
    if kind == "q8_0":
        return torch.ops.lmforge.gemv_q8_0(x, *packed)
    q, scale, *low = packed
    return torch.ops.lmforge.gemv_q4(x, q, scale, low[0] if low else None, group_size)


def reference(kind: str, x: torch.Tensor, packed: tuple, group_size: int) -> torch.Tensor:
    if kind == "q8_0":
        return F.reference_gemv_q8_0(x, *packed)
    q, scale, *low = packed
    return F.reference_gemv_q4(x, q, scale, low[0] if low else None, group_size)


def tolerance(kind: str, x: torch.Tensor, packed: tuple, group_size: int) -> torch.Tensor:
    """The bound above, (M, N) in float64, from the integer values (formats.py's unpacking, by blocks)."""
    qx, dx, sx = F.quantize_activations_q8(x)
    m, k = qx.shape
    blocks = k // 32
    if kind == "q8_0":
        qw = packed[0].float().abs()
    else:  # |q_w - 8| from unpack_q4 with unit scales, or q_w itself
        qw = F.unpack_q4(packed[0], torch.ones_like(packed[1]), None, group_size)
        qw = qw.abs() if kind == "q4_0" else qw + 8
    dw = packed[1].double().repeat_interleave(group_size // 32, dim=1).abs()  # (N, B)
    ax = qx.float().abs().reshape(m, blocks, 32).transpose(0, 1)  # (B, M, 32)
    total = torch.zeros(m, qw.shape[0], dtype=torch.float64)
    for start in range(0, qw.shape[0], 8192):
        aw = qw[start:start + 8192].reshape(-1, blocks, 32).permute(1, 2, 0)  # (B, 32, n)
        sums = torch.bmm(ax, aw).permute(1, 2, 0).double()  # (M, n, B); a bound, f32 is plenty
        total[:, start:start + 8192] = (sums * dw[start:start + 8192][None] * dx.double().abs()[:, None]).sum(-1)
    if kind == "q4_1":
        total += sx.double().abs() @ packed[2].double().abs().repeat_interleave(group_size // 32, dim=1).T
    return C * EPS32 * total + 1e-30


def assert_close(ours: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape and ours.dtype == torch.float32, what
    err = (ours.double() - ref.double()).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"{what}: max error {err.max().item():.3g} is {worst:.2f}x the tolerance"


def weights(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, k, generator=gen) * 0.05
    w[n // 2] = 0.0  # a zero row (Q4_0 / Q8_0 scales 0)
    w[-1, : min(k, 64)] = 0.3  # constant blocks (Q4_1: d = 0)
    w[0, k // 3] = 4.0  # an outlier
    return w


def activations(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(m, k, generator=gen)
    x[:, :32] *= 100.0  # one loud block
    if m > 2:
        x[1] = 0.0  # a zero row: d_x = 0
        x[2, 32:] = 0.0  # zero blocks
    return x


def random_packed(kind: str, n: int, k: int, gen: torch.Generator) -> tuple:
    """Packed weights drawn directly (every int8 / nibble value, signed scales): cheap for the big head."""
    scale = (torch.randn(n, k // 32, generator=gen) * 0.01).half()
    if kind == "q8_0":
        return torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), scale
    q = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    return (q, scale) if kind == "q4_0" else (q, scale.abs(), (torch.randn(n, k // 32, generator=gen) * 0.1).half())


def check_all_paths(kind: str, shape: tuple[int, int], group_size: int, ms: tuple[int, ...], isas: list[str],
                    packed: tuple | None = None) -> None:
    n, k = shape
    gen = torch.Generator().manual_seed(n * 7919 + k * 31 + group_size)
    packed = packed or pack(kind, weights(n, k, gen), group_size)
    xs = [activations(m, k, gen) for m in ms]
    x_all = torch.cat(xs)  # x's rows are quantized independently: one reference for all the Ms
    ref_all, tol_all = reference(kind, x_all, packed, group_size), tolerance(kind, x_all, packed, group_size)
    start = 0
    for x in xs:
        rows = slice(start, start + x.shape[0])
        start += x.shape[0]
        for isa in isas:
            with kernels.forced_isa(isa):
                assert_close(gemv(kind, x, packed, group_size), ref_all[rows], tol_all[rows],
                             f"{kind} G={group_size} {isa} M={x.shape[0]}")


CASES = [(shape, kind, g) for shape in SMOL_SHAPES + ODD_SHAPES for kind, g in FORMATS if shape[1] % g == 0]


@pytest.mark.parametrize("shape,kind,group_size", CASES, ids=[f"{s[0]}x{s[1]}-{k}-G{g}" for s, k, g in CASES])
def test_kernel_matches_reference(isas, shape, kind, group_size):
    check_all_paths(kind, shape, group_size, MS, isas)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_lm_head_shape(isas, kind):
    """SmolLM2's 49152x576 LM head, M = 1, every path."""
    gen = torch.Generator().manual_seed(49152)
    check_all_paths(kind, (49152, 576), 32, (1,), isas, random_packed(kind, 49152, 576, gen))


def test_vnni_follows_the_isa(isas):
    with open("/proc/cpuinfo") as f:
        has_vnni = "avx512_vnni" in f.read().split()
    assert kernels.uses_vnni() == (has_vnni and kernels.isa() == "avx512")
    with kernels.forced_isa("scalar"):
        assert not kernels.uses_vnni()


def test_x_layouts_and_empty(isas):
    gen = torch.Generator().manual_seed(5)
    packed = F.pack_q4_1(torch.randn(24, 128, generator=gen), 64)
    xt = torch.randn(128, 3, generator=gen).t()  # not contiguous
    assert torch.equal(gemv("q4_1", xt, packed, 64), gemv("q4_1", xt.contiguous(), packed, 64))
    assert gemv("q4_1", torch.zeros(0, 128), packed, 64).shape == (0, 24)
    q8 = F.pack_q8_0(torch.randn(24, 128, generator=gen))
    x = torch.randn(2, 3, 128, generator=gen)  # the wrappers take (..., K)
    assert torch.equal(kernels.linear_q8_0(x, *q8), gemv("q8_0", x.reshape(6, 128), q8, 32).reshape(2, 3, 24))
    assert torch.equal(kernels.linear_q4(x, *packed, group_size=64),
                       gemv("q4_1", x.reshape(6, 128), packed, 64).reshape(2, 3, 24))


def test_bad_arguments_are_named(isas):
    ops = torch.ops.lmforge
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 128, generator=gen)
    q, scale = F.pack_q4_0(torch.randn(4, 128, generator=gen), 32)
    with pytest.raises(RuntimeError, match="gemv_q4: group_size 48 must be a multiple of 32"):
        ops.gemv_q4(x, q, scale, None, 48)
    with pytest.raises(RuntimeError, match="gemv_q4: group_size must be 32, 64 or 128, got 96"):
        ops.gemv_q4(x, q, scale, None, 96)
    with pytest.raises(RuntimeError, match=r"gemv_q4: scale must be float16 of shape \(N, K/group_size\) = \(4, 2\)"):
        ops.gemv_q4(x, q, scale, None, 64)
    with pytest.raises(RuntimeError, match=r"gemv_q4: min must be float16 of shape \(N, K/group_size\) = \(4, 4\)"):
        ops.gemv_q4(x, q, scale, scale.float(), 32)
    with pytest.raises(RuntimeError, match=r"gemv_q4: w must be uint8 of shape \(N, K/2\) with K = 96"):
        ops.gemv_q4(torch.randn(1, 96), q, scale, None, 32)
    with pytest.raises(RuntimeError, match="gemv_q4: x's width K must be a multiple of 32"):
        ops.gemv_q4(torch.randn(1, 100), q, scale, None, 32)
    q8, s8 = F.pack_q8_0(torch.randn(4, 128, generator=gen))
    with pytest.raises(RuntimeError, match=r"gemv_q8_0: scale must be float16 of shape \(N, K/32\) = \(4, 4\)"):
        ops.gemv_q8_0(x, q8, s8.float())
    with pytest.raises(RuntimeError, match="gemv_q8_0: w must be int8 of shape"):
        ops.gemv_q8_0(x, q8.to(torch.uint8), s8)
    with pytest.raises(RuntimeError, match="gemv_q8_0: w must be contiguous"):
        ops.gemv_q8_0(x, torch.randint(-9, 9, (128, 4), dtype=torch.int8).t(), s8)
    with pytest.raises(RuntimeError, match="gemv_q8_0: x must be a 2-D"):
        ops.gemv_q8_0(x.double(), q8, s8)
