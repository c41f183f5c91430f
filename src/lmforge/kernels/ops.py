"""The Python side of the `torch.ops.lmforge.*` kernels: building on first use, the fallback, fake impls, wrappers.

The first call of a wrapper (or `build()`) compiles and loads the C++ ops (`build.py`). When that fails (no
compiler, no ninja, a compile error) one `KernelsWarning` says why, and the same schemas are registered from
Python, backed by the pure-PyTorch references: every caller keeps working, only slower. Either way each op
gets a fake (meta) implementation, so `torch.compile(fullgraph=True)` traces through the wrappers.

    LMFORGE_KERNELS=reference   never build; run the references (tests, or a machine without a compiler)
    LMFORGE_KERNELS=cpp         a failed build raises instead of falling back (CI)

The wrappers take x of any shape (..., K) float32 and return (..., N) float32. The kernels are tuned for
decoding (M = prod(x.shape[:-1]) <= 8 rows, bandwidth bound); for prefill-sized M, oneDNN/MKL's blocked
GEMMs are faster, so from `TORCH_FROM_M` rows on the wrappers run the reference (torch) arithmetic instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import torch

from lmforge.kernels import reference

# Imported now, not in build(): a first import there would rebind the package's `build` (the function below,
# re-exported by lmforge.kernels) to the module.
from lmforge.kernels.build import load_extension

ISA_NAMES = ("scalar", "avx2", "avx512")  # index = the level of csrc/common.h
TENSOR_OPS = {  # name -> schema; gemv_q8_0 / gemv_q4 are quant_gemv.cpp's
    "gemv_f32": "gemv_f32(Tensor x, Tensor w) -> Tensor",
    "gemv_bf16": "gemv_bf16(Tensor x, Tensor w, bool exact) -> Tensor",
    "gemv_int8": "gemv_int8(Tensor x, Tensor w, Tensor scale) -> Tensor",
    "gemv_q8_0": "gemv_q8_0(Tensor x, Tensor w, Tensor scale) -> Tensor",
    "gemv_q4": "gemv_q4(Tensor x, Tensor w, Tensor scale, Tensor? min, int group_size) -> Tensor",
}
CONTROL_OPS = {
    "set_isa": "set_isa(int level) -> ()",
    "get_isa": "get_isa() -> int",
    "uses_bf16": "uses_bf16() -> bool",
    "uses_vnni": "uses_vnni() -> bool",
}
# From this many rows of x on, the wrappers leave the product to torch (oneDNN/MKL's blocked GEMM): the
# kernels load each weight vector once per 8 rows of x, so beyond a few tiles they are compute bound and
# torch's GEMM wins. Measured on 576x1536, 2 threads (Xeon, AVX-512; bench/kernels.py --prefill), torch time
# / kernel time: f32 1.04 at M=8, 1.49 at 16, 0.96 at 32, 0.56 at 64; bf16 2.0 / 1.3 / 0.8 at M=8 / 32 / 64
# (torch widening w to f32 per call included); int8 2.0 / 1.5 / 0.83.
TORCH_FROM_M = {"f32": 32, "bf16": 64, "int8": 64}


class KernelsWarning(UserWarning):
    """The C++ kernels could not be built (or lack an op): the PyTorch reference runs instead."""


class _State:
    backend: str | None = None  # "cpp" | "reference", once built
    error: str | None = None  # why the C++ build failed
    library_path: str | None = None  # the loaded shared library (cpp backend)
    detected_level: int = -1  # the CPU's ISA level (cpp backend)
    requested: str = "auto"  # the last set_isa() name
    reference_ops: tuple[str, ...] = ()  # ops registered from Python
    library: torch.library.Library | None = None  # keeps the Python registrations alive


_state = _State()
_lock = threading.Lock()


# --------------------------------------------------------------------------------------------- checks


def _dtype(t: object) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) \
        else type(t).__name__


def _check_x(op: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"{op}: x must be a 2-D (M, K) float32 tensor, got {_dtype(x)}")
    if x.shape[1] < 1:
        raise ValueError(f"{op}: x must have K >= 1 columns, got shape {tuple(x.shape)}")


def _check_w(op: str, w: torch.Tensor, dtype: torch.dtype, k: int) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.dtype != dtype:
        raise ValueError(f"{op}: w must be a 2-D (N, K) {str(dtype).removeprefix('torch.')} tensor, got {_dtype(w)}")
    if w.shape[1] != k:
        raise ValueError(f"{op}: w must have K={k} columns like x, got shape {tuple(w.shape)}")
    if w.shape[0] < 1:
        raise ValueError(f"{op}: w must have N >= 1 rows, got shape {tuple(w.shape)}")


def _check_scale(op: str, scale: torch.Tensor, n: int) -> None:
    if not isinstance(scale, torch.Tensor) or scale.dim() != 1 or scale.shape[0] != n or scale.dtype != torch.float32:
        raise ValueError(f"{op}: scale must have N={n} float32 entries, got {_dtype(scale)}")


# --------------------------------------------------------------------------------------------- fallback


def _reference_gemv_f32(x, w):
    _check_x("gemv_f32", x)
    _check_w("gemv_f32", w, torch.float32, x.shape[1])
    return reference.reference_gemv_f32(x, w)


def _reference_gemv_bf16(x, w, exact):
    _check_x("gemv_bf16", x)
    _check_w("gemv_bf16", w, torch.bfloat16, x.shape[1])
    return reference.reference_gemv_bf16(x, w, exact)


def _reference_gemv_int8(x, w, scale):
    _check_x("gemv_int8", x)
    _check_w("gemv_int8", w, torch.int8, x.shape[1])
    _check_scale("gemv_int8", scale, w.shape[0])
    return reference.reference_gemv_int8(x, w, scale)


def _formats_reference(name: str) -> Callable:
    try:  # lmforge.kernels.formats holds the block formats' references (imported late: it is another file's)
        from lmforge.kernels import formats
    except ImportError as err:
        raise NotImplementedError(f"{name}: no C++ kernel and no reference (lmforge.kernels.formats: {err})") from err
    return getattr(formats, f"reference_{name}")


def _reference_gemv_q8_0(x, w, scale):
    return _formats_reference("gemv_q8_0")(x, w, scale)


def _reference_gemv_q4(x, w, scale, min, group_size):
    return _formats_reference("gemv_q4")(x, w, scale, min, group_size)


def _reference_set_isa(level):
    if not -1 <= level <= len(ISA_NAMES) - 1:
        raise ValueError(f"set_isa: level must be -1 (auto), 0 (scalar), 1 (avx2) or 2 (avx512), got {level}")


_REFERENCE_IMPLS = {
    "gemv_f32": _reference_gemv_f32,
    "gemv_bf16": _reference_gemv_bf16,
    "gemv_int8": _reference_gemv_int8,
    "gemv_q8_0": _reference_gemv_q8_0,
    "gemv_q4": _reference_gemv_q4,
    "set_isa": _reference_set_isa,
    "get_isa": lambda: -1,
    "uses_bf16": lambda: False,
    "uses_vnni": lambda: False,
}


def _register_reference(names: list[str]) -> None:
    """Define the ops `names` (missing from C++) in the lmforge namespace, backed by the references."""
    lib = _state.library or torch.library.Library("lmforge", "FRAGMENT")
    for name in names:
        schema = TENSOR_OPS.get(name) or CONTROL_OPS[name]
        lib.define(schema)
        lib.impl(name, _REFERENCE_IMPLS[name], "CPU" if name in TENSOR_OPS else "CompositeImplicitAutograd")
    _state.library = lib
    _state.reference_ops = _state.reference_ops + tuple(names)


def _fake_gemv(x, w, *args):
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)


def _register_fakes() -> None:
    for name in TENSOR_OPS:
        torch.library.register_fake(f"lmforge::{name}", _fake_gemv)


def _short(err: BaseException, limit: int = 600) -> str:
    """The gist of a build error: its head and the compiler's error lines, not the command lines."""
    text = str(err)
    head = text.split(":", 1)[0] if text.startswith("Error building extension") else text.splitlines()[0]
    errors = [ln.strip()[:200] for ln in text.splitlines()[1:]
              if any(s in ln.lower() for s in ("error", "not found", "no such")) and " -c " not in ln
              and not ln.lstrip().startswith(("FAILED", "ninja:"))]
    short = f"{type(err).__name__}: " + " | ".join([head[:200], *errors[:3]])
    return short if len(short) <= limit else short[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------- build


def build() -> str:
    """Compile and load the C++ kernels once per process (or fall back); returns "cpp" or "reference"."""
    if _state.backend is not None:
        return _state.backend
    with _lock:
        if _state.backend is not None:
            return _state.backend
        mode = os.environ.get("LMFORGE_KERNELS", "auto").strip().lower() or "auto"
        if mode not in ("auto", "cpp", "reference"):
            raise ValueError(f"LMFORGE_KERNELS must be 'auto', 'cpp' or 'reference', got {mode!r}")
        backend = "reference"
        if mode != "reference":
            try:
                _state.library_path = str(load_extension())
                backend = "cpp"
            except Exception as err:  # noqa: BLE001 (any build failure means: fall back)
                if mode == "cpp":
                    raise RuntimeError(f"LMFORGE_KERNELS=cpp, but the C++ kernels did not build: {err}") from err
                _state.error = str(err)
                warnings.warn(f"lmforge.kernels: the C++ kernels could not be built ({_short(err)}); using the "
                              "slower PyTorch reference implementations instead (set LMFORGE_KERNELS=reference "
                              "to skip the build; the full error: lmforge.kernels.build_error())", KernelsWarning, stacklevel=3)
        if backend == "cpp":
            missing = [n for n in {**TENSOR_OPS, **CONTROL_OPS} if not hasattr(torch.ops.lmforge, n)]
            if missing:
                warnings.warn(f"lmforge.kernels: the C++ library has no {', '.join(missing)}; those ops run "
                              "the PyTorch reference", KernelsWarning, stacklevel=3)
                _register_reference(missing)
            torch.ops.lmforge.set_isa(-1)
            _state.detected_level = int(torch.ops.lmforge.get_isa())
        else:
            _register_reference(list({**TENSOR_OPS, **CONTROL_OPS}))
        _register_fakes()
        _state.backend = backend
        return backend


# What torch.compiler.assume_constant_result(build) does, without importing torch._dynamo (seconds) here:
# under torch.compile, Dynamo calls build() while tracing and keeps its result, so a wrapper compiled before
# the first eager call still traces (a traced build would be a graph break).
build._dynamo_marked_constant = True  # type: ignore[attr-defined]


def compile_options() -> dict[str, object]:
    """Inductor options for `torch.compile` of code that calls these ops: the CPU vector width, stated.

    With `cpp.simdlen` left unset, torch 2.13's Inductor miscompiles pointwise code over these ops' outputs
    (it tiles a fused loop 8 floats wide, then stores whole 16-float AVX-512 vectors: wrong results and
    heap corruption); naming the width it picks anyway (`pick_vec_isa`) makes it generate correct loops.
    """
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    vec = pick_vec_isa()
    return {"cpp.simdlen": vec.bit_width() if vec else 1}


def backend() -> str:
    """"cpp" when the C++ kernels run, "reference" when the PyTorch fallback does (builds first if needed)."""
    return build()


def build_error() -> str | None:
    """Why the C++ build failed in this process (None if it did not fail, or was not tried)."""
    return _state.error


def isa() -> str:
    """The path the kernels run now: "avx512", "avx2", "scalar", or "reference" (the PyTorch fallback)."""
    if build() == "reference":
        return "reference"
    return ISA_NAMES[int(torch.ops.lmforge.get_isa())]


def available_isas() -> list[str]:
    """The ISA levels this CPU can run, lowest first (["reference"] for the fallback)."""
    if build() == "reference":
        return ["reference"]
    return list(ISA_NAMES[: _state.detected_level + 1])


def set_isa(name: str) -> None:
    """Cap the kernels' ISA at "scalar", "avx2" or "avx512", or "auto" (the best the CPU has); capped by the CPU."""
    names = ("auto", *ISA_NAMES)
    if name not in names:
        raise ValueError(f"set_isa: name must be one of {', '.join(names)}, got {name!r}")
    build()
    torch.ops.lmforge.set_isa(-1 if name == "auto" else ISA_NAMES.index(name))
    _state.requested = name


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[None]:
    """Run the block at ISA `name` (see `set_isa`), then restore the previous setting."""
    previous = _state.requested
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def uses_bf16() -> bool:
    """True when `linear_bf16(..., exact=False)` runs on AVX512-BF16 dot products (vdpbf16ps) right now."""
    return build() == "cpp" and bool(torch.ops.lmforge.uses_bf16())


def uses_vnni() -> bool:
    """True when the int8 block kernels may use AVX512-VNNI right now."""
    return build() == "cpp" and bool(torch.ops.lmforge.uses_vnni())


# --------------------------------------------------------------------------------------------- wrappers


def _rows(op: str, x: torch.Tensor) -> torch.Tensor:
    """x (..., K) -> (M, K) contiguous."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f"{op}: x must be a float32 tensor of shape (..., K), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    return x.reshape(-1, x.shape[-1]).contiguous()


def _float_linear(fmt: str, reference: Callable, x: torch.Tensor, w: torch.Tensor, *args) -> torch.Tensor:
    """The float wrappers' one body: `gemv_<fmt>` below `TORCH_FROM_M[fmt]` rows, torch's arithmetic from there."""
    build()  # before the op is looked up: it exists once built (or registered by the fallback)
    x2 = _rows(f"linear_{fmt}", x)
    if x2.shape[0] >= TORCH_FROM_M[fmt]:
        out = reference(x2, w, *args)
    else:
        out = getattr(torch.ops.lmforge, f"gemv_{fmt}")(x2, w, *args)
    return out.view(*x.shape[:-1], w.shape[0])


def linear_f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (..., K) f32 @ w (N, K) f32 ^T -> (..., N) f32."""
    return _float_linear("f32", _reference_gemv_f32, x, w)


def linear_bf16(x: torch.Tensor, w: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """x (..., K) f32 @ w (N, K) bf16 ^T -> (..., N) f32; exact=False rounds x to bf16 first (vdpbf16ps)."""
    return _float_linear("bf16", _reference_gemv_bf16, x, w, exact)


def linear_int8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * (x (..., K) f32 @ w (N, K) int8 ^T) -> (..., N) f32 (per-output-row scale (N,))."""
    return _float_linear("int8", _reference_gemv_int8, x, w, scale)


def linear_q8_0(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., K) f32 @ Q8_0 weights (w (N, K) int8, scale (N, K/32) f16) -> (..., N) f32."""
    build()
    x2 = _rows("linear_q8_0", x)
    return torch.ops.lmforge.gemv_q8_0(x2, w, scale).view(*x.shape[:-1], w.shape[0])


def linear_q4(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, min: torch.Tensor | None = None,
              group_size: int = 32) -> torch.Tensor:
    """x (..., K) f32 @ 4-bit weights (w (N, K/2) uint8, scale/min (N, K/group_size) f16) -> (..., N) f32."""
    build()
    x2 = _rows("linear_q4", x)
    return torch.ops.lmforge.gemv_q4(x2, w, scale, min, group_size).view(*x.shape[:-1], w.shape[0])
