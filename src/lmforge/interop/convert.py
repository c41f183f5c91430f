"""Converting a checkpoint folder between the Hugging Face format and lmforge's own, tokenizer included.

A GGUF file (llama.cpp's format) converts to either; its tokenizer, kept in its metadata, is written out.

The destination must be empty (or new): writing one format into a folder that holds the other would
leave `config.json` beside lmforge-named tensors, and transformers would load random weights. With
`overwrite`, the checkpoint and tokenizer files already there are deleted first; nothing else is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from lmforge.interop.gguf import load_gguf_tokenizer
from lmforge.interop.hf import CheckpointError, load_pretrained, resolve, save_pretrained
from lmforge.interop.native import CONFIG_NAME, load_model, save_model
from lmforge.models.model import Model
from lmforge.models.tasks import task_of

# What a checkpoint folder may hold besides its weights: the files of the tokenizer it was trained with.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja")
CHECKPOINT_FILES = ("config.json", CONFIG_NAME, "model.safetensors", "model.safetensors.index.json",
                    "pytorch_model.bin", "pytorch_model.bin.index.json", "generation_config.json")


def copy_tokenizer(source: Path, destination: Path) -> list[str]:
    """Copy the tokenizer files of checkpoint folder `source` into `destination` (a GGUF file's tokenizer is
    written from its metadata); their names."""
    if source.suffix == ".gguf":
        load_gguf_tokenizer(source).save(destination)
        return ["tokenizer.json", "tokenizer_config.json"]
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
            copied.append(name)
    return copied


def _checkpoint_files(folder: Path) -> list[Path]:
    shards = [*folder.glob("model-*-of-*.safetensors"), *folder.glob("pytorch_model-*.bin")]
    return [folder / n for n in (*CHECKPOINT_FILES, *TOKENIZER_FILES) if (folder / n).is_file()] + sorted(shards)


def check_destination(destination: Path, source: Path, overwrite: bool) -> None:
    """Refuse the source folder itself, and a non-empty folder unless `overwrite`."""
    if destination.exists() and not destination.is_dir():
        raise CheckpointError(f"{destination}: exists and is not a folder")
    if destination.exists() and source.exists() and os.path.samefile(destination, source):
        raise CheckpointError(f"{destination}: the destination is the source folder; choose another destination")
    if not destination.is_dir() or not any(destination.iterdir()):
        return
    if not overwrite:
        names = sorted(p.name for p in destination.iterdir())
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise CheckpointError(f"{destination}: not empty ({listed}); choose a new or empty destination, or pass "
                              "--overwrite true to replace the checkpoint there")


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike,
                       to: Literal["auto", "hf", "lmforge"] = "auto", task: str | None = None,
                       overwrite: bool = False) -> tuple[Path, str, Model, list[str]]:
    """Load `source` (HF folder, lmforge folder, GGUF file, or a named offline checkpoint), write it to `destination`.

    Returns (destination, format written, the model, tokenizer files carried over). `task` picks the
    head of a Hugging Face source; an lmforge source has its own, and another `task` is an error.
    """
    source_dir = resolve(source)
    destination = Path(destination)
    native = (source_dir / CONFIG_NAME).is_file()
    check_destination(destination, source_dir, overwrite)
    if native:
        model = load_model(source_dir)
        if task is not None and task != task_of(model):
            raise CheckpointError(f"{source_dir}: holds a {task_of(model)} model; --task {task} applies to "
                                  "Hugging Face sources only (leave it out)")
    else:
        model = load_pretrained(source_dir, task=task)
    if to == "auto":
        to = "hf" if native else "lmforge"
    if to not in ("hf", "lmforge"):
        raise CheckpointError(f"to={to!r} is not one of auto, hf, lmforge")
    if destination.is_dir():  # only with overwrite (checked above): no file of the old checkpoint survives
        for path in _checkpoint_files(destination):
            path.unlink()
    out = save_pretrained(model, destination) if to == "hf" else save_model(model, destination)
    return out, to, model, copy_tokenizer(source_dir, out)
