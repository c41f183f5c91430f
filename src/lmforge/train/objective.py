"""Training objectives as the trainer sees them: which model each trains, its batches and its loss.

The training loop (`loop.py`) and the job (`pretrain.py`) call only what `Objective` lists, so the
losses stay pure functions in `lmforge.objectives` and the loop stays one readable function. An
objective is bound to its data first (`bind`), which returns a new, configured objective (special ids
fixed), the tokenizer that names every id it trains with, and the ModelConfig fields it needs; nothing
is mutated in place and no call depends on an earlier one having happened.

Objectives: `clm` (decoders), `mlm` / `mlm-wwm` / `mlm-nsp` / `rtd` / `contrastive` (encoders), `span`
(encoder-decoders); see `objective_encoder`, `objective_electra`, `objective_span` and, for special
ids and resume-exact masking, `objective_common`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from lmforge.data import EvalBatches, PackedBatches, TokenDataset
from lmforge.models import Model, ModelConfig
from lmforge.models.config import ConfigError
from lmforge.objectives import causal_lm_loss
from lmforge.train.objective_common import Binding, build_task_model, check_family
from lmforge.train.objective_electra import ReplacedTokenDetectionObjective
from lmforge.train.objective_encoder import ContrastiveObjective, MaskedLMObjective, NextSentenceObjective
from lmforge.train.objective_span import SpanCorruptionObjective

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


class Objective(Protocol):
    """Everything the training loop and the job call on an objective."""

    name: str
    families: tuple[str, ...]
    """The model families it trains."""
    model_task: ClassVar[str]
    """The `lmforge.models.TASKS` entry of the model it trains (the task a checkpoint is loaded as)."""
    model_kwargs: ClassVar[dict[str, Any]]
    model_overrides: ClassVar[dict[str, Any]]
    """ModelConfig fields the objective sets on any model it trains (e.g. no pooler for MLM)."""

    def bind(self, dataset: TokenDataset, tokenizer: Tokenizer | None) -> Binding:
        """This objective configured for `dataset` (and its tokenizer); see `Binding`."""

    def build_model(self, cfg: ModelConfig) -> Model:
        """A fresh model for this objective (checks the family and the vocabulary)."""

    def check_model(self, model: Model) -> Model:
        """Check a model loaded from a checkpoint can be trained with this objective; return it."""

    def train_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int, rank: int,
                     world_size: int) -> Any:
        """Batches of this rank, resumable: iterable, with `state_dict()` / `load_state_dict(state)`."""

    def eval_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, rank: int, world_size: int) -> Any:
        """The whole validation split once, the same batches at every evaluation."""

    def split(self, batch: Any, n: int) -> list:
        """The local batch as `n` micro-batches (gradient accumulation)."""

    def num_tokens(self, batch: Any) -> int:
        """Input tokens of a batch (for tokens/s and MFU)."""

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict]:
        """(mean loss, detached parts) of a micro-batch."""

    def eval_sums(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[float, int]:
        """(summed loss, number of targets) of an evaluation batch."""

    def export_model(self, model: Model) -> Model:
        """The model to save in Hugging Face format after training."""

    def export_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        """The tokenizer to save beside it, adding the special tokens the objective trained with (a copy)."""


@dataclass
class CausalLMObjective:
    """Next-token prediction on packed windows of the token stream (GPT, LLaMA)."""

    name: str = "clm"
    families: tuple[str, ...] = ("decoder",)

    model_task: ClassVar[str] = "causal-lm"
    model_kwargs: ClassVar[dict[str, Any]] = {}
    model_overrides: ClassVar[dict[str, Any]] = {}

    def bind(self, dataset: TokenDataset, tokenizer: Tokenizer | None) -> Binding:
        """No special ids beyond the tokenizer's: nothing to reserve, no ModelConfig overrides."""
        return Binding(self, tokenizer, {})

    def build_model(self, cfg: ModelConfig) -> Model:
        """A decoder with an LM head."""
        return build_task_model(self, cfg)

    def check_model(self, model: Model) -> Model:
        """Any decoder trains with next-token prediction."""
        check_family(self, model.cfg)
        return model

    def export_model(self, model: Model) -> Model:
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
        """Mean next-token cross-entropy of a micro-batch (the loader has shifted the targets)."""
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
        # Nothing reads the logits after the loss: it keeps its gradient in their memory.
        return causal_lm_loss(model(inputs), targets=targets, overwrite_logits=True), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch, device: torch.device) -> tuple[float, int]:
        """(summed loss in nats, number of targets) of an evaluation batch."""
        inputs, targets = (t.to(device) for t in batch)
        loss = causal_lm_loss(model(inputs), targets=targets, reduction="sum")
        return float(loss), int((targets != -100).sum())


OBJECTIVES = {
    "clm": CausalLMObjective,
    "mlm": MaskedLMObjective,
    "mlm-wwm": functools.partial(MaskedLMObjective, name="mlm-wwm", whole_word=True),
    "mlm-nsp": NextSentenceObjective,
    "rtd": ReplacedTokenDetectionObjective,
    "span": SpanCorruptionObjective,
    "contrastive": ContrastiveObjective,
}


def get_objective(name: str) -> Objective:
    """The (unbound) objective of a name: `clm`, `mlm`, `mlm-wwm`, `mlm-nsp`, `rtd`, `span`, `contrastive`."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]()
