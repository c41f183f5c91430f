"""Sequence classification and regression: one label (or number) per text or sentence pair.

Single sentences are encoded as the tokenizer's post-processor wraps them (BERT: `[CLS] a [SEP]`;
byte-level BPE: the text alone). Sentence pairs (`spec.text_pair`) use the tokenizer's pair template
when it has one (BERT: `[CLS] a [SEP] b [SEP]`, segment ids 0 then 1), else, as decoders are fine-tuned
(Radford et al. 2018), `a <sep> b` joined by the tokenizer's sep token, or its eos token. Inputs longer
than `spec.max_length` are cut longest-first, as the `tokenizers` library does, special tokens
included. A decoder's `SequenceClassifier` pools the last real token, which it finds from the
attention mask, so right padding with any pad id is safe.
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
from lmforge.evaluate.classification import classification_metrics, regression_metrics
from lmforge.models.config import ConfigError
from lmforge.objectives._common import pad_sequences
from lmforge.tasks.base import Batch, Example, Feature, LabelMap, TaskSpec

if TYPE_CHECKING:
    from tokenizers import Encoding

    from lmforge.tokenizers import Tokenizer


def pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """How many tokens of each text to keep so both fit `budget` (the `tokenizers` LongestFirst rule):
    the shorter text is kept whole when it leaves room, else each gets half (the longer the odd one)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    short, long = sorted((len_a, len_b))
    keep_short = short
    keep_long = short if short > budget else max(short, budget - short)
    if keep_short + keep_long > budget:
        keep_short, keep_long = budget // 2, budget // 2 + budget % 2
    return (keep_short, keep_long) if len_a <= len_b else (keep_long, keep_short)


def encode_text(tokenizer: Tokenizer, text: str, pair: str | None,
                max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, token_type_ids) of a text or a sentence pair, with special tokens, at most `max_length`."""
    encode = tokenizer.backend.encode
    second = None if pair is None else encode(pair, add_special_tokens=False)
    return join_encodings(tokenizer, encode(text, add_special_tokens=False), second, max_length)


def join_encodings(tokenizer: Tokenizer, first: Encoding, second: Encoding | None,
                   max_length: int) -> tuple[list[int], list[int]]:
    """`encode_text` from the texts' encodings without special tokens (which it truncates in place)."""
    backend = tokenizer.backend
    if second is None:
        budget = max_length - backend.num_special_tokens_to_add(False)
        _check_budget(budget, max_length, "a text")
        first.truncate(budget)
        encoding = backend.post_process(first, None, add_special_tokens=True)
        return encoding.ids, encoding.type_ids
    specials = backend.num_special_tokens_to_add(True)
    if specials > backend.num_special_tokens_to_add(False):  # the template marks pairs itself (BERT)
        budget = max_length - specials
        _check_budget(budget, max_length, "a sentence pair")
        keep_a, keep_b = pair_lengths(len(first.ids), len(second.ids), budget)
        first.truncate(keep_a)
        second.truncate(keep_b)
        encoding = backend.post_process(first, second, add_special_tokens=True)
        return encoding.ids, encoding.type_ids
    separator = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    if separator is None:
        raise ConfigError("sentence pairs need a separator: this tokenizer has neither a sep nor an eos "
                          "token (add one with tokenizer.set_special_token)")
    budget = max_length - specials - 1
    _check_budget(budget, max_length, "a sentence pair")
    keep_a, keep_b = pair_lengths(len(first.ids), len(second.ids), budget)
    first.truncate(keep_a)
    second.truncate(keep_b)
    a = backend.post_process(first, None, add_special_tokens=True).ids
    ids = a + [separator] + second.ids
    return ids, [0] * (len(a) + 1) + [1] * len(second.ids)


