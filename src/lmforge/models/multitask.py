"""Multi-task learning with hard parameter sharing: one body, one head per task (Caruana 1997; MT-DNN).

The heads are named by task in `cfg.task_heads`; `forward(..., task=name)` runs the body and that head.
`task_view(name)` is the same model seen as a single-task one (a `SequenceClassifier`-like callable
sharing the body and that head), so the code of each task (`lmforge.tasks`) runs on it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.heads import ClassificationHead, Pooler, SpanHead, TokenClassificationHead, pool
from lmforge.models.model import Model, _hidden
from lmforge.models.transformer import Transformer


class MultiTaskModel(Model):
    """A body shared by several task heads (`heads.<task>.*`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.task_heads:
            raise ConfigError("a multi-task model needs task_heads: {task name: {kind, num_labels}}")
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.pooling = cfg.pooling or ("last" if cfg.family == "decoder" else "first")
        self.pooler = Pooler(cfg) if cfg.pooler and cfg.family == "encoder" else None  # BERT's, shared by the tasks
        self.heads = nn.ModuleDict({name: _head(cfg, spec) for name, spec in cfg.task_heads.items()})
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, task: str):
        """The outputs of `task`'s head: (B, labels), (B, T, labels) or (start, end) logits."""
        if task not in self.heads:
            raise ConfigError(f"no head for task {task!r}; this model has {', '.join(self.heads)}")
        hidden = _hidden(self.body, input_ids, attention_mask, token_type_ids)
        kind = self.cfg.task_heads[task]["kind"]
        if kind == "sequence-classification":  # pooled as `SequenceClassifier` pools
            hidden = self.pooler(hidden) if self.pooler is not None else pool(hidden, attention_mask, self.pooling)
        return self.heads[task](hidden)

    def task_view(self, task: str, caller: nn.Module | None = None) -> TaskView:
        """This model as a single-task model for `task` (shares every parameter; not a submodule). `caller`
        is what the view calls: a DDP or compiled wrapper of this model (so gradients sync), or the model."""
        return TaskView(self, task, caller)


class TaskView:
    """A multi-task model called as one task's model: `view(input_ids, attention_mask, token_type_ids)`."""

    def __init__(self, model: MultiTaskModel, task: str, caller: nn.Module | None = None) -> None:
        self.model, self.task, self.caller = model, task, caller if caller is not None else model
        spec = model.cfg.task_heads[task]
        self.cfg = model.cfg.replace(num_labels=spec.get("num_labels", 2), labels=spec.get("labels"), task_heads=None)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.caller(input_ids, attention_mask, token_type_ids, task=self.task)

    def eval(self) -> TaskView:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> TaskView:
        self.model.train(mode)
        return self

    def parameters(self):
        return self.model.parameters()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def training(self) -> bool:
        return self.model.training


def _head(cfg: ModelConfig, spec: dict) -> nn.Module:
    sub = cfg.replace(num_labels=spec.get("num_labels", 2), labels=None, task_heads=None)
    if spec["kind"] == "sequence-classification":
        return ClassificationHead(sub)
    if spec["kind"] == "token-classification":
        return TokenClassificationHead(sub)
    return SpanHead(sub)
