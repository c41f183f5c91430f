"""`prepare`: text files -> tokenized, document-separated token shards plus a JSON manifest.

Layout of the output folder:

- `train_000.bin`, `train_001.bin`, ..., `val_000.bin`, ...: raw token ids (`uint16` when the vocabulary
  fits, else `uint32`; read them with `np.memmap`). Each document's tokens are followed by the document
  separator: the tokenizer's EOS id, else its SEP id (BERT's `[SEP]`), or the `separator` token asked for.
  A document never spans two shards; a shard is closed before a document would take it past
  `shard_tokens` (a longer document gets a shard to itself).
- `train_000.idx.npy`, ...: int64 document offsets of each shard (documents + 1 entries; document `i` is
  `tokens[offsets[i]:offsets[i + 1]]`, its separator included).
- `manifest.json`: format version; the tokenizer's fingerprint, vocabulary size, `eos_id` (the id that
  ends every document, whichever token it is), `separator` (that token's text) and `bos_id`; dtype,
  settings, per-split token/document counts and shard list, one entry per input file, and `complete`.

The train/validation split is by document: a document goes to validation when a hash of the split seed
and its text falls below `val_fraction`, so the split depends on neither the file order nor the number
of workers, and identical documents land in the same split.

Resuming: the manifest is rewritten (atomically) after each input file, with the files done so far and
the shard sizes at that point. A second run with the same settings continues after the last finished
file, first cutting back anything written after that point; a run whose file list extends a finished
one appends to it. Either way the shards come out identical to a one-shot run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.errors import DataError, DataWarning
from lmforge.data.sources import ReadStats, Source, check_reader_options, expand_inputs, read_documents
from lmforge.data.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_info
from lmforge.fileio import atomic_write, atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "lmforge-token-shards"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 26
_OUTPUT_FILE = re.compile(r"^(train|val)_\d+\.(bin|idx\.npy)$")
_TEMP_FILE = re.compile(r"^(manifest\.json|(train|val)_\d+\.idx\.npy)\.tmp$")
_SETTINGS = ("dtype", "val_fraction", "seed", "shard_tokens", "text_key", "text_mode", "on_decode_error", "on_empty")


def choose_dtype(vocab_size: int) -> str:
    """"uint16" when every id of the vocabulary fits in 16 bits, else "uint32"."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_validation(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether a document belongs to the validation split: a seeded hash of its text below `val_fraction`."""
    if val_fraction <= 0.0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=seed.to_bytes(16, "little")).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


