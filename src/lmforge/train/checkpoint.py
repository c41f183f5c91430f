"""Training checkpoints: everything needed to continue exactly, written atomically.

A checkpoint is a folder `step-0000100/` holding the model (lmforge format), optimizer and
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

from lmforge.interop.native import load_model, save_model

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
                    is_main: bool = True, scaler=None) -> Path:
    """Write `run_dir/step-XXXXXXX/` atomically, then prune to the last `keep_last` (plus `best`).

    Every rank calls this (gathering sharded FSDP state is collective); only the main rank writes.
    """
    model_state = get_model_state_dict(model, options=FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    final = run_dir / f"{PREFIX}{step:07d}"
    if not is_main:
        return final
    tmp = run_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model", state_dict=model_state)
    trainer = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng_state()}
    if scaler is not None:
        trainer["scaler"] = scaler.state_dict()
    torch.save(trainer, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "data": data_state, **(extra or {})}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # atomic on POSIX: the folder appears complete or not at all
    _prune(run_dir, keep_last, best_metric)
    return final


def _prune(run_dir: Path, keep_last: int, best_metric: str | None) -> None:
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set(ckpts)
    if best_metric:
        scored = [(json.loads((c / "state.json").read_text()).get(best_metric), c) for c in ckpts]
        scored = [(v, c) for v, c in scored if v is not None]
        if scored:
            keep.add(min(scored, key=lambda vc: vc[0])[1])
    for c in ckpts:
        if c not in keep:
            shutil.rmtree(c, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler=None) -> dict:
    """Restore model weights, optimizer, scheduler and RNG; return `state.json` (step, data position)."""
    from lmforge.interop.hf import CheckpointError

    saved = load_model(path / "model", dtype=next(model.parameters()).dtype)
    if saved.cfg.to_dict() != model.cfg.to_dict():
        diff = [k for k, v in saved.cfg.to_dict().items() if model.cfg.to_dict().get(k) != v]
        raise CheckpointError(f"{path}: checkpoint is from another model shape (differs in: {', '.join(diff)})")
    set_model_state_dict(model, saved.state_dict(), options=StateDictOptions(full_state_dict=True))
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, trainer["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    if scaler is not None and "scaler" in trainer:
        scaler.load_state_dict(trainer["scaler"])
    return json.loads((path / "state.json").read_text())
