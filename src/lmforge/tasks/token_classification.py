"""Token classification (NER, chunking): one BIO tag per word, learned on the word's sub-tokens.

Rows hold a word list (`spec.tokens`) and a tag list (`spec.tags`) of the same length; in a CSV/TSV file
both may be space-separated strings. Words are encoded pre-tokenized (`is_pretokenized`), so each
sub-token knows its word (`word_ids`). Training labels:
- first sub-token policy (default, BERT's paper): a word's first piece carries its tag, the others -100;
- all sub-token policy (`spec.label_all_subtokens`): every piece is labelled; after the first, a B-X
  tag becomes I-X, so each piece continues the word's entity.
Special tokens ([CLS], [SEP]) are -100. Inputs longer than `spec.max_length` are truncated.

Evaluation predicts each word by its first sub-token. Words with no sub-token in the input (cut by
truncation, or words the tokenizer turns into nothing) are predicted "O", so truncation shows in the
scores instead of shortening the gold sequences. Scores are seqeval's entity precision, recall and F1
(CoNLL rules) and the token accuracy over words.

Chinese (People's Daily) rows have one character per "word"; a character-level vocabulary or a
BERT-Chinese-style WordPiece (one piece per CJK character) gives one sub-token per word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from lmforge.data.errors import DataError
from lmforge.evaluate.tagging import entity_metrics
from lmforge.models.config import ConfigError
from lmforge.objectives._common import pad_sequences
from lmforge.tasks.base import Batch, Example, Feature, LabelMap, TaskSpec
from lmforge.tasks.classification import model_device, pad_id_of

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

IGNORE = -100
"""The label of positions without a target (cross-entropy's ignore_index)."""

_BIO = re.compile(r"(?:[BI]-.+|O)")


def entity_type(tag: str) -> str | None:
    """"B-PER" / "I-PER" -> "PER"; "O" -> None."""
    return None if tag == "O" else tag[2:]


def continuation(tag: str) -> str:
    """The tag of a word's later sub-tokens under the all-sub-token policy: B-X -> I-X, others unchanged."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int],
                 continuation_labels: Sequence[int], all_subtokens: bool) -> list[int]:
    """One training label per sub-token: the word's label on its first piece; on later pieces the
    continuation label (all-sub-token policy) or IGNORE; IGNORE on special tokens (word id None)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(continuation_labels[word] if all_subtokens else IGNORE)
        previous = word
    return labels


class TokenClassificationTask:
    """A BIO tag per word on a token classifier; entity-level F1 (seqeval)."""

    name: ClassVar[str] = "token-classification"
    model_task: ClassVar[str] = "token-classification"
    families: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
    metric: ClassVar[str] = "entity_f1"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.labels: LabelMap | None = None

    def columns(self) -> tuple[str, ...]:
        """The columns every row must have (for `read_examples(..., required=...)`)."""
        return self.spec.tokens, self.spec.tags

    # ------------------------------------------------------------------------------- rows

    def words_and_tags(self, example: Example) -> tuple[list[str], list[str]]:
        """The row's words and tags, checked: lists of strings (or space-separated strings) of equal length,
        tags "O", "B-X" or "I-X"."""
        words = self._string_list(example, self.spec.tokens)
        tags = self._string_list(example, self.spec.tags)
        if len(words) != len(tags):
            raise DataError(f"{example.where(self.spec.tags)}: {len(tags)} tags for {len(words)} words in "
                            f"column {self.spec.tokens!r}; give one tag per word")
        if not words:
            raise DataError(f"{example.where(self.spec.tokens)}: no words")
        for i, tag in enumerate(tags):
            if not _BIO.fullmatch(tag):
                raise DataError(f"{example.where(self.spec.tags)}: tag {i + 1} is {tag!r}, not a BIO tag "
                                f"(O, B-TYPE or I-TYPE)")
        return words, tags

    @staticmethod
    def _string_list(example: Example, column: str) -> list[str]:
        value = example.get(column, (list, str))
        if isinstance(value, str):
            return value.split()
        bad = next((v for v in value if not isinstance(v, str) or not v), None)
        if bad is not None:
            raise DataError(f"{example.where(column)}: expected a list of non-empty strings, found {bad!r}")
        return list(value)

    # ----------------------------------------------------------------------------- labels

    def fit(self, train: Sequence[Example]) -> None:
        """The tag set: "O" first, then B- and I- of every entity type in the training tags (sorted by type),
        so a continuation tag exists even for a type that only ever tags single words."""
        types = set()
        for example in train:
            _, tags = self.words_and_tags(example)
            types.update(t for t in map(entity_type, tags) if t is not None)
        if not types:
            where = train[0].source if train else "the training split"
            raise DataError(f"{where}: no entity tags in column {self.spec.tags!r} of the training split "
                            f"(every tag is 'O')")
        self.labels = LabelMap(["O"] + [f"{p}-{t}" for t in sorted(types) for p in "BI"])

    def use_labels(self, names: Sequence[str]) -> None:
        """Take the tag set of an already fine-tuned model (its config's `labels`) instead of `fit`."""
        self.labels = LabelMap(list(names))

    def model_overrides(self) -> dict[str, Any]:
        """num_labels and the tag names, saved with the model as its `id2label`."""
        labels = self._fitted()
        return {"num_labels": len(labels.names), "labels": labels.id2label}

    def _fitted(self) -> LabelMap:
        if self.labels is None:
            raise RuntimeError("TokenClassificationTask.fit(train) must be called before features and "
                               "model_overrides")
        return self.labels

    # --------------------------------------------------------------------------- features

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """input_ids, token_type_ids, the per-sub-token labels, and `word_ids` (-1 for special tokens)."""
        labels = self._fitted()
        backend = tokenizer.backend
        budget = self.spec.max_length - backend.num_special_tokens_to_add(False)
        if budget < 1:
            raise ConfigError(f"task.max_length={self.spec.max_length} leaves no room for words after the "
                              f"special tokens")
        index = {name: i for i, name in enumerate(labels.names)}

        def label_id(tag: str, example: Example) -> int:
            known = index.get(tag)  # a dict, not LabelMap.id's scan: a corpus has millions of tags
            return known if known is not None else labels.id(tag, example, self.spec.tags)

        rows = [self.words_and_tags(example) for example in examples]
        # one call: the Rust library encodes the rows in parallel
        encodings = backend.encode_batch([words for words, _ in rows], is_pretokenized=True,
                                         add_special_tokens=False) if rows else []
        out = []
        for example, (words, tags), encoding in zip(examples, rows, encodings):
            word_labels = [label_id(tag, example) for tag in tags]
            later_labels = [label_id(continuation(tag), example) for tag in tags]
            encoding.truncate(budget)
            encoding = backend.post_process(encoding, None, add_special_tokens=True)
            word_ids = encoding.word_ids
            targets = align_labels(word_ids, word_labels, later_labels, self.spec.label_all_subtokens)
            out.append({"input_ids": encoding.ids, "token_type_ids": encoding.type_ids, "labels": targets,
                        "word_ids": [-1 if w is None else w for w in word_ids], "num_words": len(words)})
        return out

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """Right-padded input_ids (B, T), attention_mask, token_type_ids; labels (B, T), IGNORE-padded."""
        ids = [f["input_ids"] for f in features]
        return {"input_ids": pad_sequences(ids, pad_id),
                "attention_mask": pad_sequences([[1] * len(r) for r in ids], 0),
                "token_type_ids": pad_sequences([f["token_type_ids"] for f in features], 0),
                "labels": pad_sequences([f["labels"] for f in features], IGNORE)}

    # ------------------------------------------------------------------------ loss, metrics

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The model's (B, T, num_labels) outputs on a batch."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch.get("token_type_ids"))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over the labelled sub-tokens, and their number."""
        logits = self.logits(model, batch)
        labels = batch["labels"]
        count = int((labels != IGNORE).sum())
        if count == 0:  # every word truncated away: no target, no gradient, no NaN
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE), count

    def word_predictions(self, logits: torch.Tensor, feature: Feature) -> list[str]:
        """The tag of each word of a feature: the argmax at its first sub-token, "O" for words not in the
        input. `logits` is the feature's own (T, num_labels), at least as long as its input_ids."""
        names = self._fitted().id2label
        predicted = ["O"] * feature["num_words"]
        best = logits[: len(feature["word_ids"])].argmax(-1).tolist()
        previous = -1
        for position, word in enumerate(feature["word_ids"]):
            if word >= 0 and word != previous:
                predicted[word] = names[best[position]]
            previous = word
        return predicted

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """Entity precision / recall / F1 and token accuracy over words, and the mean sub-token loss."""
        was_training = model.training
        model.eval()
        device = model_device(model)
        pad_id = pad_id_of(tokenizer)
        gold, pred = [], []
        total_loss, total_count = 0.0, 0
        try:
            for start in range(0, len(features), batch_size):
                chunk = features[start:start + batch_size]
                batch = {k: v.to(device) for k, v in self.collate(chunk, pad_id).items()}
                logits = self.logits(model, batch).float()
                labels = batch["labels"]
                count = int((labels != IGNORE).sum())
                if count:
                    total_loss += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                        ignore_index=IGNORE, reduction="sum"))
                    total_count += count
                logits = logits.cpu()
                for row, (feature, example) in enumerate(zip(chunk, examples[start:start + batch_size])):
                    gold.append(self.words_and_tags(example)[1])
                    pred.append(self.word_predictions(logits[row], feature))
        finally:
            model.train(was_training)
        out = entity_metrics(gold, pred)
        out["loss"] = total_loss / total_count if total_count else math.nan
        return out
