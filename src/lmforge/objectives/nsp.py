"""Next-sentence prediction (Devlin et al. 2019, "BERT", sec. 3.1 "Task #2: Next Sentence Prediction").

For a pair (A, B), 50 % of the time B is the sentence that follows A (IsNext) and 50 % a random sentence
from another document (NotNext); a binary classifier on the [CLS] output predicts which. The label
convention is Hugging Face's `BertForPreTraining`: 0 = IsNext, 1 = NotNext.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import Rng, as_rng, pad_batch, pad_sequences, randrange, uniform, upcast

IS_NEXT = 0
NOT_NEXT = 1


class NspExample(NamedTuple):
    """One pair: [CLS] A [SEP] B [SEP], segment ids 0 over "[CLS] A [SEP]" and 1 over "B [SEP]"."""

    input_ids: list[int]
    token_type_ids: list[int]
    label: int  # IS_NEXT (0) or NOT_NEXT (1)


def truncate_pair(a: Sequence[int], b: Sequence[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer side (B on a tie) until len(a) + len(b) <= max_tokens."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def _random_other_sentence(documents: Sequence[Sequence[Sequence[int]]], doc: int, rng: Rng) -> list[int]:
    """A uniformly random sentence from a uniformly random document other than `doc`."""
    other = randrange(rng, len(documents) - 1)
    if other >= doc:  # skip the current document
        other += 1
    sentences = documents[other]
    return list(sentences[randrange(rng, len(sentences))])


def make_nsp_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    rng: Rng | int | None,
    max_len: int,
    cls_id: int,
    sep_id: int,
    *,
    not_next_probability: float = 0.5,
) -> list[NspExample]:
    """Sentence pairs for NSP (Devlin et al. 2019, sec. 3.1): one per consecutive pair (A, next) of each document.

    `documents` are lists of sentences, each a list of token ids (no specials). B is the true next
    sentence (label 0, IsNext) with probability 1 - `not_next_probability`, else a random sentence of
    another document (label 1, NotNext). The longer side is truncated from its end so that
    [CLS] A [SEP] B [SEP] fits in `max_len`. Pairs come out in document order; shuffle them for training.
    `rng` is a `random.Random`, NumPy or torch generator, or an int seed.
    """
    if max_len < 5:
        raise ValueError(f"max_len must be >= 5 ([CLS], [SEP] x 2 and one token per side), got {max_len}")
    if not 0.0 <= not_next_probability <= 1.0:
        raise ValueError(f"not_next_probability must be in [0, 1], got {not_next_probability}")
    if len(documents) < 2 and not_next_probability > 0:
        raise ValueError("NotNext pairs need at least 2 documents")
    for d, doc in enumerate(documents):
        if len(doc) == 0 or any(len(s) == 0 for s in doc):
            raise ValueError(f"document {d} is empty or holds an empty sentence")
    rng = as_rng(rng)
    pairs: list[NspExample] = []
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            if uniform(rng) < not_next_probability:
                b, label = _random_other_sentence(documents, d, rng), NOT_NEXT
            else:
                b, label = list(doc[i + 1]), IS_NEXT
            a, b = truncate_pair(doc[i], b, max_len - 3)
            input_ids = [cls_id, *a, sep_id, *b, sep_id]
            token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            pairs.append(NspExample(input_ids, token_type_ids, label))
    return pairs


def collate_nsp(examples: Sequence[NspExample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad NSP examples into tensors: input_ids, token_type_ids, attention_mask (B, T), next_sentence_label (B,)."""
    input_ids, attention_mask = pad_batch([e.input_ids for e in examples], pad_id)  # (B, T) each
    return {
        "input_ids": input_ids,
        "token_type_ids": pad_sequences([e.token_type_ids for e in examples], 0),
        "attention_mask": attention_mask,
        "next_sentence_label": torch.tensor([e.label for e in examples], dtype=torch.long),
    }


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the (B, 2) [CLS] logits against labels (B,), 0 = IsNext, 1 = NotNext (BERT sec. 3.1)."""
    if logits.dim() != 2 or logits.shape[-1] != 2:
        raise ValueError(f"NSP logits must have shape (B, 2), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have shape ({logits.shape[0]},)")
    return F.cross_entropy(upcast(logits), labels.long())