def encode_documents(
    tokenizer: Any, texts: Sequence[str], eos_id: int, dtype: str, val_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tokenize documents; per split, their concatenated ids (each followed by `eos_id`) and their lengths."""
    ids = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    limit = np.iinfo(dtype).max
    in_val = [is_validation(text, val_fraction, seed) for text in texts]
    out = {}
    for split in SPLITS:
        docs = [doc for doc, val in zip(ids, in_val) if val == (split == "val")]
        lengths = np.array([len(doc) + 1 for doc in docs], dtype=np.int64)
        flat = np.empty(int(lengths.sum()), dtype=np.int64)
        ends = np.cumsum(lengths)
        for doc, end, length in zip(docs, ends, lengths):
            flat[end - length : end - 1] = doc
        flat[ends - 1] = eos_id
        if flat.size and (flat.min() < 0 or flat.max() > limit):
            bad = int(flat.max()) if flat.max() > limit else int(flat.min())
            raise DataError(f"token id {bad} does not fit {dtype}; the tokenizer's vocab_size is too small")
        out[split] = (flat.astype(dtype), lengths)
    return out


# --- worker processes -------------------------------------------------------------------------------

_worker_tokenizer: Any = None


def _init_worker(payload: bytes) -> None:
    global _worker_tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    kind, value = pickle.loads(payload)
    if kind == "path":
        _worker_tokenizer = load_tokenizer(value)
    elif kind == "object":
        _worker_tokenizer = value
    else:  # ("saved", (class, folder, fingerprint)): a tokenizer that pickles badly but saves and loads
        cls, folder, fingerprint = value
        _worker_tokenizer = cls.from_pretrained(folder)
        if tokenizer_info(_worker_tokenizer).fingerprint != fingerprint:
            raise DataError(f"{cls.__name__} saved to {folder} loads with a different fingerprint; use workers=1")


def _encode_in_worker(texts: list[str], eos_id: int, dtype: str, val_fraction: float, seed: int) -> dict:
    return encode_documents(_worker_tokenizer, texts, eos_id, dtype, val_fraction, seed)


class _Encoder:
    """Runs `encode_documents` in this process (workers <= 1) or in a pool of spawned processes.

    Workers get the tokenizer by its path, by pickling it, or (for objects holding locks, such as
    `lmforge.tokenizers.Tokenizer`) by `save()` into a temporary folder and `from_pretrained()` there.
    """

    def __init__(self, tokenizer: Any, spec: Any, fingerprint: str, workers: int, args: tuple) -> None:
        self.tokenizer, self.args, self.pool, self.tmp = tokenizer, args, None, None
        if workers <= 1:
            return
        if isinstance(spec, (str, Path)):
            payload = pickle.dumps(("path", str(spec)))
        else:
            try:
                payload = pickle.dumps(("object", tokenizer))
            except Exception as err:
                if not (hasattr(tokenizer, "save") and hasattr(type(tokenizer), "from_pretrained")):
                    raise DataError(f"the tokenizer cannot be sent to worker processes ({err}); pass its path "
                                    "instead, or use workers=1") from err
                self.tmp = tempfile.TemporaryDirectory(prefix="lmforge-tokenizer-")
                tokenizer.save(self.tmp.name)
                payload = pickle.dumps(("saved", (type(tokenizer), self.tmp.name, fingerprint)))
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                        initargs=(payload,))

    def submit(self, texts: list[str]) -> Future:
        """Tokenize a chunk of documents, now (in this process) or in a worker."""
        if self.pool is not None:
            return self.pool.submit(_encode_in_worker, texts, *self.args)
        future: Future = Future()
        future.set_result(encode_documents(self.tokenizer, texts, *self.args))
        return future

    def close(self) -> None:
        """Stop the workers and remove the temporary tokenizer folder."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.tmp is not None:
            self.tmp.cleanup()


# --- shards -------------------------------------------------------------------------------------------


def _save_offsets(path: Path, offsets: Sequence[int]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle, since np.save would append ".npy" to a bare name
            np.save(handle, np.asarray(offsets, dtype=np.int64))

    atomic_write(path, write)


class _ShardWriter:
    """Appends documents of one split to `{split}_NNN.bin` shards; can reopen the last shard to resume."""

    def __init__(self, out_dir: Path, split: str, dtype: str, shard_tokens: int, shards: list[dict]) -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, np.dtype(dtype), shard_tokens
        self.shards = [dict(s) for s in shards]
        self.handle = None
        self.offsets: list[int] = [0]
        if self.shards:  # reopen the last shard, cut back to its size at the last commit
            last = self.shards[-1]
            path = out_dir / last["name"]
            self.handle = open(path, "r+b")
            self.handle.truncate(last["tokens"] * self.dtype.itemsize)
            self.handle.seek(0, os.SEEK_END)
            offsets = np.load(out_dir / last["index"])
            if len(offsets) < last["documents"] + 1 or offsets[last["documents"]] != last["tokens"]:
                raise DataError(f"{out_dir / last['index']} does not match {out_dir / MANIFEST}; prepare again")
            self.offsets = offsets[: last["documents"] + 1].tolist()

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s["documents"] for s in self.shards)

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}"
        self.shards.append({"name": f"{name}.bin", "index": f"{name}.idx.npy", "tokens": 0, "documents": 0})
        self.handle = open(self.out_dir / f"{name}.bin", "wb")
        self.offsets = [0]

    def _close(self) -> None:
        self.sync()
        self.handle.close()
        self.handle = None

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Write documents (`tokens` concatenated, `lengths` each), opening new shards as they fill."""
        ends = np.cumsum(lengths)
        i = 0
        while i < len(lengths):
            if self.handle is None:
                self._open()
            used = self.offsets[-1]
            base = int(ends[i - 1]) if i else 0
            fits = int(np.searchsorted(ends[i:] - base, self.shard_tokens - used, side="right"))
            if fits == 0 and used == 0:
                fits = 1  # a document longer than a shard gets a shard of its own
            if fits == 0:
                self._close()
                continue
            stop = int(ends[i + fits - 1])
            self.handle.write(tokens[base:stop].tobytes())
            self.offsets.extend((used + ends[i : i + fits] - base).tolist())
            self.shards[-1]["tokens"] = self.offsets[-1]
            self.shards[-1]["documents"] = len(self.offsets) - 1
            i += fits
            if i < len(lengths):
                self._close()

    def sync(self) -> None:
        """Make the open shard durable: flush and fsync its tokens, rewrite its offsets atomically."""
        if self.handle is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        _save_offsets(self.out_dir / self.shards[-1]["index"], self.offsets)

    def close(self) -> None:
        """Finish the split: close the open shard."""
        if self.handle is not None:
            self._close()

    def summary(self) -> dict:
        """The split's entry in the manifest."""
        return {"tokens": self.tokens, "documents": self.documents, "shards": [dict(s) for s in self.shards]}


