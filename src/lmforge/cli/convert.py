"""`lmforge convert`: between Hugging Face checkpoint folders and lmforge's own format."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def convert(source: str, destination: str, to: Literal["auto", "hf", "lmforge"] = "auto",
            task: str | None = None) -> None:
    """Convert a checkpoint folder.

    Args:
        source: a Hugging Face folder (config.json), an lmforge folder (lmforge.json), or a named
            offline checkpoint such as all-minilm-l6-v2.
        destination: the folder to write.
        to: output format; `auto` writes the other format than the source's.
        task: for Hugging Face sources, the head to load (e.g. masked-lm); default from the checkpoint.
    """
    from lmforge.interop import load_model, load_pretrained, save_model, save_pretrained
    from lmforge.interop.native import CONFIG_NAME

    native = (Path(source) / CONFIG_NAME).is_file()
    model = load_model(source) if native else load_pretrained(source, task=task)
    if to == "auto":
        to = "hf" if native else "lmforge"
    out = save_pretrained(model, destination) if to == "hf" else save_model(model, destination)
    print(f"{source} -> {out} ({to} format, {model.num_parameters():,} parameters)")
