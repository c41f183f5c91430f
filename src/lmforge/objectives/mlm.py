"""Masked language modelling (Devlin et al. 2019, "BERT", sec. 3.1 "Task #1: Masked LM").

BERT selects 15 % of the tokens; a selected token becomes [MASK] 80 % of the time, a random token 10 %,
and stays unchanged 10 %; the loss is the cross-entropy at the selected positions only. Whole-word masking
(BERT's 2019 release; Cui et al. 2019, "Pre-Training with Whole Word Masking for Chinese BERT") selects
words instead of tokens and then masks every piece of a selected word.

Words for whole-word masking are given as `word_ids`: one word index per token, `None`/negative for tokens
outside any word (specials, padding). Helpers build them:

- `word_ids_from_tokens`: from the token strings, WordPiece ("##" marks a continuation piece), byte-level
  BPE ("Ġ" marks a word start) or SentencePiece ("▁" marks a word start).
- `word_ids_from_offsets` + `word_spans_from_words`: from token character offsets and a word segmentation
  of the text. For Chinese, which has no spaces: by characters, `words = list(text)` (each character is a
  word; a BERT-style tokenizer already splits CJK characters, so `word_ids_from_tokens` gives the same);
  by words, `words` from a word segmenter (e.g. `jieba.lcut(text)` or LTP, as Cui et al. 2019 did).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Literal

import torch

from ._common import Reduction, token_cross_entropy

WORD_START_MARKERS = {"byte_level": "Ġ", "sentencepiece": "▁"}


def _check_probabilities(mlm_probability: float, mask_ratio: float, random_ratio: float) -> None:
    """Raise `ValueError` unless 0 < p <= 1 and the two ratios lie in [0, 1] with a sum <= 1."""
    if not 0.0 < mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
    if not (0.0 <= mask_ratio <= 1.0 and 0.0 <= random_ratio <= 1.0):
        raise ValueError(f"mask_ratio and random_ratio must be in [0, 1], got {mask_ratio}, {random_ratio}")
    if mask_ratio + random_ratio > 1.0 + 1e-9:
        raise ValueError(
            f"mask_ratio + random_ratio must be <= 1 (the rest stays unchanged), got {mask_ratio + random_ratio}"
        )


def _special_id_tensor(special_ids: Iterable[int] | torch.Tensor | None) -> torch.Tensor:
    """Special ids as a 1-D long CPU tensor (empty for None)."""
    if special_ids is None:
        return torch.empty(0, dtype=torch.long)
    if isinstance(special_ids, torch.Tensor):
        return special_ids.reshape(-1).long().cpu()
    return torch.tensor(sorted({int(i) for i in special_ids}), dtype=torch.long)


def _as_word_id_tensor(
    word_ids: torch.Tensor | Sequence[Sequence[int | None]], shape: torch.Size
) -> torch.Tensor:
    """Word ids as a long tensor of the ids' shape, None -> -1 (a list may be one row for 1-D ids)."""
    if isinstance(word_ids, torch.Tensor):
        out = word_ids.long()
    else:
        rows = [word_ids] if len(shape) == 1 else word_ids
        out = torch.tensor([[-1 if w is None else int(w) for w in row] for row in rows], dtype=torch.long)
        out = out[0] if len(shape) == 1 else out
    if out.shape != shape:
        raise ValueError(f"word_ids shape {tuple(out.shape)} must match input_ids {tuple(shape)}")
    return out


