"""Encoder pretraining objectives: masked LM (+ next-sentence prediction) and SimCSE contrastive learning.

Every sequence is "[CLS] text [SEP]" (NSP: "[CLS] A [SEP] B [SEP]"), right-padded to the longest row
of the batch; special ids follow the rule in `objective_common`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from lmforge.models import Model
from lmforge.models.config import ConfigError
from lmforge.objectives import (
    collate_nsp,
    info_nce_loss,
    make_nsp_pairs,
    mask_tokens,
    masked_lm_loss,
    mean_pool,
    nsp_loss,
    pad_batch,
    predicted_positions,
    simcse_views,
    split_views,
    word_ids_from_starts,
    word_start_table,
)
from lmforge.train.objective_common import ENCODER_ROLES, Batch, DocumentObjective, SpecialIds, to_device

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


def bert_templates(tokenizer: Tokenizer, ids: SpecialIds) -> tuple[str, str]:
    """BERT's single and pair templates in the tokenizer's own spelling of [CLS] and [SEP]."""
    cls, sep = tokenizer.id_to_token(ids.cls), tokenizer.id_to_token(ids.sep)
    return f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1"


@dataclass
class MaskedLMObjective(DocumentObjective):
    """Masked language modelling (Devlin et al. 2019, "BERT", sec. 3.1): 15 % of tokens, 80/10/10.

    `whole_word` selects whole words (Cui et al. 2019) using the tokenizer's word-start markers ("##",
    "Ġ", "▁"; with byte-level BPE, text without spaces such as Chinese counts as one word per run).
    The loss is the cross-entropy over masked tokens; validation reports it with fixed masks.
    """

    name: str = "mlm"
    families: tuple[str, ...] = ("encoder",)
    mlm_probability: float = 0.15
    mask_ratio: float = 0.8
    random_ratio: float = 0.1
    whole_word: bool = False
    word_starts: torch.Tensor | None = field(default=None, repr=False)
    """(V,) bool: which ids begin a word (whole-word masking); set by `bind`."""

    roles: ClassVar[dict[str, str]] = ENCODER_ROLES
    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids", "labels")}
    model_task: ClassVar[str] = "masked-lm"
    model_overrides: ClassVar[dict[str, Any]] = {"pooler": False}
    """BERT's encoder + MLM head, no pooler: nothing would train it, and DDP needs every weight used."""

    def bound_fields(self, ids: SpecialIds, tokenizer: Tokenizer | None) -> dict[str, Any]:
        """For whole words, the word-start table of the vocabulary (from the tokenizer's token strings)."""
        if not self.whole_word:
            return {}
        if tokenizer is None:
            raise ConfigError(f"objective {self.name!r}: whole-word masking needs the tokenizer (data.tokenizer)")
        vocabulary = [tokenizer.id_to_token(i) or "" for i in range(ids.vocab_size)]
        try:
            return {"word_starts": word_start_table(vocabulary)}
        except ValueError as err:
            raise ConfigError(f"objective {self.name!r}: whole-word masking: {err}") from None

    def max_tokens(self, seq_len: int) -> int:
        """Room for [CLS] and [SEP]."""
        return seq_len - 2

    def templates(self, tokenizer: Tokenizer) -> tuple[str, str]:
        """[CLS] A [SEP], and [CLS] A [SEP] B [SEP] with segment 1 for B, as `collate` builds them."""
        return bert_templates(tokenizer, self.special)

    def mask(self, input_ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids, labels) by `mask_tokens`, drawn from a generator seeded with `seed`."""
        ids = self.special
        specials = torch.tensor(sorted(ids.specials))
        words = None
        if self.whole_word:
            words = word_ids_from_starts(input_ids, self.word_starts, torch.isin(input_ids, specials))
        return mask_tokens(input_ids, mask_token_id=ids.mask, vocab_size=ids.vocab_size, special_ids=specials,
                           mlm_probability=self.mlm_probability, mask_ratio=self.mask_ratio,
                           random_ratio=self.random_ratio, generator=torch.Generator().manual_seed(seed),
                           word_ids=words)

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """[CLS] doc [SEP] rows, padded and masked: input_ids, attention_mask, labels (-100 off-target)."""
        ids = self.special
        input_ids, attention_mask = pad_batch([[ids.cls, *d, ids.sep] for d in documents], ids.pad)
        masked, labels = self.mask(input_ids, seed)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

    def _forward(self, model: nn.Module, b: Batch, positions: torch.Tensor):
        return model(b["input_ids"], b["attention_mask"], positions=positions)

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the masked tokens of a micro-batch (the head runs at those tokens only)."""
        b = to_device(batch, device)
        positions, targets = predicted_positions(b["labels"])
        return masked_lm_loss(self._forward(model, b, positions).logits, targets), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed MLM loss in nats, number of masked tokens) of an evaluation batch."""
        b = to_device(batch, device)
        positions, targets = predicted_positions(b["labels"])
        loss = masked_lm_loss(self._forward(model, b, positions).logits, targets, reduction="sum")
        return float(loss), targets.numel()


@dataclass
class NextSentenceObjective(MaskedLMObjective):
    """BERT's pretraining (Devlin et al. 2019, sec. 3.1): masked LM + next-sentence prediction.

    Each document piece is cut at a random point into segments A and B; half of the pairs keep B
    (IsNext), half take a segment of another document of the same batch (NotNext), as `make_nsp_pairs`
    does. The loss is MLM + NSP; validation reports the MLM part (so `val_ppl` is the MLM perplexity).
    """

    name: str = "mlm-nsp"
    not_next_probability: float = 0.5

    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids", "token_type_ids", "labels")}
    min_local: ClassVar[int] = 2
    model_kwargs: ClassVar[dict[str, Any]] = {"nsp": True}
    model_overrides: ClassVar[dict[str, Any]] = {"pooler": True}
    """BERT's encoder with MLM head, pooler and NSP head (`BertForPreTraining`)."""

    def max_tokens(self, seq_len: int) -> int:
        """Room for [CLS] and two [SEP]."""
        return seq_len - 3

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """[CLS] A [SEP] B [SEP] pairs, padded and masked, with token_type_ids and next_sentence_label."""
        ids = self.special
        rng = np.random.default_rng(seed)
        segments = []
        for doc in documents:
            cut = int(rng.integers(1, len(doc))) if len(doc) > 1 else 1
            segments.append([doc[:cut], doc[cut:]] if len(doc) > 1 else [doc, doc])
        p = self.not_next_probability if len(documents) > 1 else 0.0  # a lone eval piece has no other document
        pairs = make_nsp_pairs(segments, rng, seq_len, ids.cls, ids.sep, not_next_probability=p)
        batch = collate_nsp(pairs, pad_id=ids.pad)
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], seed)
        return batch

    def _forward(self, model: nn.Module, b: Batch, positions: torch.Tensor):
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"], positions=positions)

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """MLM cross-entropy over masked tokens + NSP cross-entropy over pairs, of a micro-batch."""
        b = to_device(batch, device)
        positions, targets = predicted_positions(b["labels"])
        out = self._forward(model, b, positions)
        mlm, nsp = masked_lm_loss(out.logits, targets), nsp_loss(out.nsp_logits, b["next_sentence_label"])
        return mlm + nsp, {"mlm": mlm.detach(), "nsp": nsp.detach()}


