"""Compression: weight-only quantization (packed modules over lmforge's kernels), pruning (magnitude, n:m,
structured heads and FFN neurons) and knowledge distillation.

Names are imported on first use (PEP 562), so `import lmforge.compress` (and the command line, which reads
`lmforge.compress.config`) stays torch-free.
"""

from __future__ import annotations

import importlib

from lmforge.compress.config import DistillConfig, DistillError, PruneConfig, PruneError

_NAMES = {
    "QuantConfig": "quantize", "QuantEmbedding": "quantize", "QuantError": "quantize", "QuantLinear": "quantize",
    "QuantSummary": "quantize", "quantize_model": "quantize",
    "MaskedTraining": "prune", "prune_model": "prune", "magnitude_masks": "prune", "nm_masks": "prune",
    "sparsity_of": "prune",
    "structured_prune": "structured", "prune_heads": "structured", "prune_ffn": "structured",
}
_SUBMODULES = ("distill", "job", "prune", "quantize", "structured")


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"lmforge.compress.{_NAMES[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"lmforge.compress.{name}")
    raise AttributeError(f"module 'lmforge.compress' has no attribute {name!r}")


__all__ = ["DistillConfig", "DistillError", "PruneConfig", "PruneError", *_NAMES, *_SUBMODULES]
