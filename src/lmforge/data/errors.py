"""The data pipeline's errors and warnings: each message names the file, line, byte offset or field."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input or a prepared directory that cannot be used; the message says where and why."""


class TokenizerMismatch(DataError):
    """The tokenizer given is not the one the shards were prepared with (fingerprints differ)."""


class DataWarning(UserWarning):
    """Input that was skipped (undecodable bytes, empty files) by request."""
