"""`lmforge convert`: between Hugging Face checkpoint folders and lmforge's own format (also from GGUF files),
and from either to one GGUF file for llama.cpp (`--to gguf`)."""

from __future__ import annotations

from typing import Literal

Task = Literal["encoder", "causal-lm", "seq2seq-lm", "masked-lm", "sequence-classification",
               "token-classification", "question-answering"]
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


def convert(source: str, destination: str, to: Literal["auto", "hf", "lmforge", "gguf"] = "auto",
            task: Task | None = None, overwrite: bool = False, gguf_type: GGUFType = "f16",
            tokenizer: str | None = None) -> None:
    """Convert a checkpoint folder; the tokenizer files beside the weights come along.

    Args:
        source: a Hugging Face folder (config.json), an lmforge folder (lmforge.json), a GGUF file, or a
            named offline checkpoint such as all-minilm-l6-v2 or smollm2-135m-instruct.
        destination: the folder to write; it must be new or empty. With `--to gguf`, the `.gguf` file to write.
        to: output format; `auto` writes the other format than the source's; `gguf` writes one llama.cpp file
            (LLaMA-family causal LMs only), tokenizer and chat template included.
        task: for Hugging Face sources, the head to load (e.g. masked-lm); default from the checkpoint.
        overwrite: replace the checkpoint (and tokenizer) files a non-empty destination holds.
        gguf_type: with `--to gguf`, the type of the 2-D weights (norms stay f32). f16 is the default, as
            llama.cpp's convert_hf_to_gguf.py gives for float32 weights; q8_0, q4_0 and q4_1 quantize every
            weight matrix (token embedding and output included).
        tokenizer: with `--to gguf`, the tokenizer folder (or file) to embed; default: the source's own.
    """
    from lmforge.interop.convert import convert_checkpoint

    out, fmt, model, tokenizer_files = convert_checkpoint(source, destination, to, task, overwrite, gguf_type,
                                                          tokenizer)
    if fmt == "gguf":
        print(f"{source} -> {out} (GGUF {gguf_type}, {model.num_parameters():,} parameters, "
              f"{out.stat().st_size / 2**20:.1f} MiB)")
        print(f"tokenizer: from {tokenizer_files[0]}, in the file's metadata")
        return
    print(f"{source} -> {out} ({fmt} format, {model.num_parameters():,} parameters)")
    print(f"tokenizer: {', '.join(tokenizer_files)}" if tokenizer_files
          else "tokenizer: none in the source folder, so none written")
