"""Decoding with a KV cache: a few named functions outside the model that see token ids only."""

from lmforge.generate.decode import generate, sample_next, sampling_probs

__all__ = ["generate", "sample_next", "sampling_probs"]
