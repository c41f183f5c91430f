"""Several tasks trained together on one body (hard parameter sharing), each with its own head.

One data file holds the rows of every sub-task, each naming its sub-task in `spec.task_column`
(`{"task": "sentiment", "text": ..., "label": ...}`, `{"task": "ner", "tokens": [...], "tags": [...]}`).
Each sub-task is an ordinary task of `lmforge.tasks` that reads its own columns; it runs on the
`MultiTaskModel`'s view of its head (`task_view`), so its features, loss and metrics are exactly those of
the task trained alone. A training batch comes from one sub-task, drawn with probability proportional to
n_i^(1/T) for a sub-task of n_i features and `spec.temperature` T (the examples-proportional mixing of
T5 with a temperature; T = 1 follows the data, a large T samples the sub-tasks uniformly). The headline
metric `mean` averages the sub-tasks' headline metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from lmforge.data.errors import DataError
from lmforge.models.config import HEAD_KINDS, ConfigError
from lmforge.tasks.base import Batch, Example, Feature
from lmforge.tasks.spec import TaskSpec


class MultiTask:
    """Sub-tasks by name (`spec.subtasks`), one head each on a shared body."""

    name = "multitask"
    model_task = "multi-task"
    families = ("encoder", "decoder")
    metric = "mean"

    def __init__(self, spec: TaskSpec) -> None:
        from lmforge.tasks import get_task

        if not spec.subtasks:
            raise ConfigError("task multitask needs task_options.subtasks: {sub-task name: task}, e.g. "
                              "{sentiment: classification, ner: token-classification}")
        if not spec.temperature > 0:
            raise ConfigError(f"task_options.temperature={spec.temperature!r} must be > 0")
        self.spec = spec
        self.tasks = {}
        for name, kind in spec.subtasks.items():
            if kind == "multitask":
                raise ConfigError(f"task_options.subtasks.{name}: a sub-task cannot itself be multitask")
            task = get_task(dataclasses.replace(spec, name=kind))
            if task.model_task not in HEAD_KINDS:
                raise ConfigError(f"task_options.subtasks.{name}={kind!r}: a multi-task body carries "
                                  f"{', '.join(HEAD_KINDS)} heads, not a {task.model_task} one")
            self.tasks[name] = task
        self.names = list(self.tasks)

    def _groups(self, examples: Sequence[Example]) -> dict[str, list[Example]]:
        groups: dict[str, list[Example]] = {name: [] for name in self.names}
        for ex in examples:
            name = ex.get(self.spec.task_column, str)
            if name not in groups:
                raise DataError(f"{ex.where(self.spec.task_column)}: sub-task {name!r} is not one of "
                                f"{', '.join(self.names)} (task_options.subtasks)")
            groups[name].append(ex)
        return groups

    def fit(self, train: Sequence[Example]) -> None:
        for name, rows in self._groups(train).items():
            if not rows:
                raise DataError(f"the training data has no rows of sub-task {name!r} ({self.spec.task_column} column)")
            self.tasks[name].fit(rows)

    def model_overrides(self) -> dict:
        heads = {}
        for name, task in self.tasks.items():
            fields = task.model_overrides()
            heads[name] = {"kind": task.model_task, "num_labels": fields.get("num_labels", 2),
                           "labels": fields.get("labels")}
        return {"task_heads": heads}

    def features(self, examples: Sequence[Example], tokenizer, split: str) -> list[Feature]:
        out = []
        for name, rows in self._groups(examples).items():
            out += [{**f, "task": name} for f in self.tasks[name].features(rows, tokenizer, split)]
        return out

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        names = {f["task"] for f in features}
        if len(names) != 1:
            raise ValueError(f"a multi-task batch mixes sub-tasks {sorted(names)}; batches come from one sub-task")
        name = names.pop()
        batch = self.tasks[name].collate([{k: v for k, v in f.items() if k != "task"} for f in features], pad_id)
        return {**batch, "task_id": torch.tensor(self.names.index(name))}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        name = self.names[int(batch["task_id"])]
        rest = {k: v for k, v in batch.items() if k != "task_id"}
        inner = getattr(model, "module", getattr(model, "_orig_mod", model))  # under DDP / torch.compile
        return self.tasks[name].loss(inner.task_view(name, caller=model), rest)

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature], tokenizer,
                 batch_size: int) -> dict[str, float]:
        groups = self._groups(examples)
        out, headline = {}, []
        for name, task in self.tasks.items():
            if not groups[name]:
                continue
            feats = [{k: v for k, v in f.items() if k != "task"} for f in features if f["task"] == name]
            metrics = task.evaluate(model.task_view(name), groups[name], feats, tokenizer, batch_size)
            out.update({f"{name}_{k}": v for k, v in metrics.items()})
            headline.append(metrics[task.metric])
        out["mean"] = sum(headline) / max(len(headline), 1)
        return out

    def batches(self, split, batch_size: int, collate, seed: int, rank: int, world_size: int) -> MultiTaskBatches:
        return MultiTaskBatches(self, split, batch_size, collate, seed, rank, world_size)


class MultiTaskBatches:
    """Batches of one sub-task each, the sub-task drawn with temperature; resumable from the step count."""

    def __init__(self, task: MultiTask, split, batch_size: int, collate, seed: int, rank: int,
                 world_size: int) -> None:
        from lmforge.train.objective_finetune import TaskBatches, TaskSplit

        self.names = task.names
        self.loaders = {}
        for name in self.names:
            feats = [f for f in split.features if f["task"] == name]
            self.loaders[name] = TaskBatches(TaskSplit([], feats, f"{split.name} ({name})"), batch_size, collate,
                                             seed=seed, rank=rank, world_size=world_size)
        sizes = torch.tensor([float(len(self.loaders[n].split.features)) for n in self.names])
        self.probs = sizes ** (1.0 / task.spec.temperature)
        self.probs /= self.probs.sum()
        self.seed, self.step = seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)  # a function of the step: resumable
        name = self.names[int(torch.multinomial(self.probs, 1, generator=gen))]
        self.step += 1
        return next(self.loaders[name])

    def state_dict(self) -> dict:
        return {"step": self.step, **{name: loader.state_dict() for name, loader in self.loaders.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for name, loader in self.loaders.items():
            loader.load_state_dict(state[name])
