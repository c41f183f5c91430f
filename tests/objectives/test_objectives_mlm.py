"""MLM: loss vs a hand computation, masking statistics, specials, whole-word masking, word-id helpers."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.objectives import (
    mask_tokens,
    masked_lm_loss,
    word_ids_from_offsets,
    word_ids_from_tokens,
    word_spans_from_words,
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = {PAD, CLS, SEP, MASK}
VOCAB = 1000


def test_masked_lm_loss_matches_hand_computation():
    # 3 tokens, vocabulary of 3; only positions 1 and 2 were selected (no shift in MLM).
    logits = torch.tensor([[[5.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 0, 2]])
    l1 = -(1.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(3.0)))
    l2 = -(1.0 - math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(1.0)))
    assert masked_lm_loss(logits, labels).item() == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert masked_lm_loss(logits, labels, reduction="sum").item() == pytest.approx(l1 + l2, abs=1e-6)


def _batch(rows: int = 64, length: int = 512, seed: int = 0) -> torch.Tensor:
    """Random ids with [CLS] ... [SEP] and right padding of varying length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (rows, length), generator=g)
    ids[:, 0] = CLS
    for r in range(rows):
        end = length - 1 - (r * 7) % 100
        ids[r, end] = SEP
        ids[r, end + 1 :] = PAD
    return ids


def test_masking_statistics():
    ids = _batch()
    masked, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        generator=torch.Generator().manual_seed(1),
    )
    selected = labels != -100
    special = torch.isin(ids, torch.tensor(sorted(SPECIALS)))
    assert not selected[special].any()  # specials and padding never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # everything else untouched

    rate = selected.sum().item() / (~special).sum().item()
    assert rate == pytest.approx(0.15, abs=0.005)
    n = selected.sum().item()
    as_mask = (masked[selected] == MASK).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    randomised = 1 - as_mask - kept
    assert as_mask == pytest.approx(0.8, abs=0.015)
    assert randomised == pytest.approx(0.1, abs=0.015)
    assert kept == pytest.approx(0.1, abs=0.015)
    replaced = masked[selected & (masked != MASK) & (masked != ids)]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIALS))).any()  # random ids are never special


def test_custom_ratios_and_determinism():
    ids = _batch(16, 256)
    kwargs = dict(
        mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, mask_ratio=0.0, random_ratio=1.0
    )
    a = mask_tokens(ids, **kwargs, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, **kwargs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0] == MASK).any()  # mask_ratio 0: no [MASK] at all, and [MASK] is never a random pick


def test_special_tokens_mask_is_respected():
    ids = torch.randint(4, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    stm = torch.zeros_like(ids)
    stm[:, ::2] = 1  # pretend every even position is special
    _, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_tokens_mask=stm,
        mlm_probability=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    assert not (labels[:, ::2] != -100).any()
    assert (labels[:, 1::2] != -100).any()


def test_whole_word_masking_selects_all_pieces_together():
    g = torch.Generator().manual_seed(5)
    rows, length = 64, 512
    ids = torch.randint(4, VOCAB, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    word_ids = torch.full((rows, length), -1)
    for r in range(rows):  # words of 1 to 4 pieces
        pos, word = 1, 0
        while pos < length - 1:
            size = min(1 + (r + word) % 4, length - 1 - pos)
            word_ids[r, pos : pos + size] = word
            pos, word = pos + size, word + 1
    _, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        word_ids=word_ids,
        generator=torch.Generator().manual_seed(2),
    )
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, -1].any()
    in_word = word_ids >= 0
    key = (torch.arange(rows).unsqueeze(1) * length + word_ids)[in_word]  # one key per (row, word)
    pieces = torch.bincount(key)
    chosen = torch.bincount(key, weights=selected[in_word].double()).long()
    present = pieces > 0
    assert ((chosen[present] == 0) | (chosen[present] == pieces[present])).all()  # all pieces or none
    words_total = int(present.sum())
    words_selected = int((chosen[present] > 0).sum())
    assert words_selected / words_total == pytest.approx(0.15, abs=0.01)
    assert selected.sum().item() / (rows * (length - 2)) == pytest.approx(0.15, abs=0.01)


