"""Fine-tuning as a training objective: any `lmforge.tasks` task, wrapped for the training loop.

The loop (`loop.py`) sees the same `Objective` interface as in pretraining; the data are a `TaskSplit`
(a split's examples and their tokenized features) instead of token shards. Training batches come
from `TaskBatches`: each epoch a seeded permutation of the features (the last partial batch dropped,
so every step has `batch_size` rows), resumable exactly from (epoch, batch) without replaying data.
Evaluation adds the task's metric (`eval_metrics`), which the loop logs as `val_<name>` and uses for
keep-best and early stopping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.models import TASKS, Model, ModelConfig
from lmforge.models.config import ConfigError
from lmforge.tasks.base import Batch, Example, Feature, Task

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


@dataclass(frozen=True)
class TaskSplit:
    """One split of a task's data: the rows read from the file and the features made from them."""

    examples: Sequence[Example]
    features: Sequence[Feature]
    name: str = "train"

    @property
    def num_tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


class TaskBatches:
    """Shuffled batches of features, `rank`'s share of each global batch, forever; `state_dict` is (epoch, batch)."""

    def __init__(self, split: TaskSplit, batch_size: int, collate, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if len(split.features) < batch_size:
            raise ConfigError(f"the {split.name} split has {len(split.features)} features, fewer than "
                              f"train.batch_size={batch_size}: lower the batch size")
        self.split, self.batch_size, self.collate = split, batch_size, collate
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_epoch = len(split.features) // batch_size
        self.epoch, self.index = 0, 0

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.split.features), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self.index >= self.per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        rows = self._order(self.epoch)[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        local = rows.chunk(self.world_size)[self.rank] if self.world_size > 1 else rows
        self.index += 1
        return self.collate([self.split.features[i] for i in local.tolist()])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


@dataclass
class FinetuneObjective:
    """A task as the training loop's objective (see `lmforge.train.objective.Objective`)."""

    task: Task
    tokenizer: Tokenizer
    pad_id: int
    eval_batch_size: int = 32
    name: str = "finetune"
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def families(self) -> tuple[str, ...]:
        return self.task.families

    @property
    def model_task(self) -> str:
        return self.task.model_task

    @property
    def model_overrides(self) -> dict[str, Any]:
        return self.task.model_overrides()

    def build_model(self, cfg: ModelConfig) -> Model:
        """A fresh model of the task's kind (fine-tuning from scratch: for tests and baselines)."""
        return self.check_model(TASKS[self.model_task](cfg.replace(**self.model_overrides), **self.model_kwargs))

    def check_model(self, model: Model) -> Model:
        if model.cfg.family not in self.families:
            raise ConfigError(f"task {self.task.name!r} trains {' or '.join(self.families)} models, but this model "
                              f"is {model.cfg.family!r}")
        return model

    def export_model(self, model: Model) -> Model:
        return model

    def export_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        return tokenizer

    def collate(self, features: Sequence[Feature]) -> Batch:
        return self.task.collate(features, self.pad_id)

    def train_loader(self, dataset: TaskSplit, batch_size: int, seq_len: int, seed: int, rank: int,
                     world_size: int):
        """`TaskBatches`, or the task's own batches when it draws them itself (multi-task mixing)."""
        if hasattr(self.task, "batches"):
            return self.task.batches(dataset, batch_size, self.collate, seed, rank, world_size)
        return TaskBatches(dataset, batch_size, self.collate, seed=seed, rank=rank, world_size=world_size)

    def eval_loader(self, dataset: TaskSplit, batch_size: int, seq_len: int, rank: int, world_size: int) -> list:
        """The split once, in order, this rank's share (rank r takes batches r, r + world_size, ...); features
        of one group (a multi-task sub-task) per batch."""
        groups: dict = {}
        for f in dataset.features:
            groups.setdefault(f.get("task"), []).append(f)
        batches = [feats[i:i + batch_size] for feats in groups.values() for i in range(0, len(feats), batch_size)]
        return [self.collate(b) for b in batches[rank::world_size]]

    def split(self, batch: Batch, n: int) -> list[Batch]:
        if n == 1:
            return [batch]
        parts = {k: v.chunk(n) if v.dim() else [v] * n for k, v in batch.items()}  # 0-dim: the batch's own (task id)
        return [{k: v[i] for k, v in parts.items()} for i in range(n)]

    def num_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        loss, _ = self.task.loss(model, _to(batch, device))
        return loss, {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        loss, n = self.task.loss(model, _to(batch, device))
        return float(loss) * n, n

    @torch.no_grad()
    def eval_metrics(self, model: nn.Module, dataset: TaskSplit, device: torch.device) -> dict[str, float]:
        """The task's metrics on the whole split (every rank computes the same)."""
        model.eval()
        return self.task.evaluate(model, dataset.examples, dataset.features, self.tokenizer, self.eval_batch_size)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
