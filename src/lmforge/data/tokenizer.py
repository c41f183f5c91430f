"""The few things the data pipeline needs from a tokenizer, and the fingerprint check against a manifest.

Any object with `encode_batch(texts, add_special_tokens=False) -> list[list[int]]`, `vocab_size`, `eos_id`,
`bos_id` and `fingerprint()` will do (`lmforge.tokenizers.Tokenizer` has them); a path is loaded with
`lmforge.tokenizers.Tokenizer.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.errors import DataError, TokenizerMismatch


@dataclass(frozen=True)
class TokenizerInfo:
    """What a manifest records about the tokenizer that made the shards."""

    fingerprint: str
    vocab_size: int
    eos_id: int | None
    bos_id: int | None


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object: passed through, or loaded from a path with `lmforge.tokenizers`."""
    if not isinstance(tokenizer, (str, Path)):
        if not hasattr(tokenizer, "encode_batch"):
            raise DataError(f"expected a tokenizer or a path to one, got {type(tokenizer).__name__}")
        return tokenizer
    path = Path(tokenizer).expanduser()
    if not path.exists():
        raise DataError(f"tokenizer {str(tokenizer)!r}: no such file or folder")
    from lmforge.tokenizers import Tokenizer

    return Tokenizer.from_pretrained(str(path))


def _value(tokenizer: Any, name: str) -> Any:
    value = getattr(tokenizer, name, None)
    return value() if callable(value) else value


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """Fingerprint, vocabulary size and EOS/BOS ids of a tokenizer (attributes or methods alike)."""
    fingerprint = _value(tokenizer, "fingerprint")
    vocab_size = _value(tokenizer, "vocab_size")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no fingerprint() giving its hash")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no positive integer vocab_size")
    eos_id, bos_id = _value(tokenizer, "eos_id"), _value(tokenizer, "bos_id")
    return TokenizerInfo(fingerprint, vocab_size, eos_id, bos_id)


def check_tokenizer(manifest: dict, manifest_path: str | Path, tokenizer: Any) -> None:
    """Raise `TokenizerMismatch` unless `tokenizer` (object or path) is the one the manifest records."""
    expected = manifest.get("tokenizer", {}).get("fingerprint")
    given = tokenizer_info(load_tokenizer(tokenizer)).fingerprint
    if given != expected:
        raise TokenizerMismatch(
            f"the tokenizer does not match the prepared shards: {manifest_path} records tokenizer fingerprint "
            f"{expected}, the tokenizer given has fingerprint {given}; use the tokenizer the shards were "
            "prepared with, or prepare them again with this one (`lmforge data prepare`)"
        )
