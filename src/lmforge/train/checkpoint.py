"""Training checkpoints: everything needed to continue exactly, written atomically.

A checkpoint is a folder `step-0000100/` holding the training module's own state dict (lmforge
format, `model/`: every tensor under its own name, whatever wraps the plain layers; or, with
`trainable_only`, the trainable parameters plus the path and sha256 of the frozen base), optimizer and
scheduler state, the data position and all RNG states. It is written as `.step-0000100.tmp/` and
renamed into place only when complete, so a crash never leaves a half-written checkpoint that
`--resume` could pick up. Only tensors and plain data are stored; loading uses `weights_only=True`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.fileio import atomic_write
from lmforge.interop.native import save_model

PREFIX = "step-"


def rng_state() -> dict:
    """Python, NumPy and torch RNG states (CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Full (unsharded) state dicts on CPU: the same code serves one process, DDP and FSDP.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer, scheduler, data_state: dict,
                    extra: dict | None = None, keep_last: int = 2, best_metric: str | None = None,
                    greater_is_better: bool = False, is_main: bool = True, scaler=None,
                    base: dict | None = None) -> Path:
    """Write `run_dir/step-XXXXXXX/` atomically, then prune to the last `keep_last` (plus the best by
    `best_metric`, a key of `extra`, smallest or with `greater_is_better` largest).

    Every rank calls this (gathering sharded FSDP state is collective); only the main rank writes.
    With `base` ({"path", "sha256"}), only the trainable parameters are stored, and the base is named.
    """
    model_state = get_model_state_dict(model, options=FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    final = run_dir / f"{PREFIX}{step:07d}"
    if not is_main:
        return final
    tmp = run_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model", state_dict=model_state, trainable_only=base is not None, base=base)
    trainer = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng_state()}
    if scaler is not None:
        trainer["scaler"] = scaler.state_dict()
    atomic_write(tmp / "trainer.pt", lambda path: torch.save(trainer, path))
    state = json.dumps({"step": step, "data": data_state, **(extra or {})}, indent=1)
    atomic_write(tmp / "state.json", lambda path: Path(path).write_text(state))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # atomic on POSIX: the folder appears complete or not at all
    _prune(run_dir, keep_last, best_metric, greater_is_better)
    return final


def _prune(run_dir: Path, keep_last: int, best_metric: str | None, greater_is_better: bool = False) -> None:
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set(ckpts)
    if best_metric:
        best = best_checkpoint(run_dir, best_metric, greater_is_better)
        if best is not None:
            keep.add(best)
    for c in ckpts:
        if c not in keep:
            shutil.rmtree(c, ignore_errors=True)


def best_checkpoint(run_dir: Path, metric: str, greater_is_better: bool = False) -> Path | None:
    """The checkpoint with the best `metric` in its state.json (the earliest of ties), or None if none has it."""
    scored = []
    for c in list_checkpoints(run_dir):
        try:
            value = json.loads((c / "state.json").read_text()).get(metric)
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(value, (int, float)):
            scored.append((-value if greater_is_better else value, c.name, c))
    return min(scored)[2] if scored else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


class CorruptCheckpoint(Exception):
    """A checkpoint folder that cannot be read back (a file missing, truncated or not what it should be)."""


