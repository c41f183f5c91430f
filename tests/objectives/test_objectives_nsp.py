"""NSP: loss vs a hand computation; pair construction: 50 % IsNext, real neighbours, truncation, collation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmforge.objectives import IS_NEXT, NOT_NEXT, collate_nsp, make_nsp_pairs, nsp_loss, truncate_pair

CLS, SEP = 101, 102


def test_nsp_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [-1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])  # IsNext, NotNext, IsNext
    l0 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0)))
    l1 = -(1.5 - math.log(math.exp(0.5) + math.exp(1.5)))
    l2 = -(-1.0 - math.log(math.exp(-1.0) + math.exp(1.0)))
    assert nsp_loss(logits, labels).item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)


def _corpus(num_docs: int = 1000, seed: int = 0) -> list[list[list[int]]]:
    """Sentence j of document d is [key, key, ...] with key = 1000 + 10 * d + j: identifiable after pairing."""
    rng = random.Random(seed)
    return [
        [[1000 + 10 * d + j] * rng.randint(1, 6) for j in range(rng.randint(1, 9))] for d in range(num_docs)
    ]


def _split(input_ids: list[int]) -> tuple[list[int], list[int]]:
    assert input_ids[0] == CLS and input_ids[-1] == SEP
    sep = input_ids.index(SEP)
    return input_ids[1:sep], input_ids[sep + 1 : -1]


def test_half_are_next_and_next_pairs_are_consecutive():
    docs = _corpus()
    pairs = make_nsp_pairs(docs, np.random.default_rng(0), max_len=64, cls_id=CLS, sep_id=SEP)
    assert len(pairs) == sum(len(d) - 1 for d in docs)
    is_next = sum(p.label == IS_NEXT for p in pairs) / len(pairs)
    assert is_next == pytest.approx(0.5, abs=0.025)
    for input_ids, token_type_ids, label in pairs:
        a, b = _split(input_ids)
        doc_a, sent_a = divmod(a[0] - 1000, 10)
        doc_b, sent_b = divmod(b[0] - 1000, 10)
        assert a == docs[doc_a][sent_a] and b == docs[doc_b][sent_b]
        if label == IS_NEXT:
            assert (doc_b, sent_b) == (doc_a, sent_a + 1)
        else:
            assert label == NOT_NEXT and doc_b != doc_a
        assert token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_rng_kinds_and_determinism():
    docs = _corpus(50)
    for make in (
        lambda: random.Random(3),
        lambda: np.random.default_rng(3),
        lambda: torch.Generator().manual_seed(3),
    ):
        first = make_nsp_pairs(docs, make(), max_len=32, cls_id=CLS, sep_id=SEP)
        assert first == make_nsp_pairs(docs, make(), max_len=32, cls_id=CLS, sep_id=SEP)


def test_truncation_cuts_the_longer_side():
    assert truncate_pair([1] * 10, [2] * 3, 8) == ([1] * 5, [2] * 3)
    assert truncate_pair([1] * 4, [2] * 4, 6) == ([1] * 3, [2] * 3)
    docs = [[[5] * 40, [6] * 40], [[7] * 3]]
    (pair,) = make_nsp_pairs(docs, 0, max_len=16, cls_id=CLS, sep_id=SEP, not_next_probability=0.0)
    assert len(pair.input_ids) == 16 and pair.label == IS_NEXT
    assert _split(pair.input_ids) == ([5] * 7, [6] * 6)


def test_collate_pads_and_labels():
    pairs = make_nsp_pairs(_corpus(20), 1, max_len=32, cls_id=CLS, sep_id=SEP)
    batch = collate_nsp(pairs[:4], pad_id=0)
    width = max(len(p.input_ids) for p in pairs[:4])
    assert (
        batch["input_ids"].shape
        == batch["token_type_ids"].shape
        == batch["attention_mask"].shape
        == (4, width)
    )
    assert batch["attention_mask"].sum(1).tolist() == [len(p.input_ids) for p in pairs[:4]]
    assert batch["next_sentence_label"].tolist() == [p.label for p in pairs[:4]]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="2 documents"):
        make_nsp_pairs([[[1], [2]]], 0, max_len=16, cls_id=CLS, sep_id=SEP)
    with pytest.raises(ValueError, match="max_len"):
        make_nsp_pairs(_corpus(3), 0, max_len=4, cls_id=CLS, sep_id=SEP)
    with pytest.raises(ValueError, match="empty"):
        make_nsp_pairs([[[1], []], [[2]]], 0, max_len=16, cls_id=CLS, sep_id=SEP)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        nsp_loss(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
