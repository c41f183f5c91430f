"""Tokenizers: train byte-level BPE / WordPiece / Unigram, load Hugging Face and GPT-2/BERT folders.

    from lmforge.tokenizers import Tokenizer, train_tokenizer

    tok = train_tokenizer(["corpus.jsonl"], kind="bpe", vocab_size=8000, special_tokens="gpt")  # or .txt, .parquet
    tok.save("my-tokenizer")
    tok = Tokenizer.from_pretrained("my-tokenizer")
    batch = tok(["Hello!", "今天天气真好"], padding=True)  # input_ids, attention_mask tensors
"""

from lmforge.tokenizers.errors import TokenizerError, TrainingDataError
from lmforge.tokenizers.specials import (
    ROLES,
    SPECIAL_TOKEN_PRESETS,
    SpecialTokenPreset,
    document_separator,
    get_preset,
    infer_roles,
    parse_special_tokens,
)
from lmforge.tokenizers.tokenizer import Tokenizer
from lmforge.tokenizers.train import (
    DEFAULT_PRESET,
    KINDS,
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
    "TokenizerError",
    "TrainingDataError",
    "document_separator",
    "get_preset",
    "infer_roles",
    "iter_training_text",
    "parse_special_tokens",
    "train_tokenizer",
]
