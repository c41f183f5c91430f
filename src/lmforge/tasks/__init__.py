"""Fine-tuning tasks: labelled files -> features -> batches -> loss and metrics (see `base.py`).

`get_task(spec)` builds the task named by `spec.name`; each task lives in its own file. Names are
imported on first use (PEP 562), so `lmforge.tasks.spec` (and the command line) need no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tasks.base import Example, LabelMap, Task
    from lmforge.tasks.spec import TaskSpec

# name -> (module, class): imported on use, so naming a task costs nothing
TASKS = {
    "classification": ("lmforge.tasks.classification", "ClassificationTask"),
    "regression": ("lmforge.tasks.classification", "RegressionTask"),
    "token-classification": ("lmforge.tasks.token_classification", "TokenClassificationTask"),
    "qa": ("lmforge.tasks.qa", "QuestionAnsweringTask"),
    "seq2seq": ("lmforge.tasks.seq2seq", "Seq2SeqTask"),
    "chat": ("lmforge.tasks.chat", "ChatTask"),
    "multitask": ("lmforge.tasks.multitask", "MultiTask"),
}
_HOMES = {"Example": "lmforge.tasks.base", "LabelMap": "lmforge.tasks.base", "Task": "lmforge.tasks.base",
          "TaskSpec": "lmforge.tasks.spec"}


def get_task(spec: TaskSpec):
    """The task `spec.name`, configured by `spec`."""
    if spec.name not in TASKS:
        from lmforge.models.config import ConfigError

        raise ConfigError(f"task.name={spec.name!r} is not one of {', '.join(TASKS)}")
    module, cls = TASKS[spec.name]
    return getattr(importlib.import_module(module), cls)(spec)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lmforge.tasks' has no attribute {name!r}")


__all__ = ["TASKS", "Example", "LabelMap", "Task", "TaskSpec", "get_task"]
