"""T5 span corruption for encoder-decoders (Raffel et al. 2020, sec. 3.1.4 and 3.3.4); BART-shaped models too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from lmforge.models.config import ConfigError
from lmforge.objectives import (
    collate_seq2seq,
    noise_span_counts,
    raw_length_for_input_length,
    seq2seq_loss,
    span_corrupt,
)
from lmforge.train.objective_common import Batch, DocumentObjective, to_device

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


@dataclass
class SpanCorruptionObjective(DocumentObjective):
    """T5 span corruption: 15 % of the tokens, in spans of mean length 3, become sentinels in the input;
    the decoder writes each sentinel and the tokens it hides, then EOS.

    Document pieces are cut so that the corrupted input (EOS included) fits `seq_len`, as T5's
    `random_spans_helper` does. Sentinels are the tokenizer's `<extra_id_k>` when it has all of them,
    else 100 ids reserved after the vocabulary. The decoder starts from the pad id (T5's convention).
    Throughput (`num_tokens`) counts the encoder's input tokens.
    """

    name: str = "span"
    families: tuple[str, ...] = ("encoder-decoder",)
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    roles: ClassVar[dict[str, str]] = {"pad": "<pad>"}
    model_task: ClassVar[str] = "seq2seq-lm"
    num_sentinels: ClassVar[int] = 100
    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids",),
                                                    "decoder_attention_mask": ("decoder_input_ids", "labels")}

    def config_overrides(self) -> dict[str, Any]:
        """Vocabulary and pad id; the decoder starts from pad and documents end with the data's EOS."""
        return {**super().config_overrides(), "eos_token_id": self.special.eos,
                "decoder_start_token_id": self.special.pad}

    def templates(self, tokenizer: Tokenizer) -> tuple[str, str]:
        """Text then EOS, as the corrupted inputs end (T5's `$A </s>`)."""
        eos = tokenizer.id_to_token(self.special.eos)
        return f"$A {eos}", f"$A {eos} $B:1 {eos}:1"

    def max_tokens(self, seq_len: int) -> int:
        """The longest raw piece whose corrupted input fits `seq_len`; checks there are sentinels enough."""
        if seq_len < 2:
            raise ConfigError(f"objective {self.name!r} needs seq_len >= 2, got {seq_len}")
        length, _ = raw_length_for_input_length(seq_len, self.noise_density, self.mean_span_length)
        spans = noise_span_counts(length, self.noise_density, self.mean_span_length)[1]
        if spans > len(self.special.sentinels):
            raise ConfigError(f"seq_len {seq_len} gives {spans} noise spans per sequence, more than the "
                              f"{len(self.special.sentinels)} sentinel ids")
        return length

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """Corrupted pieces, padded: input_ids, attention_mask, decoder_input_ids, labels, decoder_attention_mask."""
        ids = self.special
        rng = np.random.default_rng(seed)
        pairs = [span_corrupt(doc, noise_density=self.noise_density, mean_span_length=self.mean_span_length,
                              sentinel_ids=ids.sentinels, eos_id=ids.eos, rng=rng) for doc in documents]
        batch = collate_seq2seq(pairs, pad_id=ids.pad, decoder_start_id=ids.pad)
        batch["decoder_attention_mask"] = (batch["labels"] != -100).long()
        return batch

    def _logits(self, model: nn.Module, b: Batch) -> torch.Tensor:
        # Padding sits right of every target and the decoder is causal, so no real position sees it: the
        # decoder mask is left out and attention keeps its fast causal path.
        return model(b["input_ids"], b["attention_mask"], decoder_input_ids=b["decoder_input_ids"])

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """Mean decoder cross-entropy over the target tokens of a micro-batch (teacher forcing)."""
        b = to_device(batch, device)
        return seq2seq_loss(self._logits(model, b), b["labels"]), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed target cross-entropy in nats, number of target tokens) of an evaluation batch."""
        b = to_device(batch, device)
        loss = seq2seq_loss(self._logits(model, b), b["labels"], reduction="sum")
        return float(loss), int((b["labels"] != -100).sum())
