"""Sequence-to-sequence fine-tuning (summarization, translation) of an encoder-decoder such as BART.

A row holds a source text (`spec.text`) and a target text (`spec.target`). The source is tokenized with
the tokenizer's special tokens and truncated to `max_length`; the target is its tokens plus EOS (also cut
to `max_length`). Training is teacher forcing: the decoder reads the targets shifted right behind the
model's `decoder_start_token_id` and learns every target token (token cross-entropy, padding ignored).
Evaluation decodes greedily up to `max_new_tokens` and scores the text with ROUGE (`rouge_scores`).

ROUGE and Chinese: rouge-score's tokenizer keeps only `[a-z0-9]` runs, so a Chinese target (even with its
characters space-joined) has no tokens at all and every prediction scores 0. A pair whose reference holds
CJK characters is therefore scored over characters instead (each letter, digit or CJK character is a
token; the usual practice for Chinese ROUGE), the others over rouge-score's words with stemming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lmforge.data.errors import DataError
from lmforge.evaluate.generation import rouge_metrics
from lmforge.objectives import pad_batch, seq2seq_loss, shift_right
from lmforge.objectives._common import pad_sequences
from lmforge.tasks.base import Batch, Example, Feature, TaskSpec

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

IGNORE_INDEX = -100

# CJK ideographs (with extensions A and the compatibility block), kana and Hangul: scripts written without spaces.


class Seq2SeqTask:
    """Source text -> target text on a `Seq2SeqLM`: teacher-forced token loss, greedy decoding, ROUGE."""

    name: ClassVar[str] = "seq2seq"
    model_task: ClassVar[str] = "seq2seq-lm"
    families: ClassVar[tuple[str, ...]] = ("encoder-decoder",)
    metric: ClassVar[str] = "rougeL"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def fit(self, train: Sequence[Example]) -> None:
        """Check that every training row has a source and a target text."""
        for example in train:
            self.row(example)

    def model_overrides(self) -> dict[str, Any]:
        """An LM task: {}."""
        return {}

    def columns(self) -> tuple[str, ...]:
        """The columns every row must have (for `read_examples(..., required=...)`)."""
        return self.spec.text, self.spec.target

    def row(self, example: Example) -> tuple[str, str]:
        """(source, target) of a row; a DataError names a missing or non-text column."""
        return example.get(self.spec.text, str), example.get(self.spec.target, str)

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """`input_ids` (the source, special tokens included, truncated) and `labels` (target tokens + EOS)."""
        if tokenizer.eos_id is None:
            raise DataError("seq2seq needs a tokenizer with an eos token (it ends every target)")
        rows = [self.row(example) for example in examples]
        # the tokenizer truncates and keeps its special tokens (<s> ... </s>)
        sources = tokenizer([source for source, _ in rows], padding=False, truncation=True,
                            max_length=self.spec.max_length, return_tensors=None)["input_ids"]
        targets = tokenizer.encode_batch([target for _, target in rows], add_special_tokens=False)
        return [{"input_ids": source, "labels": target[:self.spec.max_length - 1] + [tokenizer.eos_id],
                 "example_index": i} for i, (source, target) in enumerate(zip(sources, targets))]

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """input_ids and attention_mask (B, S) right-padded; labels (B, T) with -100 at padding.

        `decoder_input_ids` are made in `loss` from the labels: their start token is the model's
        (`cfg.decoder_start_token_id`), which the features cannot know.
        """
        input_ids, attention_mask = pad_batch([f["input_ids"] for f in features], pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Token cross-entropy of the decoder under teacher forcing; (mean loss, target tokens)."""
        labels = batch["labels"]
        decoder_input_ids = batch.get("decoder_input_ids")
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(labels, decoder_start_id(model), model.cfg.pad_token_id or 0)
        logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=decoder_input_ids)
        return seq2seq_loss(logits, labels), int((labels != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """ROUGE-1/2/L and exact match of greedy generations against the targets."""
        return rouge_scores(*self.predict_texts(model, examples, features, tokenizer, batch_size))

    @torch.no_grad()
    def predict_texts(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                      tokenizer: Tokenizer, batch_size: int) -> tuple[list[str], list[str]]:
        """(the greedy generation for each feature, its target text)."""
        from lmforge.generate import generate

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        eos = model.cfg.eos_token_id if model.cfg.eos_token_id is not None else tokenizer.eos_id
        predictions = []
        try:
            for i in range(0, len(features), batch_size):
                input_ids, attention_mask = pad_batch([f["input_ids"] for f in features[i:i + batch_size]], pad_id)
                new = generate(model, input_ids.to(device), self.spec.max_new_tokens, attention_mask.to(device),
                               temperature=0.0, eos_token_id=eos)  # (B, <= max_new_tokens)
                predictions += [tokenizer.decode(cut_at_stop(row, {eos})).strip() for row in new.tolist()]
        finally:
            model.train(was_training)
        references = [self.row(examples[f["example_index"]])[1] for f in features]
        return predictions, references


def decoder_start_id(model: nn.Module) -> int:
    """The model's `decoder_start_token_id` (BART: eos), or a clear error when its config has none."""
    start = model.cfg.decoder_start_token_id
    if start is None:
        from lmforge.models.config import ConfigError

        raise ConfigError("the model config has no decoder_start_token_id: set it (BART uses its eos id, 2)")
    return start


def cut_at_stop(ids: Sequence[int], stops: set[int]) -> list[int]:
    """`ids` up to (not including) the first stop id."""
    for i, token in enumerate(ids):
        if token in stops:
            return list(ids[:i])
    return list(ids)


def rouge_scores(predictions: Sequence[str], references: Sequence[str],
                 chars: bool | None = None) -> dict[str, float]:
    """`lmforge.evaluate.generation.rouge_metrics` choosing, per pair, characters where the reference has CJK
    text (`chars=None`)."""
    return rouge_metrics(predictions, references, chars=chars)
