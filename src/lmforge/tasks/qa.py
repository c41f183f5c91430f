"""Extractive question answering (SQuAD v1.1): the answer is a span of the context, found by start/end logits.

A row holds a question, a context and its answers, SQuAD-style (`{"text": [...], "answer_start": [...]}`,
character offsets into the context). A context longer than `max_length` tokens is cut into overlapping
windows, as transformers' `prepare_train_features` / `prepare_validation_features` do (Devlin et al.
2019, sec. 4.2): each window is the question, then `max_length` tokens' worth of context, starting
`stride` tokens before the previous window ended; only the context is ever truncated. A window learns the
first answer's start and end tokens, or (0, 0) (the CLS position: "not here") when the answer is not
wholly inside it. At evaluation every window of an example proposes its `n_best` best starts and ends;
the best valid span over all of them (inside the context, end >= start, at most `max_answer_tokens`
long, scored start + end logit) is the prediction, cut from the context by the tokens' character
offsets, and scored by SQuAD's exact match and F1 (`lmforge.evaluate.qa.squad_metrics`).

SQuAD v2's unanswerable questions (empty answers) are not supported: every row needs an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.errors import DataError
from lmforge.evaluate.qa import squad_metrics
from lmforge.objectives import pad_batch
from lmforge.tasks.base import Batch, Example, Feature, TaskSpec

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

Offsets = list[tuple[int, int] | None]


class QuestionAnsweringTask:
    """SQuAD-style extractive QA on a span head (`QuestionAnswering`): windows, start/end loss, n-best spans."""

    name: ClassVar[str] = "qa"
    model_task: ClassVar[str] = "question-answering"
    families: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
    metric: ClassVar[str] = "f1"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def fit(self, train: Sequence[Example]) -> None:
        """Check every training row (question, context, answers that align with the context)."""
        for example in train:
            self.row(example)

    def model_overrides(self) -> dict[str, Any]:
        """The span head needs no labels: {}."""
        return {}

    def columns(self) -> tuple[str, ...]:
        """The columns every row must have (for `read_examples(..., required=...)`)."""
        return self.spec.question, self.spec.context, self.spec.answers

    def row(self, example: Example) -> tuple[str, str, list[tuple[str, int]]]:
        """(question, context, [(answer text, start char), ...]) of a row, checked; a DataError names what is wrong."""
        spec = self.spec
        question = example.get(spec.question, str)
        context = example.get(spec.context, str)
        answers = example.get(spec.answers, dict)
        texts, starts = answers.get("text"), answers.get("answer_start")
        where = example.where(spec.answers)
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts:
            raise DataError(f"{where}: expected {{'text': [...], 'answer_start': [...]}}, two lists of the same "
                            f"nonzero length, got {answers!r}")
        if not question.strip() or not context.strip():
            raise DataError(f"{example.where(spec.question if not question.strip() else spec.context)}: empty")
        pairs = []
        for i, (text, start) in enumerate(zip(texts, starts)):
            if not isinstance(text, str) or not text.strip() or isinstance(start, bool) or not isinstance(start, int):
                raise DataError(f"{where}: answer {i} must be a nonempty text and an integer answer_start, "
                                f"got {text!r} at {start!r}")
            found = context[start:start + len(text)]
            if start < 0 or found != text:
                raise DataError(f"{where}: answer {i} {text!r} is not at answer_start {start} of the context "
                                f"(there: {found!r}; the text occurs at {context.find(text)})")
            pairs.append((text, start))
        return question, context, pairs

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """The windows of every example, each with `example_index`, `offsets` and the first answer's
        `start_positions`/`end_positions` (every split, so a validation loss can be computed too)."""
        out = []
        type_ids = "token_type_ids" in tokenizer.model_input_names
        for index, example in enumerate(examples):
            question, context, answers = self.row(example)
            text, start_char = answers[0]
            for window in context_windows(tokenizer, question, context, self.spec.max_length, self.spec.stride,
                                          example):
                start, end = answer_tokens(window["offsets"], start_char, start_char + len(text))
                window.update(example_index=index, start_positions=start, end_positions=end)
                if not type_ids:
                    del window["token_type_ids"]
                out.append(window)
        return out

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """input_ids, attention_mask (and token_type_ids) right-padded; start/end positions (B,)."""
        input_ids, attention_mask = pad_batch([f["input_ids"] for f in features], pad_id)  # (B, T) each
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = pad_batch([f["token_type_ids"] for f in features], 0)[0]
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean of the start and end cross-entropies over the windows (BERT's SQuAD loss); (loss, windows)."""
        start_logits, end_logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss = (F.cross_entropy(start_logits.float(), batch["start_positions"])
                + F.cross_entropy(end_logits.float(), batch["end_positions"])) / 2
        return loss, batch["input_ids"].shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """SQuAD exact match and F1 (percent) of the n-best predictions over every window of each example."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        starts, ends = [], []
        try:
            for i in range(0, len(features), batch_size):
                chunk = features[i:i + batch_size]
                batch = {k: v.to(device) for k, v in self.collate(chunk, pad_id).items()}
                start_logits, end_logits = model(batch["input_ids"], batch["attention_mask"],
                                                 batch.get("token_type_ids"))  # (B, T) each
                for row, feature in enumerate(chunk):
                    n = len(feature["input_ids"])
                    starts.append(start_logits[row, :n].float().tolist())
                    ends.append(end_logits[row, :n].float().tolist())
        finally:
            model.train(was_training)
        rows = [self.row(example) for example in examples]
        predictions = best_answers([context for _, context, _ in rows], features, starts, ends,
                                   self.spec.n_best, self.spec.max_answer_tokens)
        return squad_metrics(predictions, [[text for text, _ in answers] for _, _, answers in rows])


def context_windows(tokenizer: Tokenizer, question: str, context: str, max_length: int, stride: int,
                    example: Example | None = None) -> list[Feature]:
    """The windows of (question, context): `input_ids`, `token_type_ids` and `offsets` (context character
    spans of the tokens, None for the question and special tokens), each at most `max_length` tokens.

    The pair is encoded once with the tokenizer's special tokens; every window keeps the tokens before and
    after the context (e.g. `[CLS] question [SEP]` and `[SEP]`) and a slice of the context's tokens. Windows
    start every `budget - stride` context tokens (budget: the context tokens that fit) until one reaches
    the end, as the `tokenizers` library's overflow does (`truncation="only_second"`,
    `return_overflowing_tokens=True`).
    """
    encoding = tokenizer.backend.encode(question, context)
    in_context = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
    where = f"{example.where()}: " if example is not None else ""
    if not in_context:
        raise DataError(f"{where}the context has no tokens")
    first, last = in_context[0], in_context[-1]
    around = list(range(first)), list(range(last + 1, len(encoding.ids)))  # question and specials, kept whole
    budget = max_length - len(around[0]) - len(around[1])
    if budget <= stride:
        raise DataError(f"{where}the question and special tokens take {max_length - budget} of max_length="
                        f"{max_length} tokens, leaving {budget} for the context: not more than stride={stride} "
                        f"(shorten the question, or raise max_length / lower stride)")
    n_context = last - first + 1
    windows, begin = [], 0
    while True:
        stop = min(begin + budget, n_context)
        positions = around[0] + list(range(first + begin, first + stop)) + around[1]
        windows.append({
            "input_ids": [encoding.ids[p] for p in positions],
            "token_type_ids": [encoding.type_ids[p] for p in positions],
            "offsets": [tuple(encoding.offsets[p]) if encoding.sequence_ids[p] == 1 else None for p in positions],
        })
        if stop == n_context:
            return windows
        begin += budget - stride


def answer_tokens(offsets: Offsets, start_char: int, end_char: int) -> tuple[int, int]:
    """The (start, end) token positions of the characters [start_char, end_char) in a window, or (0, 0) when
    the answer is not wholly inside the window's context."""
    context = [p for p, span in enumerate(offsets) if span is not None]
    if not (offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char):
        return 0, 0
    start = max(p for p in context if offsets[p][0] <= start_char)  # the token holding the first character
    end = min(p for p in context if offsets[p][1] >= end_char)  # the token holding the last character
    return start, end