def _rand(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws, made on the generator's device and moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _select_whole_words(
    word_ids: torch.Tensor, probability: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Select each (row, word) pair with `probability`; every token of a selected word is selected."""
    flat = word_ids.reshape(-1, word_ids.shape[-1])  # (B, T)
    in_word = flat >= 0
    if not bool(in_word.any()):
        return torch.zeros_like(word_ids, dtype=torch.bool)
    rows = torch.arange(flat.shape[0], device=flat.device).unsqueeze(1).expand_as(flat)
    key = rows * (int(flat.max()) + 1) + flat.clamp(min=0)  # one key per (row, word)
    _, dense = torch.unique(key, return_inverse=True)  # (B, T) word numbers 0..W-1, in sorted order
    word_draw = _rand(torch.Size([int(dense.max()) + 1]), generator, flat.device) < probability  # (W,)
    return (word_draw[dense] & in_word).reshape(word_ids.shape)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int | None,
    vocab_size: int,
    special_ids: Iterable[int] | torch.Tensor | None = None,
    special_tokens_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
    generator: torch.Generator | None = None,
    word_ids: torch.Tensor | Sequence[Sequence[int | None]] | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019, sec. 3.1): returns (masked_input_ids, labels), labels = -100 off-target.

    Each non-special token is selected with `mlm_probability` (or, with `word_ids`, each word is, and all
    its pieces follow). A selected token becomes `mask_token_id` with probability `mask_ratio`, a random
    id from the non-special vocabulary with `random_ratio`, and is kept otherwise (the 80/10/10 split is
    drawn per token, as in BERT's whole-word release). Specials are the ids in `special_ids` (include the
    pad id) and/or the positions where `special_tokens_mask` (same shape as the ids) is nonzero; at least
    one of the two is required so that padding is never selected. `labels` hold the original id at
    selected positions and `ignore_index` elsewhere.
    """
    _check_probabilities(mlm_probability, mask_ratio, random_ratio)
    if mask_token_id is None:
        raise ValueError("mask_token_id is required: the tokenizer has no mask token")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
    if special_ids is None and special_tokens_mask is None:
        raise ValueError("pass special_ids and/or special_tokens_mask (the pad id must never be selected)")
    device = input_ids.device
    specials = _special_id_tensor(special_ids)

    maskable = ~torch.isin(input_ids, specials.to(device))  # (B, T)
    if special_tokens_mask is not None:
        if special_tokens_mask.shape != input_ids.shape:
            raise ValueError(
                f"special_tokens_mask {tuple(special_tokens_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        maskable &= ~special_tokens_mask.bool().to(device)

    if word_ids is None:
        selected = _rand(input_ids.shape, generator, device) < mlm_probability
    else:
        words = _as_word_id_tensor(word_ids, input_ids.shape).to(device)
        selected = _select_whole_words(words, mlm_probability, generator)
    selected &= maskable
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, ignore_index))

    # One draw per token decides [MASK] / random / keep among the selected ones.
    action = _rand(input_ids.shape, generator, device)
    to_mask = selected & (action < mask_ratio)
    to_random = selected & (action >= mask_ratio) & (action < mask_ratio + random_ratio)

    excluded = torch.cat([specials, torch.tensor([mask_token_id])])
    allowed = torch.arange(vocab_size)[~torch.isin(torch.arange(vocab_size), excluded)]  # non-special ids
    if allowed.numel() == 0:
        raise ValueError("no non-special ids left to draw random replacements from")
    where = generator.device if generator is not None else device
    pick = torch.randint(allowed.numel(), input_ids.shape, generator=generator, device=where)
    random_ids = allowed.to(where)[pick].to(device=device, dtype=input_ids.dtype)

    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def masked_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Cross-entropy at the selected positions only (Devlin et al. 2019, sec. 3.1); logits (B, T, V), no shift.

    "mean" averages over selected tokens (0 when none), "sum" adds them, "none" gives (B, T) losses.
    Logits computed at the selected positions only, (N, V) with labels (N,) (see `predicted_positions`),
    give the same loss.
    """
    return token_cross_entropy(logits, labels, ignore_index, reduction)


def predicted_positions(labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets): indices (N,) into the flattened labels of the N predicted tokens, and their labels.

    `MaskedLM(..., positions=positions)` computes the head's logits there only; `masked_lm_loss` of those
    (N, V) logits against `targets` equals the loss of the full (B, T, V) logits against `labels`.
    """
    flat = labels.reshape(-1)
    positions = (flat != ignore_index).nonzero().squeeze(1)  # (N,)
    return positions, flat[positions]


def _starts_word(token: str, style: str) -> bool:
    """Whether a token string begins a word: WordPiece marks continuations ("##"), the others word starts."""
    if style == "wordpiece":
        return not token.startswith("##")
    return token.startswith(WORD_START_MARKERS[style])


