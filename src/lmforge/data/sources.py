"""Input files -> documents: plain text, JSON lines and Parquet, given as local paths, folders or globs.

Text must be UTF-8 (a leading byte-order mark is dropped). Undecodable bytes are reported with the file,
line and absolute byte offset; `on_decode_error="skip"` skips the document that holds them (with a
`DataWarning`), "fatal" raises `DataError`. A file with no documents is an error, or a warning with
`on_empty="skip"`.

How a file is cut into documents:

- text (any suffix but the ones below): `text_mode="paragraphs"` (blocks separated by blank lines),
  "lines" (one document per non-blank line) or "file" (the whole file is one document);
- JSON lines (`.jsonl`, `.ndjson`, `.json`): one object per line, the document is its `text_key` field;
- Parquet (`.parquet`, `.pq`): the `text_key` column, read with pyarrow when it is installed.
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.errors import DataError, DataWarning

FORMATS = ("text", "jsonl", "parquet")
TEXT_MODES = ("paragraphs", "lines", "file")
ON_ERROR = ("fatal", "skip")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_DIR_SUFFIXES = {".txt", ".text", ".md", *_SUFFIX_FORMATS}
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Source:
    """One input file, its format, and what identifies this version of it (size and modification time)."""

    path: Path
    format: str
    size: int
    mtime_ns: int

    def signature(self) -> dict:
        """The fields that must be unchanged for a resumed prepare to reuse this file's shards."""
        return {"path": str(self.path), "format": self.format, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass
class ReadStats:
    """Counts kept while reading one file."""

    documents: int = 0
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)


def detect_format(path: str | Path) -> str:
    """"jsonl", "parquet" or "text", from the file's suffix."""
    return _SUFFIX_FORMATS.get(Path(path).suffix.lower(), "text")


def expand_inputs(patterns: Sequence[str | Path], input_format: str | None = None) -> list[Source]:
    """Resolve paths, folders (their .txt/.md/.jsonl/.json/.parquet files) and globs to sorted, distinct files."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    if not patterns:
        raise DataError("no input files given")
    if input_format is not None and input_format not in FORMATS:
        raise DataError(f"input_format must be one of {FORMATS}, got {input_format!r}")
    paths: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        path = Path(text).expanduser()
        if any(ch in text for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
            if not found:
                raise DataError(f"no files match {text!r}")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _DIR_SUFFIXES)
            if not found:
                raise DataError(f"{text}: folder holds no .txt, .md, .jsonl, .json or .parquet files")
        elif path.is_file():
            found = [path]
        else:
            raise DataError(f"{text}: no such file")
        paths.extend(found)
    sources, seen = [], set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        stat = resolved.stat()
        fmt = input_format or detect_format(resolved)
        sources.append(Source(resolved, fmt, stat.st_size, stat.st_mtime_ns))
    return sources


def check_reader_options(text_mode: str, on_decode_error: str, on_empty: str) -> None:
    """Raise `DataError` for a `text_mode`, `on_decode_error` or `on_empty` value that does not exist."""
    if text_mode not in TEXT_MODES:
        raise DataError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    for name, value in (("on_decode_error", on_decode_error), ("on_empty", on_empty)):
        if value not in ON_ERROR:
            raise DataError(f"{name} must be one of {ON_ERROR}, got {value!r}")


def read_documents(
    source: Source | str | Path,
    *,
    text_key: str = "text",
    text_mode: str = "paragraphs",
    on_decode_error: str = "fatal",
    on_empty: str = "fatal",
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, int]]:
    """Yield `(document, bytes read so far)` for one file; see the module docstring for the rules."""
    if not isinstance(source, Source):
        source = expand_inputs([source])[0]
    check_reader_options(text_mode, on_decode_error, on_empty)
    stats = stats if stats is not None else ReadStats()
    if source.size == 0:
        _empty(source, "is empty (0 bytes)", on_empty)
        return
    if source.format == "jsonl":
        docs = _jsonl_documents(source, text_key, on_decode_error, stats)
    elif source.format == "parquet":
        docs = _parquet_documents(source, text_key)
    elif text_mode == "file":
        docs = _whole_file(source, on_decode_error, stats)
    else:
        docs = _text_documents(source, text_mode == "lines", on_decode_error, stats)
    for text, position in docs:
        stats.documents += 1
        yield text, position
    if stats.documents == 0:
        reason = "contains no documents"
        if stats.skipped:
            reason += f" (all {stats.skipped} were skipped as undecodable)"
        elif source.format != "text":
            reason += f" (no non-blank {text_key!r} values)"
        else:
            reason += " (only blank lines)"
        _empty(source, reason, on_empty)


def _empty(source: Source, reason: str, on_empty: str) -> None:
    message = f"{source.path}: {reason}"
    if on_empty == "fatal":
        raise DataError(message + "; remove it from the inputs or pass on_empty='skip' (--on_empty skip)")
    warnings.warn(message + "; skipped", DataWarning, stacklevel=2)


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number from 1, absolute byte offset of the line's first byte, raw line bytes)."""
    with open(path, "rb") as handle:
        offset = 0
        for lineno, raw in enumerate(handle, 1):
            start = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            yield lineno, start, raw


