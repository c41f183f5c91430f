"""lmforge's own CPU kernels: matrix x small-matrix products for decoding (fp32, bf16, int8, Q8_0, Q4).

Decoding one token reads every weight once, so it is bound by memory bandwidth, and the weight format
sets the speed. The kernels are C++ (AVX2 and AVX-512 paths, chosen at run time), built on first use
into a cache folder, and registered as `torch.ops.lmforge.*` custom ops so `torch.compile` sees them.
Without a compiler the same ops run a pure-PyTorch reference (slower; said once).
"""

from __future__ import annotations

from lmforge.kernels.ops import (
    KernelsWarning,
    available_isas,
    backend,
    build,
    build_error,
    compile_options,
    forced_isa,
    isa,
    linear_bf16,
    linear_f32,
    linear_int8,
    linear_q4,
    linear_q8_0,
    set_isa,
    uses_bf16,
    uses_vnni,
)

__all__ = [
    "KernelsWarning",
    "available_isas",
    "backend",
    "build",
    "build_error",
    "compile_options",
    "forced_isa",
    "isa",
    "linear_bf16",
    "linear_f32",
    "linear_int8",
    "linear_q4",
    "linear_q8_0",
    "set_isa",
    "uses_bf16",
    "uses_vnni",
]
