"""The float kernels (f32, bf16, int8) against the PyTorch references, on every ISA path this CPU has.

Tolerance, per output element: |ours - ref| <= C * eps32 * sum_k |x[m, k]| * |w[n, k]|. A K-term f32 dot
product is exact up to K * eps32 * sum|x||w| in the worst case; with random-signed terms the rounding errors
add like a random walk, about 0.6 * eps32 * sum|x||w| (one sigma) for a plain left-to-right sum and less for
the kernels' lane-parallel sums. Both sides err, so C = 16 leaves a wide margin, while a wrong index, a
dropped K tail or a wrong scale is off by about one whole term (|x||w| ~ 1, 100-1000x the tolerance).
"""

from __future__ import annotations

import pytest
import torch

import lmforge.kernels as kernels
from lmforge.kernels import reference

C = 16
EPS32 = torch.finfo(torch.float32).eps
SMOL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (960, 576)]
ODD_SHAPES = [(7, 17), (33, 333), (1, 1), (130, 96)]
MS = (1, 2, 3, 8, 13)
OPS = ("f32", "bf16", "bf16-round", "int8")


def bound(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """C * eps32 * sum_k |x||w| (times |scale|), per (m, n) (in float32: a bound needs no more)."""
    b = x.abs() @ w.abs().t()
    if scale is not None:
        b = b * scale.abs()
    return C * EPS32 * b.double() + 1e-30


def assert_close(ours: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> None:
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    err = (ours.double() - ref.double()).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"max error {err.max().item():.3g} is {worst:.2f}x the tolerance"


def make_weights(op: str, n: int, k: int, gen: torch.Generator):
    """The op's weight arguments, and the f32/f64-exact view of the weights the bound uses."""
    w = torch.randn(n, k, generator=gen)
    if op == "f32":
        return (w,), w, None
    if op in ("bf16", "bf16-round"):
        wb = w.to(torch.bfloat16)
        return (wb,), wb.float(), None
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) * 0.02 + 0.001
    return (q, scale), q.float(), scale


def call_op(op: str, x: torch.Tensor, args: tuple) -> torch.Tensor:
    ops = torch.ops.lmforge
    if op == "f32":
        return ops.gemv_f32(x, *args)
    if op == "bf16":
        return ops.gemv_bf16(x, *args, True)
    if op == "bf16-round":
        return ops.gemv_bf16(x, *args, False)
    return ops.gemv_int8(x, *args)


def call_reference(op: str, x: torch.Tensor, args: tuple) -> torch.Tensor:
    if op == "f32":
        return reference.reference_gemv_f32(x, *args)
    if op in ("bf16", "bf16-round"):
        return reference.reference_gemv_bf16(x, *args, exact=op == "bf16")
    return reference.reference_gemv_int8(x, *args)


def x_for_bound(op: str, x: torch.Tensor) -> torch.Tensor:
    return reference.round_to_bf16(x) if op == "bf16-round" else x


@pytest.fixture(params=kernels.ops.ISA_NAMES)
def isa(request):
    """Run the test at each ISA level the CPU has (skipping the others), then restore "auto"."""
    if request.param not in kernels.available_isas():
        pytest.skip(f"the CPU (or the backend: {kernels.backend()}) has no {request.param} path")
    with kernels.forced_isa(request.param):
        assert kernels.isa() == request.param
        yield request.param
    assert kernels.isa() == kernels.available_isas()[-1]


# --------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SMOL_SHAPES + ODD_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_kernel_matches_reference(isa, op, shape):
    n, k = shape
    gen = torch.Generator().manual_seed(n * 1000 + k)
    args, w_exact, scale = make_weights(op, n, k, gen)
    for m in MS:
        x = torch.randn(m, k, generator=gen)
        ours, ref = call_op(op, x, args), call_reference(op, x, args)
        assert_close(ours, ref, bound(x_for_bound(op, x), w_exact, scale))


@pytest.mark.parametrize("op", OPS)
def test_lm_head_shape(op):
    """The one big matrix (SmolLM2's 49152x576 LM head), M = 1, on the best path."""
    gen = torch.Generator().manual_seed(7)
    args, w_exact, scale = make_weights(op, 49152, 576, gen)
    x = torch.randn(1, 576, generator=gen)
    assert_close(call_op(op, x, args), call_reference(op, x, args), bound(x_for_bound(op, x), w_exact, scale))


def test_bf16_dot_path_follows_the_isa():
    """vdpbf16ps runs exactly when the CPU has AVX512-BF16 and the AVX-512 path is active."""
    if kernels.backend() != "cpp":
        pytest.skip("reference backend")
    with open("/proc/cpuinfo") as f:
        has_bf16 = "avx512_bf16" in f.read().split()
    assert kernels.uses_bf16() == (has_bf16 and kernels.isa() == "avx512")
    with kernels.forced_isa("avx2"):
        assert not kernels.uses_bf16() and not kernels.uses_vnni()


def test_bf16_rounding_is_nearest_even(isa):
    """exact=False rounds x to bf16 with ties to even, on every path: read back through an identity matrix."""
    one = 1.0
    half_ulp = 2.0**-8  # half a bf16 ulp at 1.0
    values = torch.tensor([one + half_ulp,  # tie -> 1.0 (even)
                           one + 3 * half_ulp,  # tie -> 1 + 2^-6 (even)
                           one + half_ulp * 1.5,  # above the tie -> up
                           -(one + half_ulp),  # negative tie -> -1.0
                           3.0e38, 1e-3, -7.25, 0.0])
    k = values.numel()
    x = values.repeat(3, 1)  # (3, k)
    eye = torch.eye(k, dtype=torch.bfloat16)
    out = torch.ops.lmforge.gemv_bf16(x, eye, False)
    expected = bf16_round_bits(values).repeat(3, 1)
    assert torch.equal(out, expected)
    assert torch.equal(torch.ops.lmforge.gemv_bf16(x, eye, True), x)  # exact keeps x


def bf16_round_bits(x: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even to bf16 by integer arithmetic on the f32 bits (finite x), as float32."""
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32).view(torch.float32)


# --------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("shape", [(33, 333), (576, 576), (130, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_references_match_float64_formulas(shape):
    """The references against independent float64 formulas: matmul, widened bf16, dequantised int8."""
    n, k = shape
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    assert_close(reference.reference_gemv_f32(x, w), x.double() @ w.double().t(), bound(x, w))
    wb = w.to(torch.bfloat16)
    assert_close(reference.reference_gemv_bf16(x, wb), x.double() @ wb.double().t(), bound(x, wb.float()))
    xr = bf16_round_bits(x)
    assert torch.equal(reference.round_to_bf16(x), xr)
    assert_close(reference.reference_gemv_bf16(x, wb, exact=False), xr.double() @ wb.double().t(),
                 bound(xr, wb.float()))
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) + 0.01
    dequant = q.double() * scale.double()[:, None]
    assert_close(reference.reference_gemv_int8(x, q, scale), x.double() @ dequant.t(), bound(x, q.float(), scale))


# --------------------------------------------------------------------------------------------- wrappers


def test_wrappers_take_any_leading_shape():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 96, generator=gen)
    w = torch.randn(40, 96, generator=gen)
    flat = x.reshape(6, 96)
    out = kernels.linear_f32(x, w)
    assert out.shape == (2, 3, 40)
    assert_close(out.reshape(6, 40), reference.reference_gemv_f32(flat, w), bound(flat, w))
    xt = torch.randn(96, 4, generator=gen).t()  # a non-contiguous x is made contiguous
    assert_close(kernels.linear_f32(xt, w), reference.reference_gemv_f32(xt.contiguous(), w), bound(xt, w))
    v = torch.randn(96, generator=gen)  # a 1-D x is one row
    assert kernels.linear_f32(v, w).shape == (40,)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("m", [1, 7, kernels.ops.TORCH_FROM_M["f32"], 100])
def test_wrappers_small_and_large_m(op, m):
    """Both routes of the wrappers (the kernel below TORCH_FROM_M rows, torch from it on) give the product."""
    gen = torch.Generator().manual_seed(m)
    args, w_exact, scale = make_weights(op, 48, 80, gen)
    x = torch.randn(m, 80, generator=gen)
    if op == "f32":
        out = kernels.linear_f32(x, *args)
    elif op in ("bf16", "bf16-round"):
        out = kernels.linear_bf16(x, *args, exact=op == "bf16")
    else:
        out = kernels.linear_int8(x, *args)
    assert_close(out, call_reference(op, x, args), bound(x_for_bound(op, x), w_exact, scale))


@pytest.mark.parametrize("backend", [
    "aot_eager",  # traces through the fake impls (fullgraph), runs the real ops
    "inductor",  # with kernels.compile_options(): unset, Inductor miscompiles the fused add/relu (see its docstring)
])
@pytest.mark.parametrize("m", [3, 4])
def test_compiled_wrappers_equal_eager(backend, m):
    """torch.compile(fullgraph=True) traces through the wrappers (fake impls) and gives the eager result."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(m, 64, generator=gen)
    w = torch.randn(32, 64, generator=gen)
    wb = w.to(torch.bfloat16)
    q = torch.randint(-127, 128, (32, 64), generator=gen, dtype=torch.int8)
    scale = torch.rand(32, generator=gen)

    def f(x):
        return (kernels.linear_f32(x, w) + kernels.linear_bf16(x, wb) + kernels.linear_bf16(x, wb, exact=False)
                + kernels.linear_int8(x, q, scale)).relu()

    torch._dynamo.reset()
    options = kernels.compile_options() if backend == "inductor" else None
    compiled = torch.compile(f, fullgraph=True, backend=backend, options=options)
    assert torch.equal(compiled(x), f(x))


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    x = torch.randn(2, 16)
    w = torch.randn(8, 16)
    ops = torch.ops.lmforge
    errors = (RuntimeError, ValueError)
    with pytest.raises(errors, match="gemv_f32: x must be a 2-D"):
        ops.gemv_f32(x.double(), w)
    with pytest.raises(errors, match="gemv_f32: x must be a 2-D"):
        ops.gemv_f32(x[0], w)
    with pytest.raises(errors, match="gemv_f32: w must have K=16"):
        ops.gemv_f32(x, torch.randn(8, 17))
    with pytest.raises(errors, match="gemv_bf16: w must be a 2-D \\(N, K\\) bfloat16 tensor, got float32"):
        ops.gemv_bf16(x, w, True)
    with pytest.raises(errors, match="gemv_int8: scale must have N=8 float32 entries"):
        ops.gemv_int8(x, w.to(torch.int8), torch.ones(7))
    with pytest.raises(errors, match="gemv_int8: w must be a 2-D \\(N, K\\) int8 tensor"):
        ops.gemv_int8(x, w, torch.ones(8))
    with pytest.raises(errors, match="gemv_f32: w must have K=16"):
        kernels.linear_f32(x, torch.randn(8, 5))
    with pytest.raises(errors, match="gemv_int8: scale must have N=8"):
        kernels.linear_int8(torch.randn(100, 16), w.to(torch.int8), torch.ones(3))  # the torch route checks too
    with pytest.raises(ValueError, match="linear_f32: x must be a float32 tensor of shape"):
        kernels.linear_f32(torch.tensor(1.0), w)
    with pytest.raises(ValueError, match="set_isa: name must be one of"):
        kernels.set_isa("avx9000")
