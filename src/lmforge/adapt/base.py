"""What every adaptation method shares: its config, choosing modules by name, freezing, and the adapter file.

A method changes a model in place (`adapt`): it freezes the pretrained weights and marks, wraps or
adds the parameters it trains. Three rules hold for every method, so checkpoints, the trainer and
the interop code never need to know which one ran:

- **Base names never change.** A wrapped layer keeps its tensors under their old names and adds its
  own beside them (`body.decoder.blocks.0.attn.q_proj.lora_A.weight`); a base checkpoint still
  loads into an adapted model, and the adapted model's frozen tensors are the base's.
- **The method is recorded** as `model.adaptation` (an `AdaptConfig`): `save_model` writes it into
  `lmforge.json` and `load_model` applies it again before loading, so a training checkpoint of an
  adapted model reads back as that adapted model.
- **An adapter file holds what was trained, and names its base**: `save_adapter` writes the trained
  tensors (`adapter.safetensors`) and `adapter.json` (method, task, model config, labels, and the
  sha256 of every tensor it does *not* hold); `load_adapter` refuses a model whose tensors differ.

Methods register themselves in `METHODS` (name -> `apply(model, cfg)`); the simple ones (which
parameters train) live in `freeze.py`, each other method in its own file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.adapt.config import AdaptConfig, AdaptError

METHODS: dict[str, Callable[[nn.Module, AdaptConfig], None]] = {}
"""Method name -> `apply(model, cfg)`: called on a model whose parameters are all frozen; it unfreezes,
wraps or adds what the method trains (the task head is handled by `adapt`)."""


def register(name: str):
    """Decorator: register `apply(model, cfg)` as method `name`."""
    def deco(fn):
        METHODS[name] = fn
        return fn
    return deco


WEIGHT_ONLY = ("full", "ffn", "head", "bitfit", "freeze")
"""Methods that only choose which weights train (no modules added): a model they fine-tuned is a plain model of
its kind, and fine-tunes again (to recover after pruning, or to continue) with any method."""


def _load_methods() -> None:
    # The method files register themselves on import; imported here so `METHODS` is complete whoever asks.
    from lmforge.adapt import adapters, freeze, lora, prefix, prompt  # noqa: F401


def adapt(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """Apply `cfg.method` to `model` in place and return it (see the module docstring)."""
    _load_methods()
    if cfg.method not in METHODS:
        raise AdaptError(f"unknown adaptation method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}")
    previous = getattr(model, "adaptation", None)
    if previous is not None and previous.method not in WEIGHT_ONLY:
        raise AdaptError(f"the model is already adapted with {previous.method!r}: load the base model again")
    for p in model.parameters():
        p.requires_grad_(False)
    METHODS[cfg.method](model, cfg)
    if cfg.train_head and cfg.method not in ("full", "freeze"):
        for p in head_parameters(model):
            p.requires_grad_(True)
    if cfg.also_train:
        chosen = set(match_parameters(model, cfg.also_train, "also_train"))
        for name, p in model.named_parameters():
            if name in chosen:
                p.requires_grad_(True)
    model.adaptation = cfg
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the task head (`model.head`: a classifier, tagger or span head; a multi-task model's
    `model.heads`), none for LMs."""
    return [p for attr in ("head", "heads") if isinstance(getattr(model, attr, None), nn.Module)
            for p in getattr(model, attr).parameters()]


def _match(names: list[str], patterns: list[str]) -> tuple[list[str], list[str]]:
    """(names matching any pattern, in first-match order without repeats; the patterns that matched none)."""
    chosen, unmatched = [], []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        chosen += [n for n in hits if n not in chosen]
    return chosen, unmatched


def match_modules(model: nn.Module, patterns: list[str], kind: type | tuple[type, ...] = nn.Linear,
                  field_name: str = "target_modules") -> list[str]:
    """Names of the `kind` modules matching any of `patterns` (fnmatch); a pattern matching none is an error."""
    if not patterns:
        raise AdaptError(f"{field_name} is empty: name the modules to adapt, e.g. ['*q_proj', '*v_proj']")
    names = [n for n, m in model.named_modules() if n and isinstance(m, kind)]
    chosen, unmatched = _match(names, patterns)
    if unmatched:
        kinds = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names})[:12])
        raise AdaptError(f"{field_name}: {', '.join(map(repr, unmatched))} match no {kinds} of this model "
                         f"(its {kinds} layers end in: {examples})")
    return chosen


