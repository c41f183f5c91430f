"""Encoder pretraining tasks: masked LM (+ next-sentence prediction) and SimCSE contrastive learning.

Every sequence is "[CLS] text [SEP]" (NSP: "[CLS] A [SEP] B [SEP]"), right-padded to the longest row
of the batch; special ids follow the rule in `tasks_common`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from lmforge.data import TokenDataset
from lmforge.models import EncoderModel, MaskedLM, ModelConfig
from lmforge.models.config import ConfigError
from lmforge.objectives import (
    collate_nsp,
    info_nce_loss,
    make_nsp_pairs,
    mask_tokens,
    masked_lm_loss,
    mean_pool,
    nsp_loss,
    simcse_views,
    split_views,
)
from lmforge.train.tasks_common import (
    ENCODER_ROLES,
    Batch,
    DocumentTask,
    pad_rows,
    to_device,
    word_ids,
    word_starts,
)

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer
    from lmforge.train.tasks_common import SpecialIds


def bert_templates(tokenizer: Tokenizer, ids: SpecialIds) -> tuple[str, str]:
    """BERT's single and pair templates in the tokenizer's own spelling of [CLS] and [SEP]."""
    cls, sep = tokenizer.id_to_token(ids.cls), tokenizer.id_to_token(ids.sep)
    return f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1"


@dataclass
class MaskedLMTask(DocumentTask):
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
    _starts: torch.Tensor | None = field(default=None, init=False, repr=False)

    roles: ClassVar[dict[str, str]] = ENCODER_ROLES
    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids", "labels")}

    def configure(self, dataset: TokenDataset, tokenizer: Tokenizer | None = None) -> dict:
        """Special ids ([PAD] [CLS] [SEP] [MASK], reserved when missing) and, for whole words, word starts."""
        overrides = super().configure(dataset, tokenizer)
        if self.whole_word:
            if tokenizer is None:
                raise ConfigError(f"objective {self.name!r}: whole-word masking needs the tokenizer (data.tokenizer)")
            self._starts = word_starts(tokenizer, self.special.vocab_size)
        return overrides

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """BERT's encoder + MLM head (no pooler: nothing would train it, and DDP needs every weight used)."""
        return MaskedLM(self.check_config(cfg).replace(pooler=False))

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
            words = word_ids(input_ids, self._starts, torch.isin(input_ids, specials))
        return mask_tokens(input_ids, mask_token_id=ids.mask, vocab_size=ids.vocab_size, special_ids=specials,
                           mlm_probability=self.mlm_probability, mask_ratio=self.mask_ratio,
                           random_ratio=self.random_ratio, generator=torch.Generator().manual_seed(seed),
                           word_ids=words)

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """[CLS] doc [SEP] rows, padded and masked: input_ids, attention_mask, labels (-100 off-target)."""
        ids = self.special
        input_ids, attention_mask = pad_rows([[ids.cls, *d, ids.sep] for d in documents], ids.pad)
        masked, labels = self.mask(input_ids, seed)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the masked tokens of a micro-batch."""
        b = to_device(batch, device)
        out = model(b["input_ids"], b["attention_mask"])
        return masked_lm_loss(out.logits, b["labels"]), {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed MLM loss in nats, number of masked tokens) of an evaluation batch."""
        b = to_device(batch, device)
        out = model(b["input_ids"], b["attention_mask"])
        return float(masked_lm_loss(out.logits, b["labels"], reduction="sum")), int((b["labels"] != -100).sum())


@dataclass
class NextSentenceTask(MaskedLMTask):
    """BERT's pretraining (Devlin et al. 2019, sec. 3.1): masked LM + next-sentence prediction.

    Each document piece is cut at a random point into segments A and B; half of the pairs keep B
    (IsNext), half take a segment of another document of the same batch (NotNext), as `make_nsp_pairs`
    does. The loss is MLM + NSP; validation reports the MLM part (so `val_ppl` is the MLM perplexity).
    """

    name: str = "mlm-nsp"
    not_next_probability: float = 0.5

    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids", "token_type_ids", "labels")}
    min_local: ClassVar[int] = 2

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """BERT's encoder with MLM head, pooler and NSP head (`BertForPreTraining`)."""
        return MaskedLM(self.check_config(cfg), nsp=True)

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

    def _forward(self, model: nn.Module, b: Batch):
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"])

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """MLM cross-entropy over masked tokens + NSP cross-entropy over pairs, of a micro-batch."""
        b = to_device(batch, device)
        out = self._forward(model, b)
        mlm, nsp = masked_lm_loss(out.logits, b["labels"]), nsp_loss(out.nsp_logits, b["next_sentence_label"])
        return mlm + nsp, {"mlm": mlm.detach(), "nsp": nsp.detach()}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed MLM loss in nats, number of masked tokens) of an evaluation batch."""
        b = to_device(batch, device)
        out = self._forward(model, b)
        return float(masked_lm_loss(out.logits, b["labels"], reduction="sum")), int((b["labels"] != -100).sum())


@dataclass
class ContrastiveTask(DocumentTask):
    """Unsupervised SimCSE (Gao et al. 2021): each sequence twice with dropout on, InfoNCE over the batch.

    Embeddings are mean-pooled over real tokens; the negatives of a sequence are the other sequences of
    its micro-batch (on its own process). Validation draws the dropout masks from a fixed seed per batch.
    """

    name: str = "contrastive"
    families: tuple[str, ...] = ("encoder",)
    temperature: float = 0.05

    roles: ClassVar[dict[str, str]] = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]"}
    min_local: ClassVar[int] = 2

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """A bare encoder (`BertModel`); needs dropout, the only "augmentation" of unsupervised SimCSE."""
        self.check_config(cfg)
        if cfg.dropout <= 0:
            raise ConfigError(f"objective {self.name!r} (SimCSE) makes its two views with dropout, but the model "
                              "has dropout 0: set model.overrides.dropout (SimCSE uses 0.1)")
        return EncoderModel(cfg.replace(pooler=False))

    def max_tokens(self, seq_len: int) -> int:
        """Room for [CLS] and [SEP]."""
        return seq_len - 2

    def templates(self, tokenizer: Tokenizer) -> tuple[str, str]:
        """[CLS] A [SEP], and [CLS] A [SEP] B [SEP] with segment 1 for B, as `collate` builds them."""
        return bert_templates(tokenizer, self.special)

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """[CLS] doc [SEP] rows, padded: input_ids, attention_mask, and the batch's seed (for validation dropout)."""
        ids = self.special
        input_ids, attention_mask = pad_rows([[ids.cls, *d, ids.sep] for d in documents], ids.pad)
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
