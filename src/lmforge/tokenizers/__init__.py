"""Tokenizers: train byte-level BPE / WordPiece / Unigram, load Hugging Face and GPT-2/BERT folders.

    from lmforge.tokenizers import Tokenizer, train_tokenizer

    tok = train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=8000, special_tokens="gpt")
    tok.save("my-tokenizer")
    tok = Tokenizer.from_pretrained("my-tokenizer")
    batch = tok(["Hello!", "今天天气真好"], padding=True)  # input_ids, attention_mask tensors
"""

from lmforge.tokenizers.specials import (
    ROLES,
    SPECIAL_TOKEN_PRESETS,
    SpecialTokenPreset,
    get_preset,
    infer_roles,
    parse_special_tokens,
)
from lmforge.tokenizers.tokenizer import Tokenizer
from lmforge.tokenizers.train import (
    DEFAULT_PRESET,
    KINDS,
    TrainingDataError,
    iter_training_text,
    train_tokenizer,
)

__all__ = [
    "DEFAULT_PRESET",
    "KINDS",
    "ROLES",
    "SPECIAL_TOKEN_PRESETS",
    "SpecialTokenPreset",
    "Tokenizer",
    "TrainingDataError",
    "get_preset",
    "infer_roles",
    "iter_training_text",
    "parse_special_tokens",
    "train_tokenizer",
]
