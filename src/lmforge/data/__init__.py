"""Data pipeline: text files -> token shards (`prepare`), and batches from them (`TokenDataset`, loaders).

- `prepare(files, tokenizer, out_dir, ...)`: tokenized, document-separated uint16/uint32 shards + manifest.
- `TokenDataset(dir, split, tokenizer=None)`: one split, memory-mapped; checks the tokenizer fingerprint.
- `PackedBatches`, `EvalBatches`, `DocumentBatches`: causal-LM windows, fixed validation windows, documents.
- `expand_inputs`, `read_documents`: input files (text, JSON lines, Parquet) -> documents, shared with
  `lmforge.tokenizers.train_tokenizer`.
- `build_default_corpus`, `default_corpus_path`: the offline English + Chinese default corpus.

Only the errors are imported with the package; everything else on first use (numpy, torch for the
loaders), so `lmforge.data.errors` stays cheap for the command line and `prepare`'s workers stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lmforge.data.errors import DataError, DataWarning, TokenizerMismatch

if TYPE_CHECKING:
    from lmforge.data.corpus import build_default_corpus, default_corpus_path
    from lmforge.data.dataset import TokenDataset
    from lmforge.data.loader import IGNORE_INDEX, DocumentBatches, EvalBatches, PackedBatches
    from lmforge.data.shards import is_validation, prepare, read_manifest
    from lmforge.data.sources import expand_inputs, read_documents

# name -> the submodule that defines it, imported when the name is first used.
_LAZY = {
    "build_default_corpus": "corpus",
    "default_corpus_path": "corpus",
    "TokenDataset": "dataset",
    "DocumentBatches": "loader",
    "EvalBatches": "loader",
    "IGNORE_INDEX": "loader",
    "PackedBatches": "loader",
    "is_validation": "shards",
    "prepare": "shards",
    "read_manifest": "shards",
    "expand_inputs": "sources",
    "read_documents": "sources",
}

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "DataWarning",
    "DocumentBatches",
    "EvalBatches",
    "PackedBatches",
    "TokenDataset",
    "TokenizerMismatch",
    "build_default_corpus",
    "default_corpus_path",
    "expand_inputs",
    "is_validation",
    "prepare",
    "read_documents",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmforge.data.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
