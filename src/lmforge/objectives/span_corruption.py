"""T5 span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", sec. 3.1.4 and 3.3.4).

About 15 % of the tokens, in spans of mean length 3, are dropped from the encoder input; each span is
replaced by one sentinel (<extra_id_0>, <extra_id_1>, ...). The decoder target lists each sentinel
followed by the tokens it hides, then EOS:

    original  "Thank you for inviting me to your party last week ."
    input     "Thank you <X> me to your party <Y> week . </s>"
    target    "<X> for inviting <Y> last </s>"

The segmentation follows T5's `random_spans_noise_mask`: round(length * density) noise tokens, in
round(noise / mean_span_length) spans; noise and non-noise lengths are random segmentations, and the
sequence alternates non-noise, noise, ... starting with non-noise (so it ends with a noise span).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import Reduction, Rng, as_rng, pad_batch, pad_sequences, permutation, token_cross_entropy


def _check_density(noise_density: float, mean_span_length: float) -> None:
    """Raise `ValueError` unless 0 < noise_density < 1 and mean_span_length >= 1."""
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span_length < 1.0:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")


def noise_span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(number of noise tokens, number of noise spans) for a sequence of `length`, as in T5.

    noise = round(length * density) clipped to [1, length - 1]; spans = round(noise / mean_span_length),
    at least 1 and (unlike T5, which never meets the case at its settings) at most the number of noise
    and of non-noise tokens. Lengths below 2 are counted as 2, as T5 does.
    """
    _check_density(noise_density, mean_span_length)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    length = max(length, 2)
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def span_corruption_lengths(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """(encoder input length, decoder target length) that `span_corrupt` gives for `length` tokens, EOS included."""
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_span_length)
    if length < 2:  # T5 pads to 2 and cuts the mask back: the single token is never noise
        return length + 1, 1
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length_for_input_length(
    inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """The longest raw length whose corrupted input (EOS included) fits `inputs_length`, and its target length.

    Use it to cut a token stream so that encoder inputs come out exactly full, as T5's `random_spans_helper`.
    """
    if inputs_length < 2:
        raise ValueError(f"inputs_length must be >= 2 (one token and EOS), got {inputs_length}")
    length = 1
    while span_corruption_lengths(length + 1, noise_density, mean_span_length)[0] <= inputs_length:
        length += 1
    return length, span_corruption_lengths(length, noise_density, mean_span_length)[1]


def _random_segmentation(num_items: int, num_segments: int, rng: Rng) -> list[int]:
    """Split `num_items` into `num_segments` positive lengths, uniformly over all such splits (T5)."""
    cuts = sorted(i + 1 for i in permutation(rng, num_items - 1)[: num_segments - 1])  # distinct, in 1..n-1
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def random_spans_noise_mask(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0, rng: Rng | int | None = None
) -> list[bool]:
    """T5's `random_spans_noise_mask` (Raffel et al. 2020): True at the tokens to corrupt, in random spans."""
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_span_length)
    rng = as_rng(rng)
    padded = max(length, 2)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(padded - num_noise, num_spans, rng)
    mask: list[bool] = []
    for keep, noise in zip(keep_lengths, noise_lengths):
        mask += [False] * keep + [True] * noise
    return mask[:length]


def span_corrupt(
    ids: Sequence[int] | torch.Tensor,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int],
    eos_id: int,
    rng: Rng | int | None = None,
) -> tuple[list[int], list[int]] | tuple[torch.Tensor, torch.Tensor]:
    """(encoder_input_ids, decoder_target_ids) by T5 span corruption (Raffel et al. 2020, sec. 3.1.4).

    Noise span k is replaced by `sentinel_ids[k]` in the input (pass the ids of <extra_id_0>, <extra_id_1>,
    ... in that order: T5 numbers them downwards from the top of the vocabulary); the target is
    sentinel_k + span tokens for every span, then `eos_id`; the input also ends with `eos_id`. `ids` must
    not end with EOS already. Lists in give lists out; a 1-D tensor gives 1-D long tensors.
    """
    as_tensor = isinstance(ids, torch.Tensor)
    if as_tensor and ids.dim() != 1:
        raise ValueError(f"span_corrupt takes one sequence (1-D), got shape {tuple(ids.shape)}")
    tokens = ids.tolist() if as_tensor else list(ids)
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    num_spans = sum(m and (i == 0 or not mask[i - 1]) for i, m in enumerate(mask))
    if num_spans > len(sentinel_ids):
        raise ValueError(f"{num_spans} noise spans but only {len(sentinel_ids)} sentinel ids")
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (token, noisy) in enumerate(zip(tokens, mask)):
        if noisy:
            if i == 0 or not mask[i - 1]:  # a new noise span: one sentinel on each side
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(token)
        else:
            inputs.append(token)
    inputs.append(eos_id)
    targets.append(eos_id)
    if as_tensor:
        return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)
    return inputs, targets


def shift_right(
    target_ids: torch.Tensor, decoder_start_id: int, pad_id: int, ignore_index: int = -100
) -> torch.Tensor:
    """Decoder inputs (B, T): `decoder_start_id` then the targets without their last token; ignore_index -> pad."""
    shifted = torch.empty_like(target_ids)
    shifted[..., 0] = decoder_start_id
    shifted[..., 1:] = target_ids[..., :-1]
    return shifted.masked_fill(shifted == ignore_index, pad_id)


def collate_seq2seq(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    decoder_start_id: int,
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """Pad (encoder_input, target) pairs: input_ids, attention_mask, labels (pad -> ignore_index), decoder_input_ids."""
    input_ids, attention_mask = pad_batch([list(a) for a, _ in pairs], pad_id)  # (B, S) each
    labels = pad_sequences([list(b) for _, b in pairs], ignore_index)  # (B, T)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "decoder_input_ids": shift_right(labels, decoder_start_id, pad_id, ignore_index),
    }


def seq2seq_loss(
    logits: torch.Tensor, target_ids: torch.Tensor, ignore_index: int = -100, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Decoder cross-entropy of logits (B, T, V) vs targets (B, T), no shift (inputs were `shift_right`-ed).

    "mean" averages over target tokens that are not `ignore_index` (Raffel et al. 2020 use the same
    token-level maximum likelihood with teacher forcing, sec. 3.1.2).
    """
    return token_cross_entropy(logits, target_ids, ignore_index, reduction)
