"""`lmforge quantize`: write a checkpoint's weights packed as int8, q8_0 or int4, as an lmforge folder.

Only typing is imported here; the model code is imported inside the function, so `lmforge --help` stays fast.
"""

from __future__ import annotations

from typing import Literal


def quantize(
    model: str,
    to: Literal["int8", "q8_0", "int4"] | None = None,
    out: str | None = None,
    group: int = 32,
    symmetric: bool = True,
    lm_head: bool = False,
    embedding: bool = False,
    embedding_scheme: Literal["int8", "q8_0"] | None = None,
    include: list[str] | None = None,
) -> None:
    """Quantize a model's Linear layers and save it; `lmforge chat OUT` (generate, serve) then loads it as it is.

    Args:
        model: A named model (smollm2-135m-instruct), a Hugging Face folder, an lmforge folder or a GGUF file.
        to: The scheme: int8 (a scale per row, f32 activations: the closest to float32), q8_0 (llama.cpp's
            Q8_0: a scale per 32 weights, int8 activations), int4 (4-bit groups of --group weights).
        out: The folder to write (lmforge.json, model.safetensors, the tokenizer); it must be new or empty.
        group: Weights per int4 scale: 32, 64 or 128 (it must divide every quantized layer's input width).
        symmetric: int4 only: a scale per group (Q4_0 style) when true, a scale and a minimum (Q4_1 style) when false.
        lm_head: Quantize the LM head too (a head tied to the embedding is untied, or shares the embedding's
            packed rows with --embedding true).
        embedding: Quantize the token embedding's rows (int8 or q8_0).
        embedding_scheme: The embedding's scheme when it differs from --to (int4 layers over an int8 embedding, whose
            rows a tied head shares with --lm_head true).
        include: Glob patterns over module names choosing the Linear layers ('["*.attn.*"]'); default: every
            Linear of the Transformer blocks.
    """
    from pathlib import Path

    from lmforge.compress.quantize import DEFAULT_INCLUDE, QuantConfig, QuantError, quantize_model
    from lmforge.interop.convert import check_destination, copy_tokenizer
    from lmforge.interop.hf import resolve
    from lmforge.interop.native import load_any, save_model

    if to is None or out is None:
        raise QuantError("--to (int8, q8_0 or int4) and --out (the folder to write) are required")
    config = QuantConfig(scheme=to, group_size=group, symmetric=symmetric, include=include or DEFAULT_INCLUDE,
                         lm_head=lm_head, embedding=embedding, embedding_scheme=embedding_scheme)
    config.validate()
    source, destination = resolve(model), Path(out)
    check_destination(destination, source, overwrite=False)
    lm = load_any(model)
    summary = quantize_model(lm, config)
    save_model(lm, destination)
    files = copy_tokenizer(source, destination)
    print(f"{model} -> {destination}: {summary}")
    print(f"tokenizer: {', '.join(files)}" if files else "tokenizer: none in the source folder, so none written")