def vocabulary_style(tokens: Sequence[str]) -> Literal["wordpiece", "byte_level", "sentencepiece"]:
    """The word-marker convention of a vocabulary: "##" pieces (WordPiece), "Ġ" (byte-level BPE) or "▁"."""
    if any(t.startswith("##") for t in tokens):
        return "wordpiece"
    for style, marker in WORD_START_MARKERS.items():
        if any(t.startswith(marker) for t in tokens):
            return style  # type: ignore[return-value]
    raise ValueError("cannot tell word starts in this vocabulary (no '##', 'Ġ' or '▁' markers)")


def word_start_table(vocabulary: Sequence[str], style: str | None = None) -> torch.Tensor:
    """(V,) bool, one entry per id of `vocabulary` (token strings in id order): does the token begin a word?

    `style` as in `word_ids_from_tokens`; None reads it from the vocabulary (`vocabulary_style`).
    """
    style = style or vocabulary_style(vocabulary)
    return torch.tensor([_starts_word(t, style) for t in vocabulary], dtype=torch.bool)


def word_ids_from_starts(input_ids: torch.Tensor, starts: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """(B, T) word index per token from a `word_start_table`, -1 at `special` (B, T) positions.

    The first token after a special token always starts a word; indices count from 0 in each row.
    """
    begins = starts[input_ids]
    after_special = torch.ones_like(special)
    after_special[:, 1:] = special[:, :-1]
    begins = (begins | after_special) & ~special
    ids = begins.long().cumsum(1) - 1
    return ids.masked_fill(special, -1)


def word_ids_from_tokens(
    tokens: Sequence[str],
    *,
    style: Literal["wordpiece", "byte_level", "sentencepiece"] = "wordpiece",
    special_tokens: Iterable[str] = (),
) -> list[int | None]:
    """Word index of each token string (None for specials), for whole-word masking.

    "wordpiece": a token starting with "##" continues the previous word (BERT; CJK characters are split
    into single tokens, so each Chinese character is its own word). "byte_level": a token starting with
    "Ġ" starts a word (GPT-2, RoBERTa; punctuation without a space joins the word before it).
    "sentencepiece": a token starting with "▁" starts a word (T5, ALBERT, LLaMA). The first token after a
    special token always starts a word. (`word_start_table` + `word_ids_from_starts` are the same rule
    on id tensors.)
    """
    if style not in ("wordpiece", "byte_level", "sentencepiece"):
        raise ValueError(f"style must be 'wordpiece', 'byte_level' or 'sentencepiece', got {style!r}")
    specials = set(special_tokens)
    out: list[int | None] = []
    word, after_special = -1, True
    for token in tokens:
        if token in specials:
            out.append(None)
            after_special = True
            continue
        if _starts_word(token, style) or after_special:
            word += 1
        out.append(word)
        after_special = False
    return out


def word_spans_from_words(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans (start, end) of `words` found in order in `text`; whitespace-only words are skipped.

    Chinese by characters: `words = list(text)`; by words: the output of a segmenter, e.g. `jieba.lcut(text)`.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for word in words:
        if not word.strip():
            continue
        start = text.find(word, pos)
        if start < 0:
            raise ValueError(f"word {word!r} not found in the text after character {pos}")
        spans.append((start, start + len(word)))
        pos = start + len(word)
    return spans


def word_ids_from_offsets(
    offsets: Sequence[tuple[int, int]], word_spans: Sequence[tuple[int, int]]
) -> list[int | None]:
    """Word index of each token from its (start, end) character offsets and sorted, disjoint word spans.

    A token belongs to the word span that contains its first character; tokens with an empty offset (the
    (0, 0) of special tokens) get None; a token outside every span is a word of its own. Word indices
    count up from 0 in order of appearance.
    """
    starts = [s for s, _ in word_spans]
    if any(b[0] < a[1] for a, b in zip(word_spans, word_spans[1:])):
        raise ValueError("word_spans must be sorted and must not overlap")
    numbering: dict[tuple[str, int], int] = {}
    out: list[int | None] = []
    for i, (start, end) in enumerate(offsets):
        if end <= start:
            out.append(None)
            continue
        k = bisect.bisect_right(starts, start) - 1
        key = ("span", k) if k >= 0 and start < word_spans[k][1] else ("token", i)
        out.append(numbering.setdefault(key, len(numbering)))
    return out
