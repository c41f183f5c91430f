"""What a fine-tuning task is to the trainer: rows of a data file in, features, batches, a loss and metrics out.

A task turns the examples of a labelled file (`Example`: the row's fields and where it came from) into
tokenized features (plain lists and ints, one per model input; a QA context may give several), pads a
list of them into a batch, computes the training loss of a batch on its model, and evaluates a model on
a split with the task's metric. The fine-tuning objective (`lmforge.train.objective_finetune`) wraps any
task for the training loop, so a new task is one file here and an entry in `TASKS`.

Errors in the data are `DataError`s that name the file, line and column (`Example.where`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from lmforge.data.errors import DataError
from lmforge.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

Feature = dict[str, Any]
"""One model input row: `input_ids` (list[int]) and whatever else the task needs (labels, offsets, ...)."""
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Example:
    """One row of a data file."""

    fields: dict[str, Any]
    """The row's columns by name (a JSONL object; a CSV/TSV row by its header)."""
    source: str
    """The file it came from."""
    line: int
    """Its 1-based line number in that file (JSONL, CSV/TSV: the line the row starts on)."""

    def where(self, column: str | None = None) -> str:
        """`file:line` (and `, column 'x'`) for error messages."""
        return f"{self.source}:{self.line}" + (f", column {column!r}" if column else "")

    def get(self, column: str, kind: type | tuple[type, ...] | None = None) -> Any:
        """The value of `column`, or a `DataError` naming the file, line and column when it is missing (or
        not of `kind`)."""
        if column not in self.fields or self.fields[column] is None:
            raise DataError(f"{self.where(column)}: missing (the row has {', '.join(map(repr, self.fields))}); "
                            f"set the task's column names if the file calls it otherwise")
        value = self.fields[column]
        if kind is not None and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DataError(f"{self.where(column)}: expected {names}, got {type(value).__name__} {value!r}")
        return value


class Task(Protocol):
    """Everything the fine-tuning objective calls on a task."""

    name: ClassVar[str]
    model_task: ClassVar[str]
    """The `lmforge.models.TASKS` entry of the model it trains ("sequence-classification", "causal-lm", ...)."""
    families: ClassVar[tuple[str, ...]]
    """The model families it can train."""
    metric: ClassVar[str]
    """The headline metric (a key of `evaluate`'s result; higher is better): early stopping and keep-best use it."""
    spec: TaskSpec

    def fit(self, train: Sequence[Example]) -> None:
        """Learn what the training split defines (the label set, in a stable order); check its rows."""

    def model_overrides(self) -> dict[str, Any]:
        """ModelConfig fields the task's model needs (num_labels, labels); {} for LM tasks."""

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """Tokenized features of `examples`; an unknown label in `split` is a DataError naming its row."""

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """Pad features into one batch of tensors (at least `input_ids` and `attention_mask`)."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """(mean loss over the batch's targets, number of targets)."""

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """The task's metrics on a split (predictions from `model` in eval mode, on the model's device)."""


@dataclass
class LabelMap:
    """Class names <-> ids, fitted on the training split (sorted, so runs agree) or given by the model."""

    names: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, values) -> LabelMap:
        """Sorted distinct labels; ints sort numerically (0, 1, 2, 10), strings alphabetically."""
        distinct = set(values)
        return cls(sorted(distinct, key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else str(v)))
                   if all(isinstance(v, (int, str)) for v in distinct) else sorted(map(str, distinct)))

    def id(self, value, example: Example, column: str) -> int:
        """The id of `value`, or a DataError naming the row and the known labels."""
        for i, name in enumerate(self.names):
            if name == value or str(name) == str(value):
                return i
        raise DataError(f"{example.where(column)}: label {value!r} was not seen in the training data "
                        f"(known: {', '.join(map(str, self.names[:20]))})")

    @property
    def id2label(self) -> list[str]:
        return [str(n) for n in self.names]