def read_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint folder, read and checked before anything is restored.

    Raises `CorruptCheckpoint` naming the file when a part is missing or unreadable.
    """
    from lmforge.interop.hf import CheckpointError, _load_safetensors
    from lmforge.interop.native import read_meta

    try:
        meta = read_meta(path / "model")
        tensors = _load_safetensors(path / "model" / "model.safetensors")
    except (CheckpointError, OSError) as err:
        raise CorruptCheckpoint(str(err)) from None
    trainer_path = path / "trainer.pt"
    try:
        trainer = torch.load(trainer_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{trainer_path}: missing") from None
    except Exception as err:  # truncated or foreign files fail in many ways inside the unpickler
        raise CorruptCheckpoint(f"{trainer_path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(trainer, dict) or not {"optimizer", "scheduler", "rng"} <= set(trainer):
        raise CorruptCheckpoint(f"{trainer_path}: not a trainer state (optimizer, scheduler, rng)")
    state_path = path / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptCheckpoint(f"{state_path}: unreadable ({err})") from None
    if not isinstance(state, dict) or "step" not in state or "data" not in state:
        raise CorruptCheckpoint(f"{state_path}: no step / data position")
    return {"meta": meta, "tensors": tensors, "trainer": trainer, "state": state}


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler=None, base: dict | None = None) -> dict:
    """Restore the training module's tensors, optimizer, scheduler and RNG; return `state.json` (step, data).

    The module's own state dict is restored strictly: a tensor the checkpoint lacks (other than the
    frozen ones of a trainable-only checkpoint, whose base must be `base`) or one the module has no
    place for is an error naming it. Raises `CorruptCheckpoint` (nothing restored) when the folder
    cannot be read, `CheckpointError` when it is from another model.
    """
    from lmforge.interop.hf import CheckpointError

    parts = read_checkpoint(path)
    meta, tensors, trainer = parts["meta"], dict(parts["tensors"]), parts["trainer"]
    if meta["config"] != model.cfg.to_dict():
        diff = [k for k, v in meta["config"].items() if model.cfg.to_dict().get(k) != v]
        raise CheckpointError(f"{path}: checkpoint is from another model shape (differs in: {', '.join(diff)})")
    expected = set(model.state_dict())  # the module's own names (FSDP keeps them)
    tied = {name for name in expected if model.is_tied(name)}  # stored once, as the token embedding
    expected -= tied
    partial = meta.get("tensors") == "trainable"
    if partial:
        saved_base = meta.get("base") or {}
        if base is None or saved_base.get("sha256") != base.get("sha256"):
            raise CheckpointError(f"{path}: holds the trainable parameters of a model based on "
                                  f"{saved_base.get('path')} (sha256 {str(saved_base.get('sha256'))[:12]}), but this run "
                                  f"starts from {base and base.get('path')}; resume with the same model.checkpoint")
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        expected -= frozen
    missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected - (frozen if partial else set()))
    if missing or unknown:
        raise CheckpointError(f"{path}: does not fit the model being trained: "
                              + "; ".join([f"missing {', '.join(missing[:6])}"] * bool(missing)
                                          + [f"no place for {', '.join(unknown[:6])}"] * bool(unknown)))
    if not partial:
        tensors.update({name: tensors["body.tokens.weight"] for name in tied})
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=not partial))
    set_optimizer_state_dict(model, optimizer, trainer["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    if scaler is not None and "scaler" in trainer:
        scaler.load_state_dict(trainer["scaler"])
    return parts["state"]


def resume_latest(run_dir: Path, log=print, **objects) -> tuple[Path | None, dict | None]:
    """Restore the newest checkpoint of `run_dir` that reads back whole; (its path, its state) or (None, None).

    A newer checkpoint that is corrupt (a file deleted or truncated) is skipped with a message naming
    it and the reason, and the one before it is used; nothing of the corrupt one is restored.
    """
    from lmforge.interop.hf import CheckpointError

    ckpts = list_checkpoints(run_dir)
    skipped = []
    for path in reversed(ckpts):
        try:
            state = load_checkpoint(path, **objects)
        except CorruptCheckpoint as err:
            skipped.append(path.name)
            log(f"checkpoint {path} is unreadable, skipping it: {err}")
            continue
        if skipped:
            log(f"resuming from {path.name}, the newest intact checkpoint ({', '.join(skipped)} unreadable)")
        return path, state
    if ckpts:
        raise CheckpointError(f"{run_dir}: none of its {len(ckpts)} checkpoints can be read back "
                              f"({', '.join(skipped)}); start again with --overwrite true")
    return None, None
