"""lmforge's own checkpoint folder: `lmforge.json` (config + task) and `model.safetensors` in our names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.fileio import atomic_write
from lmforge.interop.hf import CheckpointError, _load_safetensors
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import TASKS, MaskedLM, Model

CONFIG_NAME = "lmforge.json"


def task_of(model: Model) -> str:
    """The task name of a model (also when FSDP has subclassed it)."""
    return next(t for t, cls in TASKS.items() if isinstance(model, cls))


def save_model(model: Model, path: str | os.PathLike, state_dict: dict | None = None) -> Path:
    """Write the model in lmforge's format (atomically; tied weights stored once).

    `state_dict` replaces `model.state_dict()`, e.g. a full one gathered from FSDP shards.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"nsp": True} if isinstance(model, MaskedLM) and model.nsp_head is not None else {}
    meta = {"format": "lmforge", "version": 1, "task": task_of(model), "task_kwargs": kwargs,
            "config": model.cfg.to_dict()}
    seen, tensors = set(), {}
    for name, t in (model.state_dict() if state_dict is None else state_dict).items():
        if t.data_ptr() in seen and t.numel():
            continue  # a tied weight: re-tied on load
        seen.add(t.data_ptr())
        tensors[name] = t.contiguous()
    atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Model:
    """Read a folder written by `save_model`."""
    folder = Path(path)
    meta_path = folder / CONFIG_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing (not an lmforge checkpoint folder)") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    try:
        cfg = ModelConfig.from_dict(meta["config"], source=str(meta_path))
        model = TASKS[meta["task"]](cfg, **meta.get("task_kwargs", {}))
    except KeyError as err:
        raise CheckpointError(f"{meta_path}: missing or unknown field {err.args[0]!r}") from None
    except ConfigError as err:
        raise CheckpointError(f"{meta_path}: {err}") from None
    tensors = _load_safetensors(folder / "model.safetensors")
    expected = model.state_dict()
    problems = [f"{k}: shape {tuple(tensors[k].shape)} != {tuple(v.shape)}"
                for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    missing = [k for k in expected if k not in tensors and not model.is_tied(k)]
    if problems or missing:
        raise CheckpointError(f"{folder}: checkpoint does not fit {CONFIG_NAME}: "
                              + "; ".join(problems[:8] + [f"missing {k}" for k in missing[:8]]))
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return model.to(dtype).eval()


def load_any(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Model:
    """An lmforge folder, a Hugging Face folder, or a named offline checkpoint."""
    from lmforge.interop.hf import load_pretrained

    if (Path(path) / CONFIG_NAME).is_file():
        return load_model(path, dtype)
    return load_pretrained(path, dtype=dtype)