def test_whole_word_masking_accepts_lists_with_none():
    ids = torch.tensor([[CLS, 10, 11, 12, 13, SEP]])
    word_ids = [[None, 0, 0, 0, 1, None]]
    _, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        word_ids=word_ids,
        mlm_probability=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert labels.tolist() == [[-100, 10, 11, 12, 13, -100]]


def test_bad_arguments_raise():
    ids = _batch(2, 16)
    with pytest.raises(ValueError, match="mask token"):
        mask_tokens(ids, mask_token_id=None, vocab_size=VOCAB, special_ids=SPECIALS)
    with pytest.raises(ValueError, match="<= 1"):
        mask_tokens(
            ids, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, mask_ratio=0.8, random_ratio=0.3
        )
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, mlm_probability=0.0)
    with pytest.raises(ValueError, match="special_ids"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="word_ids shape"):
        mask_tokens(
            ids, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, word_ids=torch.zeros(2, 3)
        )


def test_word_ids_from_wordpiece_tokens():
    tokens = ["[CLS]", "un", "##believ", "##ably", ",", "the", "cat", "[SEP]"]
    assert word_ids_from_tokens(tokens, special_tokens={"[CLS]", "[SEP]"}) == [None, 0, 0, 0, 1, 2, 3, None]
    # BERT splits CJK characters: each Chinese character is its own word.
    assert word_ids_from_tokens(["[CLS]", "北", "京", "[SEP]"], special_tokens={"[CLS]", "[SEP]"}) == [
        None,
        0,
        1,
        None,
    ]


def test_word_ids_from_byte_level_and_sentencepiece_tokens():
    tokens = ["<s>", "Un", "believ", "ably", "Ġthe", "Ġcat", ".", "</s>"]
    assert word_ids_from_tokens(tokens, style="byte_level", special_tokens={"<s>", "</s>"}) == [
        None,
        0,
        0,
        0,
        1,
        2,
        2,
        None,
    ]
    assert word_ids_from_tokens(["▁Un", "believ", "▁the"], style="sentencepiece") == [0, 0, 1]
    with pytest.raises(ValueError, match="style"):
        word_ids_from_tokens(["a"], style="bpe")


def test_word_ids_agree_with_a_wordpiece_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[UNK]", "un", "##believ", "##ably", "the", "cat", ",", "北", "京"])}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    enc = tok.encode("Unbelievably, the cat 北京")
    assert word_ids_from_tokens(enc.tokens) == enc.word_ids


def test_chinese_word_ids_by_characters_and_by_words():
    text = "我们明天去公园"
    offsets = [(0, 0)] + [(i, i + 1) for i in range(len(text))] + [(0, 0)]  # [CLS] one token per char [SEP]
    by_chars = word_ids_from_offsets(offsets, word_spans_from_words(text, list(text)))
    assert by_chars == [None, 0, 1, 2, 3, 4, 5, 6, None]
    segmented = ["我们", "明天", "去", "公园"]  # what a word segmenter (jieba, LTP) returns
    by_words = word_ids_from_offsets(offsets, word_spans_from_words(text, segmented))
    assert by_words == [None, 0, 0, 1, 1, 2, 3, 3, None]

    ids = torch.tensor([[CLS, 10, 11, 12, 13, 14, 15, 16, SEP]])
    _, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        word_ids=[by_words],
        mlm_probability=0.5,
        generator=torch.Generator().manual_seed(4),
    )
    sel = (labels[0] != -100).tolist()
    assert sel[1] == sel[2] and sel[3] == sel[4] and sel[6] == sel[7]


def test_word_spans_and_offsets_edge_cases():
    assert word_spans_from_words("a  bc", ["a", " ", "bc"]) == [(0, 1), (3, 5)]
    with pytest.raises(ValueError, match="not found"):
        word_spans_from_words("abc", ["x"])
    # A token outside every span is a word of its own.
    assert word_ids_from_offsets([(0, 2), (2, 3), (3, 4)], [(0, 3)]) == [0, 0, 1]
    with pytest.raises(ValueError, match="overlap"):
        word_ids_from_offsets([(0, 1)], [(0, 3), (2, 4)])
