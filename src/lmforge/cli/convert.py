"""`lmforge convert`: between Hugging Face checkpoint folders and lmforge's own format (also from GGUF files)."""

from __future__ import annotations

from typing import Literal

Task = Literal["encoder", "causal-lm", "seq2seq-lm", "masked-lm", "sequence-classification",
               "token-classification", "question-answering"]


def convert(source: str, destination: str, to: Literal["auto", "hf", "lmforge"] = "auto",
            task: Task | None = None, overwrite: bool = False) -> None:
    """Convert a checkpoint folder; the tokenizer files beside the weights come along.

    Args:
        source: a Hugging Face folder (config.json), an lmforge folder (lmforge.json), a GGUF file, or a
            named offline checkpoint such as all-minilm-l6-v2 or smollm2-135m-instruct.
        destination: the folder to write; it must be new or empty.
        to: output format; `auto` writes the other format than the source's.
        task: for Hugging Face sources, the head to load (e.g. masked-lm); default from the checkpoint.
        overwrite: replace the checkpoint (and tokenizer) files a non-empty destination holds.
    """
    from lmforge.interop.convert import convert_checkpoint

    out, fmt, model, tokenizer_files = convert_checkpoint(source, destination, to, task, overwrite)
    print(f"{source} -> {out} ({fmt} format, {model.num_parameters():,} parameters)")
    print(f"tokenizer: {', '.join(tokenizer_files)}" if tokenizer_files
          else "tokenizer: none in the source folder, so none written")
