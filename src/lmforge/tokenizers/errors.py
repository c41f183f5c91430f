"""The tokenizer package's errors. Both are `lmforge.data.DataError`s (so `ValueError`s): bad input that
the `lmforge` command line reports as one line, without a traceback."""

from __future__ import annotations

from lmforge.data.errors import DataError


class TokenizerError(DataError):
    """A tokenizer file or folder that cannot be loaded; the message names the file and what is wrong."""


class TrainingDataError(TokenizerError):
    """Tokenizer training input that cannot be used (a file, an option, the special tokens).

    The message names the file, line and byte offset, or the option, and says how to fix it. Input files
    are read by `lmforge.data.sources`, so their errors read exactly as `lmforge data prepare`'s.
    """
