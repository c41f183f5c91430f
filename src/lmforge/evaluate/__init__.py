"""Evaluation: metrics as pure functions, language-model scoring, an lm-eval adapter and the HTML report.

Submodules are imported on first use (PEP 562), so `import lmforge.evaluate` stays cheap and torch-free.
"""

from __future__ import annotations

import importlib

from lmforge.evaluate.errors import EvaluationError

_SUBMODULES = ("calibration", "choice", "classification", "efficiency", "generation", "harness", "html", "interpret",
               "job", "lm", "qa", "report", "robustness", "tagging")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"lmforge.evaluate.{name}")
    raise AttributeError(f"module 'lmforge.evaluate' has no attribute {name!r}")


__all__ = ["EvaluationError", *_SUBMODULES]