def _check_budget(budget: int, max_length: int, what: str) -> None:
    if budget < 1:
        raise ConfigError(f"task.max_length={max_length} leaves no room for {what} after the special tokens")


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id to pad with: the pad token, else eos (GPT-2 has none; the attention mask hides it), else 0."""
    for token_id in (tokenizer.pad_id, tokenizer.eos_id):
        if token_id is not None:
            return token_id
    return 0


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class ClassificationTask:
    """One class per text (or sentence pair): cross-entropy on a sequence classifier; accuracy, macro-F1."""

    name: ClassVar[str] = "classification"
    model_task: ClassVar[str] = "sequence-classification"
    families: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
    metric: ClassVar[str] = "accuracy"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.labels: LabelMap | None = None

    def columns(self) -> tuple[str, ...]:
        """The columns every row must have (for `read_examples(..., required=...)`)."""
        pair = (self.spec.text_pair,) if self.spec.text_pair else ()
        return (self.spec.text, *pair, self.spec.label)

    # ------------------------------------------------------------------------------ labels

    def fit(self, train: Sequence[Example]) -> None:
        """The label set of the training rows, sorted (ints numerically, names alphabetically)."""
        values = [self._label_value(example) for example in train]
        for example in train:
            self._texts(example)
        distinct = set(map(str, values))
        if len(distinct) < 2:
            where = train[0].source if train else "the training split"
            raise DataError(f"{where}: the training split has {len(distinct)} distinct label(s) "
                            f"({', '.join(sorted(distinct)) or 'none'}) in column {self.spec.label!r}; "
                            f"a classifier needs at least 2")
        self.labels = LabelMap.fit(values)

    def use_labels(self, names: Sequence[str]) -> None:
        """Take the label set of an already fine-tuned model (its config's `labels`) instead of `fit`."""
        self.labels = LabelMap([_int_like(name) for name in names])

    def model_overrides(self) -> dict[str, Any]:
        """num_labels and the label names, saved with the model as its `id2label`."""
        labels = self._fitted()
        return {"num_labels": len(labels.names), "labels": labels.id2label}

    def _fitted(self) -> LabelMap:
        if self.labels is None:
            raise RuntimeError(f"{type(self).__name__}.fit(train) must be called before features and "
                               f"model_overrides")
        return self.labels

    def _label_value(self, example: Example) -> int | str:
        """A class name or an integer id; "3" in a CSV is the same class as 3 in JSON lines."""
        value = example.get(self.spec.label, (str, int, float))
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise DataError(f"{example.where(self.spec.label)}: a class label must be a name or an integer "
                            f"id, got {value!r} (use task.name=regression for numeric targets)")
        if isinstance(value, float):
            return int(value)
        return _int_like(value.strip()) if isinstance(value, str) else value

    def _target(self, example: Example) -> int | float:
        return self._fitted().id(self._label_value(example), example, self.spec.label)

    # ---------------------------------------------------------------------------- features

    def _texts(self, example: Example) -> tuple[str, str | None]:
        text = example.get(self.spec.text, str)
        pair = example.get(self.spec.text_pair, str) if self.spec.text_pair else None
        return text, pair

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """input_ids (at most `spec.max_length`), token_type_ids and the label id (or number) of each row."""
        self._fitted()
        texts = [self._texts(example) for example in examples]
        targets = [self._target(example) for example in examples]
        if not examples:
            return []

        def encode(strings: list[str]) -> list[Encoding]:  # one call: the Rust library works in parallel
            return tokenizer.backend.encode_batch(strings, add_special_tokens=False)

        firsts = encode([text for text, _ in texts])
        seconds = encode([pair for _, pair in texts]) if self.spec.text_pair else [None] * len(texts)
        out = []
        for first, second, target in zip(firsts, seconds, targets):
            ids, types = join_encodings(tokenizer, first, second, self.spec.max_length)
            out.append({"input_ids": ids, "token_type_ids": types, "label": target})
        return out

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """Right-padded input_ids (B, T), attention_mask, token_type_ids, and labels (B,)."""
        ids = [f["input_ids"] for f in features]
        return {"input_ids": pad_sequences(ids, pad_id),
                "attention_mask": pad_sequences([[1] * len(r) for r in ids], 0),
                "token_type_ids": pad_sequences([f["token_type_ids"] for f in features], 0),
                "labels": self._label_tensor([f["label"] for f in features])}

    def _label_tensor(self, labels: list) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.long)

    # ------------------------------------------------------------------------ loss, metrics

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The model's (B, num_labels) outputs on a batch."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch.get("token_type_ids"))

    def _loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over the batch's rows, and the number of rows."""
        labels = batch["labels"]
        return self._loss_of(self.logits(model, batch), labels), labels.numel()

    @torch.no_grad()
    def predict(self, model: nn.Module, features: Sequence[Feature], pad_id: int,
                batch_size: int) -> torch.Tensor:
        """The model's outputs on every feature, in order: (N, num_labels) float32 on the CPU (eval mode)."""
        was_training = model.training
        model.eval()
        device = model_device(model)
        try:
            outputs = []
            for start in range(0, len(features), batch_size):
                batch = self.collate(features[start:start + batch_size], pad_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                outputs.append(self.logits(model, batch).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(outputs) if outputs else torch.empty(0, len(self._fitted().names))

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """Accuracy, macro-F1 (and with two classes the F1 of class 1) of the argmax, and the mean loss."""
        logits = self.predict(model, features, pad_id_of(tokenizer), batch_size)
        gold = self._label_tensor([f["label"] for f in features])
        out = classification_metrics(gold.tolist(), logits.argmax(-1).tolist(), len(self._fitted().names))
        out["loss"] = float(self._loss_of(logits, gold)) if len(features) else math.nan
        return out


class RegressionTask(ClassificationTask):
    """One number per text (or sentence pair), e.g. a similarity or a rating: MSE; Pearson, Spearman."""

    name: ClassVar[str] = "regression"
    metric: ClassVar[str] = "pearson"

    def fit(self, train: Sequence[Example]) -> None:
        """Check that every training row has a text and a numeric target (there is no label set)."""
        for example in train:
            self._texts(example)
            self._target(example)
        self.labels = LabelMap(["score"])

    def model_overrides(self) -> dict[str, Any]:
        """One output."""
        return {"num_labels": 1, "labels": None}

    def _target(self, example: Example) -> float:
        value = example.get(self.spec.label, (int, float, str))
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise DataError(f"{example.where(self.spec.label)}: expected a finite number, got {value!r}")
        return number

    def _label_tensor(self, labels: list) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    def _loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """Pearson and Spearman correlation, MSE, and the mean loss (= MSE) of the predictions."""
        outputs = self.predict(model, features, pad_id_of(tokenizer), batch_size)
        gold = self._label_tensor([f["label"] for f in features])
        out = regression_metrics(gold.tolist(), outputs.squeeze(-1).tolist())
        out["loss"] = out["mse"]
        return out


def _int_like(value: Any) -> Any:
    """"7" -> 7 (so CSV and JSON ids agree and sort numerically); anything else as it is."""
    return int(value) if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value) else value
