"""`lmforge data prepare|corpus`: tokenize text into memory-mapped shards; build the offline default corpus."""

from __future__ import annotations

from typing import Literal

from lmforge.data.shards import DEFAULT_SHARD_TOKENS


def prepare(
    files: list[str],
    tokenizer: str = "tokenizer",
    output: str = "out/data",
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_key: str = "text",
    text_mode: Literal["paragraphs", "lines", "file"] = "paragraphs",
    input_format: Literal["text", "jsonl", "parquet"] | None = None,
    on_decode_error: Literal["fatal", "skip"] = "fatal",
    on_empty: Literal["fatal", "skip"] = "fatal",
    dtype: Literal["uint16", "uint32"] | None = None,
    overwrite: bool = False,
) -> None:
    """Tokenize text, JSON-lines or Parquet files into document-separated token shards with a manifest.

    `lmforge data prepare corpus/*.jsonl --tokenizer tok --output out/data`. Run it again with the same
    arguments to resume an interrupted run; add files at the end of the list to extend a finished one.

    Args:
        files: Input files, folders or globs ("corpus/*.jsonl"). Text is UTF-8.
        tokenizer: Tokenizer folder or tokenizer.json (its fingerprint is stored in the manifest); the
            default is the folder `lmforge tokenizer train` writes.
        output: Folder for train_NNN.bin / val_NNN.bin shards, their .idx.npy offsets and manifest.json.
        val_fraction: Share of documents (not tokens) that go to the validation split.
        seed: Seed of the document-level train/validation split.
        workers: Tokenizer processes (1: tokenize in this process).
        shard_tokens: Most tokens per shard file (a longer document gets a shard of its own).
        text_key: Field (JSON lines) or column (Parquet) that holds the text.
        text_mode: How plain text is cut into documents: blank-line separated paragraphs, lines, or one
            document per file.
        input_format: Read every file as this format instead of guessing from its suffix.
        on_decode_error: Undecodable bytes: fatal stops with the file and byte offset, skip drops that
            document with a warning.
        on_empty: A file without documents: fatal stops, skip warns and goes on.
        dtype: Token storage; default uint16 when the vocabulary fits, else uint32.
        overwrite: Replace shards in output that were prepared with other files or settings.
    """
    from lmforge.data.shards import prepare as run

    manifest = run(
        files,
        tokenizer,
        output,
        val_fraction=val_fraction,
        seed=seed,
        dtype=dtype,
        workers=workers,
        shard_tokens=shard_tokens,
        text_key=text_key,
        text_mode=text_mode,
        input_format=input_format,
        on_decode_error=on_decode_error,
        on_empty=on_empty,
        overwrite=overwrite,
    )
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['tokens']:,} tokens, {info['documents']:,} documents, {len(info['shards'])} shard(s)")
    print(f"wrote {output}/manifest.json ({manifest['dtype']}, tokenizer {manifest['tokenizer']['fingerprint'][:12]})")


def corpus(output: str | None = None, max_mb: float = 4.0, seed: int = 0) -> None:
    """Build the default English + Chinese corpus (default.jsonl) from the assets fetched by `make assets`.

    Args:
        output: Folder to write default.jsonl and manifest.json into; default: the asset cache's corpus/.
        max_mb: Size of the corpus text in MB (10^6 bytes of UTF-8), half English, half Chinese.
        seed: Seed of the per-source document sample.
    """
    import json

    from lmforge.data.corpus import build_default_corpus, default_corpus_path

    if output is None:
        path = default_corpus_path(max_mb=max_mb, seed=seed)
    else:
        path = build_default_corpus(output, max_mb=max_mb, seed=seed)
    manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
    for source in manifest["sources"]:
        print(f"{source['name']:>14} ({source['language']}): {source['documents']:>6,} documents, "
              f"{source['bytes']:>10,} bytes  [{source['licence']}]")
    print(f"wrote {path}: {manifest['documents']:,} documents, {manifest['bytes']:,} bytes of text")
