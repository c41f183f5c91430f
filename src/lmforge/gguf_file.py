"""Reading a GGUF file's metadata and tensor index once: the model loader and the tokenizer share it.

`gguf.GGUFReader` parses every metadata string (SmolLM2's 49k tokens and 49k merges) in Python, which
takes seconds, so the last files read are kept, keyed on path, modification time and size.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, NamedTuple


class GGUFContents(NamedTuple):
    """A GGUF file's metadata as Python values, and its tensors (still in the file, memory-mapped) by name."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # name -> gguf.ReaderTensor


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Parse (or reuse) a GGUF file; raises OSError when unreadable, ValueError when it is not GGUF."""
    path = Path(path)
    stat = path.stat()
    return _read(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read(path: Path, mtime_ns: int, size: int) -> GGUFContents:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    return GGUFContents(path, metadata, {t.name: t for t in reader.tensors})
