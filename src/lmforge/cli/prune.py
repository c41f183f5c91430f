"""`lmforge prune`: prune a checkpoint (magnitude, 2:4 or structured heads and FFN neurons) into a new folder.

Only typing is imported here; the job (`lmforge.compress.job`) is imported inside the function.
"""

from __future__ import annotations

from typing import Literal


def prune(
    model: str,
    out: str | None = None,
    method: Literal["magnitude", "2:4", "structured"] = "magnitude",
    sparsity: float = 0.5,
    scope: Literal["global", "layer"] = "layer",
    include: list[str] | None = None,
    heads: float = 0.0,
    ffn: float = 0.0,
    importance: Literal["l1", "taylor"] = "l1",
    data: str | None = None,
    batches: int = 8,
    batch_size: int = 8,
    max_length: int = 256,
    multiple_of: int = 8,
    overwrite: bool = False,
) -> None:
    """Prune a model and save it in lmforge's format (`lmforge evaluate OUT`, `lmforge finetune --model OUT` read it).

    Args:
        model: A named model (smollm2-135m-instruct, all-minilm-l6-v2), a Hugging Face or lmforge folder (a fine-tuning
            run's model/), or a GGUF file.
        out: The folder to write (lmforge.json, model.safetensors, the tokenizer, pruning.json); new or empty.
        method: magnitude (zero the smallest weights), 2:4 (2 of every 4 consecutive input weights; the layout of
            sparse tensor cores), structured (remove attention heads and FFN neurons: the model really shrinks).
        sparsity: magnitude: the fraction of the selected weights set to zero, in [0, 1).
        scope: magnitude: one threshold over all selected layers (global) or the same fraction in each (layer).
        include: Glob patterns over module names choosing the Linear layers (magnitude, 2:4); default: every
            Linear of the Transformer blocks (not the embeddings, not the head).
        heads: structured: the fraction of attention heads to remove (key/value groups for grouped-query models).
        ffn: structured: the fraction of FFN neurons to remove.
        importance: structured: l1 (weight norms, no data) or taylor (first-order Taylor |w * dL/dw|, needs --data).
        data: Calibration data for taylor: a text file or JSONL with "text" (causal LM), labelled rows with text and
            label (sequence classifier).
        batches: Calibration batches.
        batch_size: Rows per calibration batch.
        max_length: Tokens per calibration row.
        multiple_of: structured: each layer keeps a multiple of this many FFN neurons (32 keeps int4 groups whole).
        overwrite: Replace a checkpoint already in --out.
    """
    from lmforge.compress.job import run_prune
    from lmforge.compress.structured import PruneError

    if out is None:
        raise PruneError("--out (the folder to write) is required")
    run_prune(model, out, method=method, sparsity=sparsity, scope=scope, include=include, heads=heads, ffn=ffn,
              importance=importance, data=data, batches=batches, batch_size=batch_size, max_length=max_length,
              multiple_of=multiple_of, overwrite=overwrite)
