"""`TokenDataset`: one split of a prepared folder, as a memory-mapped token stream and a list of documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.errors import DataError
from lmforge.data.shards import MANIFEST, read_manifest
from lmforge.data.tokenizer import check_tokenizer


class TokenDataset:
    """The tokens of one split ("train" or "val") of a folder written by `prepare`.

    The split is one stream: the shards in order, every document followed by the separator (`eos_id`).
    `tokens(start, stop)` slices it, `array()` gives all of it, `document(i)` one document. Pass `tokenizer`
    (an object or a path) to check that it is the tokenizer the shards were made with.
    """

    def __init__(self, path: str | Path, split: str = "train", tokenizer: Any = None) -> None:
        self.path = Path(path)
        self.split = split
        self.manifest = manifest = read_manifest(self.path)
        manifest_path = self.path / MANIFEST
        if not manifest["complete"]:
            raise DataError(
                f"{manifest_path}: the prepare that writes this folder has not finished "
                f"({len(manifest['sources'])} input files done); run the same prepare command again to resume"
            )
        if split not in manifest["splits"]:
            raise DataError(f"{manifest_path}: no split {split!r} (splits: {', '.join(manifest['splits'])})")
        if tokenizer is not None:
            check_tokenizer(manifest, manifest_path, tokenizer)
        self.dtype = np.dtype(manifest["dtype"])
        self._shards: list[np.ndarray] = []
        doc_offsets = [np.zeros(1, dtype=np.int64)]
        token_starts = [0]
        for shard in manifest["splits"][split]["shards"]:
            file = self.path / shard["name"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not file.exists() or file.stat().st_size < expected:
                size = file.stat().st_size if file.exists() else "no"
                raise DataError(f"{file}: {size} bytes, {manifest_path} says {expected}; prepare again")
            self._shards.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
            offsets = np.load(self.path / shard["index"])[: shard["documents"] + 1]
            if len(offsets) != shard["documents"] + 1 or offsets[-1] != shard["tokens"]:
                raise DataError(f"{self.path / shard['index']}: offsets do not match {manifest_path}; prepare again")
            doc_offsets.append(offsets[1:] + token_starts[-1])
            token_starts.append(token_starts[-1] + shard["tokens"])
        self._token_starts = np.asarray(token_starts, dtype=np.int64)
        self._doc_offsets = np.concatenate(doc_offsets)

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.path)!r}, split={self.split!r}: {self.num_tokens:,} tokens, "
                f"{self.num_documents:,} documents, {self.dtype.name})")

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens in the split, the separator after each document included."""
        return int(self._token_starts[-1])

    @property
    def num_documents(self) -> int:
        """Documents in the split."""
        return len(self._doc_offsets) - 1

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer that made the shards."""
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        """The id that ends every document: the tokenizer's EOS, or its SEP for BERT-style tokenizers."""
        return int(self.manifest["tokenizer"]["eos_id"])

    @property
    def separator(self) -> str | None:
        """The token of `eos_id` (e.g. "<|endoftext|>", "[SEP]"), None when the manifest does not say."""
        return self.manifest["tokenizer"].get("separator")

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the tokenizer that made the shards."""
        return str(self.manifest["tokenizer"]["fingerprint"])

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens `start:stop` of the stream (a view when inside one shard, else a copy)."""
        n = self.num_tokens
        stop = n if stop is None else min(stop, n)
        start = max(0, start)
        if start >= stop:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self._token_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._token_starts, stop, side="left")) - 1
        base = int(self._token_starts[first])
        if first == last:
            return self._shards[first][start - base : stop - base]
        pieces = []
        for k in range(first, last + 1):
            lo = max(start, int(self._token_starts[k])) - int(self._token_starts[k])
            hi = min(stop, int(self._token_starts[k + 1])) - int(self._token_starts[k])
            pieces.append(self._shards[k][lo:hi])
        return np.concatenate(pieces)

    def array(self) -> np.ndarray:
        """The whole split's token stream (memory-mapped when it is one shard): what evaluation runs over."""
        if len(self._shards) == 1:
            return self._shards[0]
        return self.tokens(0, self.num_tokens)

    def document_offsets(self) -> np.ndarray:
        """Offsets of the documents in the stream: document `i` is `tokens(offsets[i], offsets[i + 1])`."""
        return self._doc_offsets.copy()

    def document(self, index: int, with_eos: bool = False) -> np.ndarray:
        """The tokens of document `index`, without its closing separator unless `with_eos`."""
        if not -self.num_documents <= index < self.num_documents:
            raise IndexError(f"document {index} out of range: the {self.split} split has {self.num_documents}")
        index %= self.num_documents
        start, stop = int(self._doc_offsets[index]), int(self._doc_offsets[index + 1])
        return self.tokens(start, stop if with_eos else stop - 1)

    def documents(self, with_eos: bool = False) -> Iterator[np.ndarray]:
        """Every document's tokens, in order."""
        for index in range(self.num_documents):
            yield self.document(index, with_eos)