# --- manifest -----------------------------------------------------------------------------------------


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of a prepared folder, checked for format and version."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path} not found: prepare the data first (`lmforge data prepare FILES --tokenizer T "
                        f"--output {out_dir}`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} ({err.msg})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an lmforge token-shard manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: manifest version {manifest.get('version')!r}, this lmforge reads {VERSION}")
    return manifest


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def _remove_outputs(out_dir: Path, keep: set[str]) -> None:
    """Delete shard files (and temporaries) of a previous run that the manifest does not list."""
    for path in out_dir.iterdir():
        if (_OUTPUT_FILE.match(path.name) and path.name not in keep) or _TEMP_FILE.match(path.name):
            path.unlink()


def _start(out_dir: Path, sources: list[Source], info: TokenizerInfo, settings: dict, overwrite: bool) -> dict:
    """The manifest to continue from: a fresh one, or the existing one when it is a prefix of this run."""
    path = out_dir / MANIFEST
    fresh = {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "tokenizer": {"fingerprint": info.fingerprint, "vocab_size": info.vocab_size,
                      "eos_id": info.eos_id, "separator": info.separator, "bos_id": info.bos_id},
        "dtype": settings["dtype"],
        "settings": settings,
        "splits": {split: {"tokens": 0, "documents": 0, "shards": []} for split in SPLITS},
        "sources": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if overwrite and path.exists():
        path.unlink()
    if not path.exists():
        _remove_outputs(out_dir, keep=set())
        return fresh
    old = read_manifest(out_dir)
    problems = []
    if old["tokenizer"]["fingerprint"] != info.fingerprint:
        problems.append(f"tokenizer fingerprint {old['tokenizer']['fingerprint']} there, {info.fingerprint} now")
    elif old["tokenizer"].get("eos_id") != info.eos_id:
        problems.append(f"documents end with id {old['tokenizer'].get('eos_id')} there, {info.eos_id} now (separator)")
    for key in _SETTINGS:
        if old["settings"].get(key) != settings[key]:
            problems.append(f"{key} {old['settings'].get(key)!r} there, {settings[key]!r} now")
    done = old["sources"]
    if len(done) > len(sources):
        problems.append(f"{len(done)} input files there, {len(sources)} now")
    for i, (entry, source) in enumerate(zip(done, sources)):
        sig = source.signature()
        if any(entry[key] != sig[key] for key in sig):
            what = "is a different file" if entry["path"] != sig["path"] else "has changed since"
            problems.append(f"input {i} ({sig['path']}) {what} (was {entry['path']})")
            break
    if problems:
        raise DataError(
            f"{out_dir} holds shards prepared differently: {'; '.join(problems)}. Pass overwrite=True "
            "(--overwrite true) to replace them, or choose another output folder"
        )
    keep = {s[key] for split in old["splits"].values() for s in split["shards"] for key in ("name", "index")}
    _remove_outputs(out_dir, keep)
    return old


def prepare(
    files: Sequence[str | Path],
    tokenizer: Any,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    dtype: str | None = None,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_key: str = "text",
    text_mode: str = "paragraphs",
    input_format: str | None = None,
    on_decode_error: str = "fatal",
    on_empty: str = "fatal",
    separator: str | None = None,
    overwrite: bool = False,
    batch_docs: int = 256,
    progress: bool = True,
) -> dict:
    """Tokenize `files` (paths, folders or globs) into shards under `out_dir`; returns the manifest.

    Every document is followed by the separator token: `separator` when given (a token of the
    tokenizer's vocabulary), else the tokenizer's EOS token, else its SEP token.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1 or batch_docs < 1:
        raise DataError(f"shard_tokens and batch_docs must be positive, got {shard_tokens} and {batch_docs}")
    check_reader_options(text_mode, on_decode_error, on_empty)
    sources = expand_inputs(files, input_format)
    tok = load_tokenizer(tokenizer)
    info = tokenizer_info(tok, separator)
    if info.eos_id is None:
        raise DataError(
            "the tokenizer has no EOS or SEP token to end each document in the shards: name one of its tokens "
            "(separator='</s>', --separator '</s>'), or train a tokenizer whose special tokens include one "
            "(`lmforge tokenizer train FILES --special-tokens gpt`, or a list holding </s>, <|endoftext|> or [SEP])"
        )
    dtype = dtype or choose_dtype(info.vocab_size)
    if dtype not in ("uint16", "uint32"):
        raise DataError(f"dtype must be 'uint16' or 'uint32', got {dtype!r}")
    if dtype == "uint16" and info.vocab_size > 1 << 16:
        raise DataError(f"vocab_size {info.vocab_size} does not fit uint16; use dtype='uint32'")
    settings = {"dtype": dtype, "val_fraction": val_fraction, "seed": seed, "shard_tokens": shard_tokens,
                "text_key": text_key, "text_mode": text_mode, "on_decode_error": on_decode_error,
                "on_empty": on_empty}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _start(out, sources, info, settings, overwrite)
    done = len(manifest["sources"])
    if manifest["complete"] and done == len(sources):
        _log(progress, f"{out}: already prepared ({done} files); nothing to do")
        return manifest
    manifest["complete"] = False
    _write_manifest(out, manifest)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens, manifest["splits"][s]["shards"]) for s in SPLITS}
    encoder = _Encoder(tok, tokenizer, info.fingerprint, workers, (info.eos_id, dtype, val_fraction, seed))
    reader = {"text_key": text_key, "text_mode": text_mode, "on_decode_error": on_decode_error,
              "on_empty": on_empty}
    try:
        _run(sources, done, manifest, writers, encoder, reader, batch_docs, workers, progress, out)
    finally:
        encoder.close()
        for writer in writers.values():
            writer.close()
    manifest["splits"] = {split: writers[split].summary() for split in SPLITS}
    manifest["complete"] = True
    _write_manifest(out, manifest)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    if val_fraction > 0 and val["documents"] == 0:
        warnings.warn(f"{out}: none of the {train['documents']} documents fell into the validation split "
                      f"(val_fraction {val_fraction}); use more, smaller documents (text_mode) or a larger "
                      "val_fraction", DataWarning, stacklevel=2)
    _log(progress, f"{out}: train {train['tokens']:,} tokens / {train['documents']:,} documents, "
                   f"val {val['tokens']:,} tokens / {val['documents']:,} documents ({dtype})")
    return manifest


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


def _chunks(sources: list[Source], start: int, reader: dict, batch_docs: int, stats: dict[int, ReadStats]
            ) -> Iterator[tuple[int, list[str], int, bool]]:
    """(file index, documents, bytes read of that file, is the file's last chunk), in order."""
    batch_chars = 1 << 22
    for i in range(start, len(sources)):
        stats[i] = ReadStats()
        texts, chars, position = [], 0, 0
        for text, position in read_documents(sources[i], stats=stats[i], **reader):
            texts.append(text)
            chars += len(text)
            if len(texts) >= batch_docs or chars >= batch_chars:
                yield i, texts, position, False
                texts, chars = [], 0
        yield i, texts, sources[i].size, True


def _run(sources: list[Source], start: int, manifest: dict, writers: dict[str, _ShardWriter],
         encoder: _Encoder, reader: dict, batch_docs: int, workers: int, progress: bool, out: Path) -> None:
    from tqdm.auto import tqdm

    total = sum(s.size for s in sources)
    bar = tqdm(total=total, initial=sum(s.size for s in sources[:start]), unit="B", unit_scale=True,
               desc="tokenizing", disable=not progress)
    stats: dict[int, ReadStats] = {}
    counts = {"tokens": dict.fromkeys(SPLITS, 0), "documents": dict.fromkeys(SPLITS, 0)}
    read = {"position": 0}

    def finish(i: int, future: Future, position: int, last: bool) -> None:
        try:
            result = future.result()
        except BrokenProcessPool as err:
            raise DataError(
                f"a tokenizer worker process died ({err}). Worker processes are started with 'spawn', which "
                "re-imports the calling script: guard a script's top level with `if __name__ == '__main__':`, "
                "or pass workers=1"
            ) from err
        for split, (tokens, lengths) in result.items():
            writers[split].append(tokens, lengths)
            counts["tokens"][split] += int(lengths.sum())
            counts["documents"][split] += len(lengths)
        bar.update(position - read["position"])
        read["position"] = 0 if last else position
        if not last:
            return
        entry = sources[i].signature()
        entry.update({"documents": dict(counts["documents"]), "tokens": dict(counts["tokens"]),
                      "skipped": stats[i].skipped})
        manifest["sources"].append(entry)
        for split in SPLITS:
            counts["tokens"][split] = counts["documents"][split] = 0
            writers[split].sync()
        manifest["splits"] = {split: writers[split].summary() for split in SPLITS}
        _write_manifest(out, manifest)

    pending: deque = deque()
    try:
        try:
            for i, texts, position, last in _chunks(sources, start, reader, batch_docs, stats):
                pending.append((i, encoder.submit(texts), position, last))
                while len(pending) > 2 * max(workers, 1):
                    finish(*pending.popleft())
        except DataError:
            while pending:  # keep (and record) the files finished before the bad one
                finish(*pending.popleft())
            raise
        while pending:
            finish(*pending.popleft())
    finally:
        bar.close()
