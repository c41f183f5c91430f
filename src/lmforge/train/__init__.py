"""The training engine: objectives, the training loop, the job, checkpoints, distributed setup.

The names below are imported on first use (PEP 562), so that `lmforge.train.config` and the
command line can be imported without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
    from lmforge.train.loop import TrainingError, evaluate, seed_everything, train
    from lmforge.train.pretrain import run_pretraining

# public name -> the module that defines it
_HOMES = {
    "DataSpec": "lmforge.train.config",
    "ModelSpec": "lmforge.train.config",
    "TrainConfig": "lmforge.train.config",
    "TrainingError": "lmforge.train.loop",
    "evaluate": "lmforge.train.loop",
    "seed_everything": "lmforge.train.loop",
    "train": "lmforge.train.loop",
    "run_pretraining": "lmforge.train.pretrain",
}

__all__ = ["DataSpec", "ModelSpec", "TrainConfig", "TrainingError", "evaluate", "run_pretraining",
           "seed_everything", "train"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
