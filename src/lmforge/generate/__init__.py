"""Generation: the engine's named steps (prefill, decode_step, sampling) outside the model, streaming,
continuous batching, beam search and chat templates."""

from lmforge.generate.engine import (
    Engine,
    RequestOutput,
    TokenEvent,
    compile_decode,
    decode_step,
    generate,
    prefill,
    stream,
)
from lmforge.generate.sampling import BatchSampler, SampleOutput, SamplingParams, sample_next, sampling_probs

__all__ = [
    "BatchSampler", "Engine", "RequestOutput", "SampleOutput", "SamplingParams", "TokenEvent", "compile_decode",
    "decode_step",
    "generate", "prefill", "sample_next", "sampling_probs", "stream",
]
