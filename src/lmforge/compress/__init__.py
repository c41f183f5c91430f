"""Compression: weight-only quantization (packed modules over lmforge's kernels, quantized checkpoints)."""

from lmforge.compress.quantize import (
    QuantConfig,
    QuantEmbedding,
    QuantError,
    QuantLinear,
    QuantSummary,
    quantize_model,
)

__all__ = ["QuantConfig", "QuantEmbedding", "QuantError", "QuantLinear", "QuantSummary", "quantize_model"]
