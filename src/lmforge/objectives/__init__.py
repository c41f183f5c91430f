"""Pre-training objectives as pure functions, tensors in and out: CLM, MLM, NSP, ELECTRA RTD, T5 span
corruption and SimCSE contrastive, plus the batch construction each needs.

Conventions: `ignore_index = -100` marks positions without a target; token-level losses take
`reduction="mean"` (over counted tokens, 0 when there are none), "sum" (for exact gradient accumulation)
or "none". Randomness comes only from the generator passed in.
"""

from ._common import pad_batch
from .clm import causal_lm_loss, causal_lm_targets, num_predicted_tokens
from .contrastive import cosine_similarity_matrix, info_nce_loss, mean_pool, simcse_views, split_views
from .electra import (
    ELECTRA_DISC_WEIGHT,
    electra_loss,
    replaced_token_detection_loss,
    sample_replacements,
    share_embeddings,
)
from .mlm import (
    mask_tokens,
    masked_lm_loss,
    predicted_positions,
    vocabulary_style,
    word_ids_from_offsets,
    word_ids_from_starts,
    word_ids_from_tokens,
    word_spans_from_words,
    word_start_table,
)
from .nsp import IS_NEXT, NOT_NEXT, NspExample, collate_nsp, make_nsp_pairs, nsp_loss, truncate_pair
from .span_corruption import (
    collate_seq2seq,
    noise_span_counts,
    random_spans_noise_mask,
    raw_length_for_input_length,
    seq2seq_loss,
    shift_right,
    span_corrupt,
    span_corruption_lengths,
)

__all__ = [
    "ELECTRA_DISC_WEIGHT",
    "IS_NEXT",
    "NOT_NEXT",
    "NspExample",
    "causal_lm_loss",
    "causal_lm_targets",
    "collate_nsp",
    "collate_seq2seq",
    "cosine_similarity_matrix",
    "electra_loss",
    "info_nce_loss",
    "make_nsp_pairs",
    "mask_tokens",
    "masked_lm_loss",
    "mean_pool",
    "noise_span_counts",
    "nsp_loss",
    "num_predicted_tokens",
    "pad_batch",
    "predicted_positions",
    "random_spans_noise_mask",
    "raw_length_for_input_length",
    "replaced_token_detection_loss",
    "sample_replacements",
    "seq2seq_loss",
    "share_embeddings",
    "shift_right",
    "simcse_views",
    "span_corrupt",
    "span_corruption_lengths",
    "split_views",
    "truncate_pair",
    "vocabulary_style",
    "word_ids_from_offsets",
    "word_ids_from_starts",
    "word_ids_from_tokens",
    "word_spans_from_words",
    "word_start_table",
]