@dataclass
class ContrastiveObjective(DocumentObjective):
    """Unsupervised SimCSE (Gao et al. 2021): each sequence twice with dropout on, InfoNCE over the batch.

    Embeddings are mean-pooled over real tokens; the negatives of a sequence are the other sequences of
    its micro-batch (on its own process). Validation draws the dropout masks from a fixed seed per batch.
    """

    name: str = "contrastive"
    families: tuple[str, ...] = ("encoder",)
    temperature: float = 0.05

    roles: ClassVar[dict[str, str]] = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]"}
    min_local: ClassVar[int] = 2
    model_task: ClassVar[str] = "encoder"
    model_overrides: ClassVar[dict[str, Any]] = {"pooler": False}
    """A bare encoder (`BertModel`)."""

    def check_model(self, model: Model) -> Model:
        """An encoder with dropout, the only "augmentation" of unsupervised SimCSE."""
        super().check_model(model)
        if model.cfg.dropout <= 0:
            raise ConfigError(f"objective {self.name!r} (SimCSE) makes its two views with dropout, but the model "
                              "has dropout 0: set model.overrides.dropout (SimCSE uses 0.1)")
        return model

    def max_tokens(self, seq_len: int) -> int:
        """Room for [CLS] and [SEP]."""
        return seq_len - 2

    def templates(self, tokenizer: Tokenizer) -> tuple[str, str]:
        """[CLS] A [SEP], and [CLS] A [SEP] B [SEP] with segment 1 for B, as `collate` builds them."""
        return bert_templates(tokenizer, self.special)

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """[CLS] doc [SEP] rows, padded: input_ids, attention_mask, and the batch's seed (for validation dropout)."""
        ids = self.special
        input_ids, attention_mask = pad_batch([[ids.cls, *d, ids.sep] for d in documents], ids.pad)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "seed": seed}

    def num_tokens(self, batch: Batch) -> int:
        """Real tokens the encoder reads: each sequence twice."""
        return 2 * int(batch["attention_mask"].sum())

    def _loss(self, model: nn.Module, b: Batch) -> torch.Tensor:
        if b["input_ids"].shape[0] < 2:
            raise ConfigError(f"objective {self.name!r} needs at least 2 sequences per micro-batch (in-batch negatives)")
        input_ids, attention_mask = simcse_views(b["input_ids"], b["attention_mask"])
        emb_a, emb_b = split_views(mean_pool(model(input_ids, attention_mask), attention_mask))
        return info_nce_loss(emb_a, emb_b, self.temperature)

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """InfoNCE of the two dropout views of a micro-batch (model in train mode)."""
        return self._loss(model, to_device(batch, device)), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed InfoNCE, sequences) with dropout on, its masks seeded by the batch (global RNG untouched)."""
        b = to_device(batch, device)
        n = b["input_ids"].shape[0]
        if n < 2:
            return 0.0, 0
        seed = int(b["seed"])
        was_training = model.training
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.random.default_generator.manual_seed(seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed)
            model.train()
            try:
                loss = self._loss(model, b)
            finally:
                model.train(was_training)
        return float(loss) * n, n