def _decode(raw: bytes, path: Path, lineno: int, start: int, policy: str, stats: ReadStats) -> str | None:
    """UTF-8 text of `raw`, or None when it is undecodable and `policy` is "skip"."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        _undecodable(path, lineno, start + err.start, raw[err.start : err.end], err.reason, policy, stats)
        return None


def _undecodable(
    path: Path, lineno: int, offset: int, bad: bytes, reason: str, policy: str, stats: ReadStats
) -> None:
    """Raise, or warn and count, for undecodable bytes at absolute byte `offset` of `path`."""
    message = f"{path}: line {lineno}, byte offset {offset}: undecodable bytes {bad!r} ({reason}); input must be UTF-8"
    if policy == "fatal":
        raise DataError(message + "; pass on_decode_error='skip' (--on_decode_error skip) to skip such documents")
    stats.skipped += 1
    stats.skipped_at.append(f"{path}:{lineno}@{offset}")
    warnings.warn(message + "; skipped the document", DataWarning, stacklevel=2)


def _text_documents(source: Source, by_line: bool, policy: str, stats: ReadStats) -> Iterator[tuple[str, int]]:
    block: list[str] = []
    bad = False
    position = 0
    for lineno, start, raw in _lines(source.path):
        text = _decode(raw, source.path, lineno, start, policy, stats)
        position = start + len(raw)
        if text is None:
            bad = not by_line  # a paragraph with a bad line is dropped whole; a bad line alone
            continue
        text = text.rstrip("\r\n")
        if by_line:
            if text.strip():
                yield text.strip(), position
            continue
        if text.strip():
            block.append(text)
            continue
        if block and not bad:
            yield "\n".join(block).strip(), position
        block, bad = [], False
    if block and not bad:
        yield "\n".join(block).strip(), position


def _whole_file(source: Source, policy: str, stats: ReadStats) -> Iterator[tuple[str, int]]:
    raw = source.path.read_bytes()
    skip = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        lineno = raw.count(b"\n", 0, offset) + 1
        _undecodable(source.path, lineno, offset, raw[offset : skip + err.end], err.reason, policy, stats)
        return
    if text.strip():
        yield text.strip(), len(raw)


def _jsonl_documents(source: Source, text_key: str, policy: str, stats: ReadStats) -> Iterator[tuple[str, int]]:
    for lineno, start, raw in _lines(source.path):
        if not raw.strip():
            continue
        line = _decode(raw, source.path, lineno, start, policy, stats)
        if line is None:
            continue
        where = f"{source.path}: line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with a {text_key!r} field, got {type(record).__name__}")
        if text_key not in record:
            fields = ", ".join(map(repr, list(record)[:10])) or "none"
            raise DataError(f"{where}: no field {text_key!r} (fields: {fields}); set text_key (--text_key)")
        text = record[text_key]
        if text is None:
            continue
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_key!r} must be a string, got {type(text).__name__}")
        if text.strip():
            yield text, start + len(raw)


def _parquet_documents(source: Source, text_key: str) -> Iterator[tuple[str, int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{source.path}: reading Parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
            "or convert the file to JSON lines"
        ) from None
    parquet = pq.ParquetFile(source.path)
    columns = parquet.schema_arrow.names
    if text_key not in columns:
        raise DataError(f"{source.path}: no column {text_key!r} (columns: {', '.join(columns)}); set text_key")
    rows, done = max(parquet.metadata.num_rows, 1), 0
    for batch in parquet.iter_batches(columns=[text_key], batch_size=1024):
        for text in batch.column(0).to_pylist():
            done += 1
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(
                    f"{source.path}: row {done - 1}, column {text_key!r} must be a string, got {type(text).__name__}"
                )
            if text.strip():
                yield text, source.size * done // rows
