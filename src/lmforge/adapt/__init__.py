"""Fine-tuning methods: which parameters of a pretrained model train, and the small modules some add.

`adapt(model, AdaptConfig(method=...))` applies one in place; `save_adapter` / `load_adapter` write and
read what it trained. One file per method: `freeze.py` (full, ffn, head, bitfit, freeze), `lora.py`
(LoRA, DoRA, QLoRA), `adapters.py` (Houlsby / Pfeiffer bottlenecks), `prefix.py`, `prompt.py`;
`peft_format.py` reads and writes LoRA adapters in PEFT's layout.

The names below are imported on first use (PEP 562), so `lmforge.adapt.config` (and the command line)
can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.adapt.base import (
        METHODS,
        TrainableSummary,
        adapt,
        base_digest,
        load_adapter,
        match_modules,
        read_adapter_meta,
        save_adapter,
        trainable_summary,
    )
    from lmforge.adapt.config import AdaptConfig, AdaptError

_HOMES = {name: "lmforge.adapt.base" for name in (
    "METHODS", "TrainableSummary", "adapt", "base_digest", "load_adapter", "match_modules", "read_adapter_meta",
    "save_adapter", "trainable_summary")}
_HOMES.update(AdaptConfig="lmforge.adapt.config", AdaptError="lmforge.adapt.config")

__all__ = ["METHODS", "AdaptConfig", "AdaptError", "TrainableSummary", "adapt", "base_digest", "load_adapter",
           "match_modules", "read_adapter_meta", "save_adapter", "trainable_summary"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lmforge.adapt' has no attribute {name!r}")
