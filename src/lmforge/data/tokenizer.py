"""The few things the data pipeline needs from a tokenizer, and the fingerprint check against a manifest.

Any object with `encode_batch(texts, add_special_tokens=False) -> list[list[int]]`, `vocab_size`, `eos_id`,
`bos_id` and `fingerprint()` will do (`lmforge.tokenizers.Tokenizer` has them); a path is loaded with
`lmforge.tokenizers.Tokenizer.from_pretrained`.

The *document separator*, the id written after every document, is the tokenizer's EOS id, else its SEP
id (`sep_id`, as BERT tokenizers have), unless a separator token is named (which needs `token_to_id`).
This is the rule of `lmforge.tokenizers.document_separator`.
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
    eos_id: int | None  # the document separator's id: what ends every document (None: the tokenizer has none)
    bos_id: int | None
    separator: str | None = None  # the separator's token text, when the tokenizer can tell (`id_to_token`)


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object: passed through, or loaded from a path with `lmforge.tokenizers`."""
    if not isinstance(tokenizer, (str, Path)):
        if not hasattr(tokenizer, "encode_batch"):
            raise DataError(f"expected a tokenizer or a path to one, got {type(tokenizer).__name__}")
        return tokenizer
    from lmforge.assets import named_folder

    path = named_folder(tokenizer) or Path(tokenizer).expanduser()
    if not path.exists():
        raise DataError(f"tokenizer {str(tokenizer)!r}: no such file or folder; train one with "
                        f"`lmforge tokenizer train FILES --output {tokenizer}`, or pass --tokenizer FOLDER")
    from lmforge.tokenizers import Tokenizer

    return Tokenizer.from_pretrained(str(path))


def _value(tokenizer: Any, name: str) -> Any:
    value = getattr(tokenizer, name, None)
    return value() if callable(value) else value


def tokenizer_info(tokenizer: Any, separator: str | None = None) -> TokenizerInfo:
    """Fingerprint, vocabulary size, document separator and BOS id of a tokenizer (attributes or methods alike).

    The separator is the token `separator` when given, else the tokenizer's EOS, else its SEP token; its id
    is `eos_id` (None when there is none; `prepare` then refuses to run).
    """
    name = type(tokenizer).__name__
    fingerprint = _value(tokenizer, "fingerprint")
    vocab_size = _value(tokenizer, "vocab_size")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise DataError(f"tokenizer {name} has no fingerprint() giving its hash")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise DataError(f"tokenizer {name} has no positive integer vocab_size")
    if separator is not None:
        if not callable(getattr(tokenizer, "token_to_id", None)):
            raise DataError(f"separator {separator!r} needs a tokenizer with token_to_id(); {name} has none")
        end_id = tokenizer.token_to_id(separator)
        if end_id is None:
            raise DataError(f"separator {separator!r} is not in the tokenizer's vocabulary; name one of its "
                            "tokens (--separator), or leave it out to use the tokenizer's EOS or SEP token")
    else:
        end_id = _value(tokenizer, "eos_id")
        if end_id is None:
            end_id = _value(tokenizer, "sep_id")
    if separator is None and end_id is not None and callable(getattr(tokenizer, "id_to_token", None)):
        separator = tokenizer.id_to_token(end_id)
    return TokenizerInfo(fingerprint, vocab_size, end_id, _value(tokenizer, "bos_id"), separator)


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