def best_span(start_logits: Sequence[float], end_logits: Sequence[float], offsets: Offsets, n_best: int,
              max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(score, start, end) of the best valid span of one window among its `n_best` starts x `n_best` ends;
    None when no pair is valid (outside the context, end < start, longer than `max_answer_tokens`)."""
    def top(logits):
        return sorted(range(len(logits)), key=lambda i: -logits[i])[:n_best]

    best = None
    for s in top(start_logits):
        for e in top(end_logits):
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                continue
            score = start_logits[s] + end_logits[e]
            if best is None or score > best[0]:
                best = (score, s, e)
    return best


def best_answers(contexts: Sequence[str], features: Sequence[Feature], start_logits: Sequence[Sequence[float]],
                 end_logits: Sequence[Sequence[float]], n_best: int, max_answer_tokens: int) -> list[str]:
    """The predicted answer text of each context: the best `best_span` over all its windows ("" if none)."""
    best: dict[int, tuple[float, str]] = {}
    for feature, starts, ends in zip(features, start_logits, end_logits):
        offsets, index = feature["offsets"], feature["example_index"]
        span = best_span(starts, ends, offsets, n_best, max_answer_tokens)
        if span is not None and (index not in best or span[0] > best[index][0]):
            score, s, e = span
            best[index] = (score, contexts[index][offsets[s][0]:offsets[e][1]])
    return [best[i][1] if i in best else "" for i in range(len(contexts))]
