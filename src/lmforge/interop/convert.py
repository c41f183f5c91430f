"""Converting a checkpoint folder between the Hugging Face format and lmforge's own, tokenizer included.

A GGUF file (llama.cpp's format) converts to either; its tokenizer, kept in its metadata, is written out.
Any source holding a LLaMA-family causal LM also converts to a GGUF file (`to="gguf"`, see
`lmforge.interop.gguf_export`), its tokenizer and chat template written into the file's metadata.

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
                       to: Literal["auto", "hf", "lmforge", "gguf"] = "auto", task: str | None = None,
                       overwrite: bool = False, gguf_type: str = "f16",
                       tokenizer: str | os.PathLike | None = None) -> tuple[Path, str, Model, list[str]]:
    """Load `source` (HF folder, lmforge folder, GGUF file, or a named offline checkpoint), write it to `destination`.

    Returns (destination, format written, the model, tokenizer files carried over; for GGUF, the
    tokenizer's source). `task` picks the head of a Hugging Face source; an lmforge source has its own,
    and another `task` is an error. `gguf_type` and `tokenizer` (default: the source's) apply to GGUF output.
    """
    source_dir = resolve(source)
    destination = Path(destination)
    native = (source_dir / CONFIG_NAME).is_file()
    if to == "gguf":
        return _convert_to_gguf(source_dir, destination, native, task, overwrite, gguf_type, tokenizer)
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
        raise CheckpointError(f"to={to!r} is not one of auto, hf, lmforge, gguf")
    if destination.is_dir():  # only with overwrite (checked above): no file of the old checkpoint survives
        for path in _checkpoint_files(destination):
            path.unlink()
    out = save_pretrained(model, destination) if to == "hf" else save_model(model, destination)
    return out, to, model, copy_tokenizer(source_dir, out)


def _convert_to_gguf(source: Path, destination: Path, native: bool, task: str | None, overwrite: bool,
                     gguf_type: str, tokenizer: str | os.PathLike | None) -> tuple[Path, str, Model, list[str]]:
    """`convert_checkpoint` to one GGUF file: the model with the tokenizer beside it (or the one named)."""
    from lmforge.interop.gguf import open_gguf
    from lmforge.interop.gguf_export import GGUF_TYPES, save_gguf
    from lmforge.tokenizers import Tokenizer, TokenizerError

    if gguf_type not in GGUF_TYPES:
        raise CheckpointError(f"gguf_type={gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    if destination.suffix != ".gguf":
        raise CheckpointError(f"{destination}: a GGUF destination is one file; name it *.gguf")
    if destination.is_dir():
        raise CheckpointError(f"{destination}: is a folder; a GGUF destination is one file")
    if destination.exists() and source.exists() and os.path.samefile(destination, source):
        raise CheckpointError(f"{destination}: the destination is the source file; choose another destination")
    if destination.exists() and not overwrite:
        raise CheckpointError(f"{destination}: exists; choose a new destination, or pass --overwrite true")
    if task not in (None, "causal-lm"):
        raise CheckpointError(f"--task {task}: a GGUF file holds a causal-lm model only")
    model = load_model(source) if native else load_pretrained(source, task=task)
    where = Path(tokenizer) if tokenizer is not None else source
    pre = None
    if where.suffix == ".gguf":  # keep the source's own pre-tokenizer name (starcoder and smollm split alike)
        pre = open_gguf(where).metadata.get("tokenizer.ggml.pre")
    elif tokenizer is None and not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{source}: no tokenizer beside the model, and a GGUF file needs one; pass "
                              "--tokenizer FOLDER (the one the data was prepared with)")
    try:
        tok = Tokenizer.from_pretrained(where)
    except (TokenizerError, FileNotFoundError) as err:
        raise CheckpointError(f"{where}: cannot read the tokenizer ({err})") from None
    name = open_gguf(source).metadata.get("general.name") if source.suffix == ".gguf" else None
    try:
        out = save_gguf(model, tok, destination, gguf_type, name=name, pre=pre)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    return out, "gguf", model, [str(where)]
