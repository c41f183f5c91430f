"""Data pipeline: text files -> token shards (`prepare`), and batches from them (`TokenDataset`, loaders).

- `prepare(files, tokenizer, out_dir, ...)`: tokenized, document-separated uint16/uint32 shards + manifest.
- `TokenDataset(dir, split, tokenizer=None)`: one split, memory-mapped; checks the tokenizer fingerprint.
- `PackedBatches`, `EvalBatches`, `DocumentBatches`: causal-LM windows, fixed validation windows, documents.
- `build_default_corpus`, `default_corpus_path`: the offline English + Chinese default corpus.

The loaders (which need torch) are imported on first use, so `prepare`'s worker processes stay light.
"""

from __future__ import annotations

from typing import Any

from lmforge.data.corpus import build_default_corpus, default_corpus_path
from lmforge.data.dataset import TokenDataset
from lmforge.data.errors import DataError, DataWarning, TokenizerMismatch
from lmforge.data.shards import is_validation, prepare, read_manifest
from lmforge.data.sources import expand_inputs, read_documents

_LOADERS = ("DocumentBatches", "EvalBatches", "IGNORE_INDEX", "PackedBatches")

__all__ = [
    "DataError",
    "DataWarning",
    "TokenDataset",
    "TokenizerMismatch",
    "build_default_corpus",
    "default_corpus_path",
    "expand_inputs",
    "is_validation",
    "prepare",
    "read_documents",
    "read_manifest",
    *_LOADERS,
]


def __getattr__(name: str) -> Any:
    if name in _LOADERS:
        from lmforge.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")