def match_parameters(model: nn.Module, patterns: list[str], field_name: str = "freeze") -> list[str]:
    """Names of the parameters matching any of `patterns` (fnmatch); a pattern matching none is an error."""
    names = [n for n, _ in model.named_parameters()]
    chosen, unmatched = _match(names, patterns)
    if unmatched:
        raise AdaptError(f"{field_name}: {', '.join(map(repr, unmatched))} match no parameter of this model "
                         f"(e.g. {', '.join(names[:4])})")
    return chosen


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@dataclass(frozen=True)
class TrainableSummary:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({self.percent:.3f} %)"


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Trainable and total parameters (shared tensors counted once; packed quantized buffers count as
    the parameters they stand for)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    for m in model.modules():  # quantized layers hold their weights as buffers
        if hasattr(m, "in_features") and hasattr(m, "qweight") and not isinstance(getattr(m, "weight", None),
                                                                                 nn.Parameter):
            total += m.in_features * m.out_features
    return TrainableSummary(trainable, total)


# ----------------------------------------------------------------------------------------- adapter files

ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


def trained_names(model: nn.Module) -> list[str]:
    """State-dict names of the trainable parameters (what an adapter file holds), tied copies skipped."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    state = model.state_dict(keep_vars=True)
    names, seen = [], set()
    for name, t in state.items():
        if id(t) in trainable and id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def base_digest(model: nn.Module, exclude: set[str] | list[str]) -> str:
    """sha256 over the state dict minus `exclude` (names, dtypes, shapes and bytes, in name order): the base
    an adapter applies to. Tied tensors count once (under their first name)."""
    exclude = set(exclude)
    digest = hashlib.sha256()
    seen = set()
    for name, t in sorted(model.state_dict(keep_vars=True).items()):
        if name in exclude or t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_adapter(model: nn.Module, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the trained tensors of an adapted model and `adapter.json` (method, task, config, base sha256)."""
    from safetensors.torch import save_file

    from lmforge.fileio import atomic_write
    from lmforge.models.tasks import task_of

    cfg = getattr(model, "adaptation", None)
    if cfg is None:
        raise AdaptError("the model carries no adaptation (lmforge.adapt.adapt it first)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = trained_names(model)
    state = model.state_dict()
    tensors = {n: state[n].detach().cpu().contiguous() for n in names}
    summary = trainable_summary(model)
    meta = {"format": "lmforge-adapter", "version": 1, "method": cfg.to_dict(), "task": task_of(model),
            "model_config": model.cfg.to_dict(), "base_sha256": base_digest(model, names),
            "trainable_parameters": summary.trainable, "total_parameters": summary.total, **(extra or {})}
    atomic_write(folder / ADAPTER_WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(folder / ADAPTER_CONFIG, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder


def read_adapter_meta(folder: str | os.PathLike) -> dict:
    """`adapter.json` of a folder, with errors naming the file and field."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdaptError(f"{path}: missing (not an lmforge adapter folder)") from None
    except json.JSONDecodeError as err:
        raise AdaptError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    for key in ("method", "task", "model_config", "base_sha256"):
        if key not in meta:
            raise AdaptError(f"{path}: missing field {key!r}")
    return meta


def load_adapter(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in `folder` to `model` (a base model of the same task) and load its tensors.

    The model must be the base the adapter was trained on: same task, a config of the same shapes, and
    the same tensors everywhere the adapter file does not hold (checked by sha256).
    """
    from lmforge.interop.hf import _load_safetensors
    from lmforge.models.tasks import task_of

    folder = Path(folder)
    meta = read_adapter_meta(folder)
    if task_of(model) != meta["task"]:
        raise AdaptError(f"{folder}: an adapter for a {meta['task']} model, not a {task_of(model)} one")
    mine, theirs = model.cfg.to_dict(), meta["model_config"]
    diff = [k for k in theirs if k not in ("dropout", "attn_dropout", "extra", "labels") and mine.get(k) != theirs[k]]
    if diff:
        raise AdaptError(f"{folder}: the adapter was trained on another model (config differs in "
                         f"{', '.join(f'{k}: {theirs[k]!r} vs {mine.get(k)!r}' for k in diff[:6])})")
    tensors = _load_safetensors(folder / ADAPTER_WEIGHTS)
    cfg = AdaptConfig.from_dict(meta["method"], source=str(folder / ADAPTER_CONFIG))
    # The saved tensors replace any initialisation, so one that needs more than the model (a text) is skipped.
    adapt(model, dataclasses.replace(cfg, prompt_init_text=None))
    model.adaptation = cfg
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise AdaptError(f"{folder}: tensors with no place in the adapted model: {', '.join(unknown[:6])}")
    digest = base_digest(model, set(tensors))
    if digest != meta["base_sha256"]:
        raise AdaptError(f"{folder}: this adapter was trained on another base model (base sha256 "
                         f"{meta['base_sha256'][:12]}, this model's {digest[:12]}): load the checkpoint it was "
                         "trained from")
    shapes = [f"{n}: {tuple(t.shape)} vs {tuple(state[n].shape)}" for n, t in tensors.items()
              if t.shape != state[n].shape]
    if shapes:
        raise AdaptError(f"{folder}: tensor shapes differ from the adapted model: {'; '.join(shapes[:6])}")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t)
    if meta["model_config"].get("labels") is not None:
        model.cfg = model.cfg.replace(labels=meta["model_config"]["labels"])
    return model
