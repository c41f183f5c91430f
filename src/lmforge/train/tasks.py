"""Pretraining tasks: for each objective, which model it trains, its batches and its loss.

The training loop (`loop.py`) only sees this small interface, so objectives stay pure functions in
`lmforge.objectives` and the loop stays one readable function:

- `configure(dataset, tokenizer) -> dict`: fix the special ids; the ModelConfig overrides they need
  (e.g. a larger `vocab_size` when [MASK] / [CLS] / [SEP] / sentinels are reserved after the vocabulary);
- `build_model(cfg)`, `families`; `export_model(model)`, `export_tokenizer(tokenizer)`: what to save in
  Hugging Face format (the tokenizer adds the special tokens the task trained with);
- `train_loader(...)`, `eval_loader(...)`, `split(batch, n)`, `num_tokens(batch)`;
- `loss(model, micro_batch, device) -> (mean loss, extras)`, `eval_sums(...) -> (summed loss, count)`.

Objectives: `clm` (decoders), `mlm` / `mlm-wwm` / `mlm-nsp` / `rtd` / `contrastive` (encoders), `span`
(encoder-decoders); see `tasks_encoder`, `tasks_electra`, `tasks_span` and, for special ids and
resume-exact masking, `tasks_common`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data import EvalBatches, PackedBatches, TokenDataset
from lmforge.models import CausalLM, ModelConfig
from lmforge.models.config import ConfigError
from lmforge.train.tasks_electra import ReplacedTokenDetectionTask
from lmforge.train.tasks_encoder import ContrastiveTask, MaskedLMTask, NextSentenceTask
from lmforge.train.tasks_span import SpanCorruptionTask

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


@dataclass
class CausalLMTask:
    """Next-token prediction on packed windows of the token stream (GPT, LLaMA)."""

    name: str = "clm"
    families: tuple[str, ...] = ("decoder",)

    def configure(self, dataset: TokenDataset, tokenizer: Tokenizer | None = None) -> dict:
        """No special ids beyond the tokenizer's: no ModelConfig overrides."""
        return {}

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """A decoder with an LM head."""
        return CausalLM(cfg)

    def export_model(self, model: nn.Module) -> nn.Module:
        """The model itself is what gets exported."""
        return model

    def export_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        """The tokenizer as it is: windows of the token stream carry no added tokens."""
        return tokenizer

    def train_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int, rank: int,
                     world_size: int) -> PackedBatches:
        """Shuffled packed windows of `seq_len + 1` tokens, this rank's slice of each global batch."""
        return PackedBatches(dataset, batch_size, seq_len, seed=seed, rank=rank, world_size=world_size)

    def eval_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, rank: int,
                    world_size: int) -> EvalBatches:
        """The whole split once, in order."""
        return EvalBatches(dataset, batch_size, seq_len, rank=rank, world_size=world_size)

    def split(self, batch, n: int) -> list:
        """The local batch as `n` micro-batches (gradient accumulation)."""
        inputs, targets = batch
        return list(zip(inputs.chunk(n), targets.chunk(n)))

    def num_tokens(self, batch) -> int:
        """Input tokens of a batch."""
        return batch[0].numel()

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """Mean next-token cross-entropy of a micro-batch."""
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
        return shifted_cross_entropy(model(inputs), targets), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch, device: torch.device) -> tuple[float, int]:
        """(summed loss in nats, number of targets) of an evaluation batch."""
        inputs, targets = (t.to(device) for t in batch)
        loss = shifted_cross_entropy(model(inputs), targets, reduction="sum")
        return float(loss), int((targets != -100).sum())


def shifted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against targets already shifted by the loader (-100 = ignore)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)


TASKS = {
    "clm": CausalLMTask,
    "mlm": MaskedLMTask,
    "mlm-wwm": functools.partial(MaskedLMTask, name="mlm-wwm", whole_word=True),
    "mlm-nsp": NextSentenceTask,
    "rtd": ReplacedTokenDetectionTask,
    "span": SpanCorruptionTask,
    "contrastive": ContrastiveTask,
}


def get_task(name: str):
    """The task object for an objective name."""
    if name not in TASKS:
        raise ConfigError(f"objective {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]()
