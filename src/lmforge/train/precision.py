"""Pick the compute dtype from what the hardware does natively (never bf16 blindly)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from lmforge.models.config import ConfigError


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """AVX-512-BF16 or AMX: without them PyTorch's CPU bf16 is 25-35x slower than fp32 for training."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs and CPUs that have it natively, else fp32; explicit values pass through.

    The CPU rule is measured (`bench/precision.py`, the whole training step, fp32 vs bf16 autocast):
    with AVX-512-BF16 / AMX, bf16 was 1.5-3.5x faster than fp32 on every model measured (Intel AMX, AMD
    Zen 4); without them it is 25-35x slower.
    """
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision={precision!r} is not one of auto, fp32, bf16, fp16")
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision=fp16 (with a grad scaler) needs a GPU; use fp32 or bf16 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def describe_precision(precision: str, device: torch.device) -> str:
    """One line saying which precision runs and why, for the start of a run."""
    resolved = resolve_precision(precision, device)
    if device.type == "cuda":
        why = "GPU"
    else:
        native = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
        why = f"CPU with {' and '.join(native)}" if native else "CPU without native bf16 (no avx512_bf16/amx_bf16)"
    note = ""
    if resolved == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        note = "; warning: bf16 is emulated on this CPU, 25-35x slower than fp32 for training"
    return f"{resolved} ({'auto' if precision == 'auto' else 'as asked'}: {why}{note})"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
