"""Resource cost of a model: parameters, size on disk, latency percentiles, throughput and peak memory.

Latency is wall-clock time per call (`time.perf_counter`) after warm-up calls; percentiles are numpy's
default `linear` method (the value at rank p/100 * (n - 1) of the sorted times, interpolated between the
two nearest), so p50 of an even count is the mean of the middle two.
"""

from __future__ import annotations

import inspect
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.evaluate.errors import EvaluationError

__all__ = ["count_parameters", "latency", "measure", "peak_memory_mib", "size_on_disk", "throughput"]

PERCENTILES = (50, 90, 99)


def count_parameters(model) -> dict[str, int]:
    """{"parameters", "trainable", "embedding", "weight_bytes"}: each shared (tied) tensor counted once.

    `embedding` counts the input embedding tables, as transformers' `num_parameters(exclude_embeddings=True)`
    leaves them out: every `nn.Embedding` (token, token-type, a learned prefix's) and lmforge's learned
    position table; a tied output projection is the token table itself, so it is not counted twice. A
    quantized layer (`lmforge.compress`: packed buffers, no parameters) counts the weights it stands for, as
    frozen ones. `weight_bytes` is the size of the state dict in memory (packed tensors as stored, shared ones
    once).
    """
    from torch import nn

    from lmforge.compress.quantize import QuantEmbedding, QuantLinear, state_bytes
    from lmforge.models.positions import LearnedPositions

    embedding_ids = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, LearnedPositions))
                     for p in m.parameters(recurse=False)}
    counts = {"parameters": 0, "trainable": 0, "embedding": 0}
    for p in model.parameters():  # each Parameter object once, however many modules hold it
        counts["parameters"] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
        counts["embedding"] += p.numel() if id(p) in embedding_ids else 0
    packed_seen = set()
    for m in model.modules():
        if not isinstance(m, (QuantLinear, QuantEmbedding)):
            continue
        first = id(next(iter(m.packed().values())))
        if first not in packed_seen:  # a quantized head tied to the quantized table holds the same buffers
            packed_seen.add(first)
            if isinstance(m, QuantLinear):
                counts["parameters"] += m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0)
            else:
                counts["parameters"] += m.num_embeddings * m.embedding_dim
                counts["embedding"] += m.num_embeddings * m.embedding_dim
    counts["weight_bytes"] = state_bytes(model)
    return counts


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder (recursively; links are not followed).

    A named offline checkpoint (`lmforge.assets.NAMED_CHECKPOINTS`, e.g. "all-minilm-l6-v2") stands for its
    folder, or its `.gguf` file.
    """
    from lmforge.assets import named_folder

    resolved = named_folder(path)
    target = Path(resolved if resolved is not None else path)
    if target.is_file():
        return target.stat().st_size
    if not target.is_dir():
        raise EvaluationError(f"size_on_disk: {target} is neither a file nor a folder")
    total = 0
    for root, _dirs, files in os.walk(target):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def latency(run_one: Callable[[int], Any], n: int, warmup: int = 2) -> dict[str, float]:
    """Time `n` calls `run_one(i)`, i = 0..n-1, after `warmup` untimed calls (also given 0, 1, ...).

    Returns {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "total_s", "n"}: percentiles of the per-call times
    (numpy's linear interpolation, see the module docstring) and their sum.
    """
    if not isinstance(n, int) or n < 1:
        raise EvaluationError(f"latency: n={n!r} must be a positive integer")
    if not isinstance(warmup, int) or warmup < 0:
        raise EvaluationError(f"latency: warmup={warmup!r} must be an integer >= 0")
    for i in range(warmup):
        run_one(i)
    seconds = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        run_one(i)
        seconds[i] = time.perf_counter() - start
    ms = seconds * 1000.0
    out = {f"p{q}_ms": float(v) for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES, method="linear"))}
    out.update(mean_ms=float(ms.mean()), total_s=float(seconds.sum()), n=n)
    return out


def throughput(run_one: Callable[[int], Any], n: int, items_per_call: int = 1, warmup: int = 2) -> float:
    """Items per second over `n` timed calls of `run_one(i)` that each process `items_per_call` items."""
    timing = latency(run_one, n, warmup)
    return items_per_call * n / timing["total_s"] if timing["total_s"] > 0 else float("inf")


def peak_memory_mib() -> float:
    """This process's peak resident memory in MiB: VmHWM (its own address space's high-water mark; `ru_maxrss`
    would also count a parent's peak from before the fork), else ru_maxrss.

    A high-water mark since the process started or since `reset_peak_memory()`: it never goes down by itself."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_memory() -> bool:
    """Reset VmHWM to the current resident memory (Linux: "5" written to /proc/self/clear_refs), so the next
    `peak_memory_mib()` is the peak since now; False where that cannot be done (the peak then stays the process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(model, tokenizer, texts: Sequence[str], batch_size: int = 1, n: int = 32, warmup: int | None = None,
            max_len: int = 512) -> dict[str, Any]:
    """Parameters, latency, throughput and peak memory of `model`'s forward pass on `texts`.

    The texts are encoded once (the tokenizer's template, cut to `max_len`), batched `batch_size` at a time
    (padded to the longest) and cycled through for `n` timed forwards after `warmup` untimed ones (default:
    each distinct batch once, at most `n` and at least 2: a first call per shape is slow). Latency percentiles
    (`p50_ms`, `p90_ms`, `p99_ms`, `mean_ms`) are per forward of one batch: per example at the default
    `batch_size=1`. `examples_per_s` and `tokens_per_s` (real, unpadded tokens) are at `batch_size`; a
    seq2seq model's forward is its encoder plus one decoder step. `peak_rss_mib` is the process's peak
    resident memory (`peak_memory_mib`), and on CUDA `peak_cuda_mib` the peak allocated during the timed calls.
    """
    import torch

    if not texts or not all(isinstance(t, str) for t in texts):
        raise EvaluationError("measure: texts must be a non-empty list of strings")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"measure: batch_size={batch_size!r} must be a positive integer")
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        max_len = min(max_len, cfg.max_seq_len)
    device = next(model.parameters()).device
    if batch_size > 1 and tokenizer.pad_id is None:  # a decoder's tokenizer: pad with its end-of-text token
        eos = tokenizer.special_tokens.get("eos")
        if eos is None:
            raise EvaluationError(f"measure: batch_size={batch_size} needs padding, and the tokenizer has neither "
                                  "a pad nor an eos token")
        tokenizer = tokenizer.copy()
        tokenizer.set_special_token("pad", eos)
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        chunk += [texts[i % len(texts)] for i in range(batch_size - len(chunk))]  # a full last batch
        batch = tokenizer(chunk, padding=batch_size > 1, truncation=True, max_length=max_len)
        batches.append({k: v.to(device) for k, v in batch.items()})
    forward = _forward(model)
    if warmup is None:
        warmup = max(2, min(len(batches), n))
    was_training = model.training
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def run_one(i: int) -> None:
        forward(batches[i % len(batches)])
        if cuda:
            torch.cuda.synchronize(device)

    try:
        with torch.inference_mode():
            timing = latency(run_one, n, warmup)
    finally:
        model.train(was_training)
    tokens = sum(int(batches[i % len(batches)]["attention_mask"].sum()) for i in range(n))
    seconds = timing.pop("total_s")
    out: dict[str, Any] = {**count_parameters(model), "batch_size": batch_size, "calls": timing.pop("n"), **timing,
                           "examples_per_s": batch_size * n / seconds, "tokens_per_s": tokens / seconds,
                           "peak_rss_mib": peak_memory_mib(), "device": str(device),
                           "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if cuda:
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _forward(model) -> Callable[[dict], Any]:
    """A function batch -> outputs that passes the model the inputs its forward takes."""
    accepted = inspect.signature(model.forward).parameters
    decoder_start = getattr(getattr(model, "cfg", None), "decoder_start_token_id", None)

    def forward(batch: dict) -> Any:
        kwargs = {k: v for k, v in batch.items() if k in accepted and k != "input_ids"}
        if "decoder_input_ids" in accepted:  # one decoder step from the start token
            start = decoder_start if decoder_start is not None else 0
            kwargs["decoder_input_ids"] = batch["input_ids"].new_full((batch["input_ids"].shape[0], 1), start)
        return model(batch["input_ids"], **kwargs)

    return forward
