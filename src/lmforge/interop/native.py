"""lmforge's own checkpoint folder: `lmforge.json` (config + task) and `model.safetensors` in our names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.fileio import atomic_write
from lmforge.interop.hf import CheckpointError, _load_safetensors, resolve
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import MaskedLM, Model
from lmforge.models.tasks import TASKS, task_of

CONFIG_NAME = "lmforge.json"
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 over a checkpoint folder's weight files (names and bytes): what a delta checkpoint's base must be."""
    folder = resolve(path)
    if folder.is_file():  # a GGUF checkpoint is one file
        files = [folder]
    else:
        files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern)})
    if not files:
        raise CheckpointError(f"{folder}: no weight files ({', '.join(WEIGHT_FILES)})")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_model(model: Model, path: str | os.PathLike, state_dict: dict | None = None, *,
               trainable_only: bool = False, base: dict | None = None) -> Path:
    """Write the model in lmforge's format (atomically; a tied output projection is stored once, as the embedding).

    `state_dict` replaces `model.state_dict()` (e.g. a full one gathered from FSDP shards). Every tensor
    of it is written, under its own name, whatever wraps the plain layers. With `trainable_only`, only
    parameters with `requires_grad` are, and `base` ({"path": ..., "sha256": `weights_digest(path)`, and the
    ModelConfig "overrides" it was loaded with}) names the checkpoint the frozen rest comes from;
    `load_model` reads that base first.
    """
    if trainable_only and not base:
        raise ConfigError("a checkpoint of the trainable parameters only needs the base it applies to "
                          "(base={'path': ..., 'sha256': ...})")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"nsp": True} if isinstance(model, MaskedLM) and model.nsp_head is not None else {}
    meta = {"format": "lmforge", "version": 1, "task": task_of(model), "task_kwargs": kwargs,
            "config": model.cfg.to_dict(), "tensors": "trainable" if trainable_only else "all"}
    if base:  # the overrides it was loaded with rebuild the same model from it (e.g. without a pooler)
        meta["base"] = {"path": str(base["path"]), "sha256": base["sha256"], "overrides": base.get("overrides") or {}}
    state = model.state_dict() if state_dict is None else state_dict
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else set(state)
    tensors = {name: t.contiguous() for name, t in state.items() if name in keep and not model.is_tied(name)}
    if getattr(model, "quantization", None) is not None:  # packed weights (lmforge.compress): their config too
        from lmforge.compress.quantize import checkpoint_entry

        meta["quantization"], tensors = checkpoint_entry(model, tensors)
    if getattr(model, "adaptation", None) is not None:  # a fine-tuning method (lmforge.adapt): applied again on load
        meta["adaptation"] = model.adaptation.to_dict()
    atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder


def read_meta(folder: Path) -> dict:
    """`lmforge.json` of a folder, with errors naming the file."""
    meta_path = folder / CONFIG_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing (not an lmforge checkpoint folder)") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    for key in ("config", "task"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: missing field {key!r}")
    if meta["task"] not in TASKS:
        raise CheckpointError(f"{meta_path}: unknown task {meta['task']!r}; known: {', '.join(TASKS)}")
    return meta


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32, overrides: dict | None = None) -> Model:
    """Read a folder written by `save_model`, strictly: a tensor missing or without a place in the model is an error.

    The model is built on the meta device and takes the file's tensors themselves (`assign=True`). A
    checkpoint of trainable parameters only loads its base first (checked by its sha256). `overrides`
    change ModelConfig fields that do not change the weights' shapes (dropout, ...). A quantized
    checkpoint (a `quantization` entry) gets its quantized modules back, packed tensors as stored.
    """
    folder = Path(path)
    meta = read_meta(folder)
    meta_path = folder / CONFIG_NAME
    try:
        cfg = ModelConfig.from_dict(meta["config"], source=str(meta_path))
        cfg = cfg.replace(**(overrides or {}))
        with torch.device("meta"):
            model = TASKS[meta["task"]](cfg, **meta.get("task_kwargs", {}))
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{meta_path}: {err}") from None
    tensors = _load_safetensors(folder / "model.safetensors")
    if "quantization" in meta:  # empty quantized modules swapped in, to take the packed tensors as they are
        from lmforge.compress.quantize import QuantError, restore_quantized

        try:
            tensors = restore_quantized(model, meta["quantization"], tensors, str(meta_path))
        except QuantError as err:
            raise CheckpointError(str(err)) from None
    if "adaptation" in meta:  # the method's modules (LoRA, adapters, prefixes), empty, to take the stored tensors
        from lmforge.adapt import AdaptConfig, AdaptError, adapt

        try:
            adapt(model, AdaptConfig.from_dict(meta["adaptation"], source=f"{meta_path}: adaptation"))
        except AdaptError as err:
            raise CheckpointError(f"{meta_path}: {err}") from None
    expected = model.state_dict()
    base = meta.get("base")
    if base:
        tensors = {**_base_state(base, folder, meta, cfg), **tensors}
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(k for k in expected if k not in tensors and not model.is_tied(k))
    shapes = [f"{k}: shape {tuple(tensors[k].shape)} != {tuple(v.shape)}"
              for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if unknown or missing or shapes:
        parts = shapes[:8] + [f"missing {k}" for k in missing[:8]]
        if unknown:
            parts.append(f"no place in a {meta['task']} model for {', '.join(unknown[:8])}"
                         + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""))
        raise CheckpointError(f"{folder}: checkpoint does not fit {CONFIG_NAME}: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=False, assign=True)
    left = model.materialize()
    if left:  # every parameter came from the file or its base (only tied ones are re-tied)
        raise CheckpointError(f"{folder}: no tensors for {', '.join(left[:8])}")
    return model.to(dtype).eval()


def _base_state(base: dict, folder: Path, meta: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict of a delta checkpoint's base, after checking it is the file the checkpoint was made on."""
    where = base.get("path", "")
    try:
        digest = weights_digest(where)
    except CheckpointError as err:
        raise CheckpointError(f"{folder}: holds the trainable parameters only; its base {where!r} cannot be read "
                              f"({err})") from None
    if digest != base.get("sha256"):
        raise CheckpointError(f"{folder}: its base {where} changed since this checkpoint was written (sha256 "
                              f"{digest[:12]}, expected {str(base.get('sha256'))[:12]}); restore that base")
    model = load_any(where, task=meta["task"], overrides=base.get("overrides"), **meta.get("task_kwargs", {}))
    if "quantization" in meta:  # a frozen quantized base (QLoRA): packed as in training (quantizing is deterministic)
        from lmforge.compress.quantize import QuantConfig, quantize_model

        if meta["quantization"].get("fused"):
            model.fuse_projections()
        quantize_model(model, QuantConfig.from_dict(meta["quantization"]["config"], f"{folder}: quantization"))
    return model.state_dict()


def load_any(path: str | os.PathLike, dtype: torch.dtype = torch.float32, task: str | None = None,
             overrides: dict | None = None, **model_kwargs) -> Model:
    """An lmforge folder, a Hugging Face folder, or a named offline checkpoint, as a `task` model.

    An lmforge folder holds one task; asking for another is an error. A Hugging Face folder is read
    with `task` (heads it lacks are initialised; see `load_pretrained`).
    """
    from lmforge.interop.hf import load_pretrained

    folder = Path(path)
    if (folder / CONFIG_NAME).is_file():
        saved = read_meta(folder)["task"]
        if task is not None and task != saved:
            raise CheckpointError(f"{folder}: holds a {saved} model, not a {task} one")
        return load_model(folder, dtype, overrides)
    return load_pretrained(path, task=task, dtype=dtype, overrides=overrides, **model_kwargs)
