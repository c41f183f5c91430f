"""`lmforge.data.prepare` and `TokenDataset`: counts, EOS separation, split, dtype, manifest, resume, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import DOCUMENTS, CharTokenizer, tiny_tokenizer, write_jsonl, write_text

from lmforge.data import (
    DataError,
    DataWarning,
    TokenDataset,
    TokenizerMismatch,
    is_validation,
    prepare,
    read_manifest,
)


def run(files, out, tok=None, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("val_fraction", 0.0)
    kwargs.setdefault("progress", False)
    return prepare([str(f) for f in files], tok or tiny_tokenizer(), out, **kwargs)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def test_token_counts_match_direct_encoding(tmp_path):
    tok = tiny_tokenizer()
    text = write_text(tmp_path / "a.txt", DOCUMENTS[:20])
    jsonl = write_jsonl(tmp_path / "b.jsonl", DOCUMENTS[20:])
    manifest = run([text, jsonl], tmp_path / "out", val_fraction=0.2)
    expected = {"train": [], "val": []}
    for doc in DOCUMENTS:
        expected["val" if is_validation(doc, 0.2, 0) else "train"].append(tok.encode(doc) + [tok.eos_id])
    for split in ("train", "val"):
        ds = TokenDataset(tmp_path / "out", split)
        flat = [i for doc in expected[split] for i in doc]
        assert ds.num_documents == len(expected[split]) == manifest["splits"][split]["documents"]
        assert ds.num_tokens == len(flat) == manifest["splits"][split]["tokens"]
        assert ds.array().tolist() == flat
        for i, doc in enumerate(expected[split]):  # every document ends with EOS, which separates them
            assert ds.document(i).tolist() == doc[:-1]
            assert ds.document(i, with_eos=True)[-1] == tok.eos_id
    assert manifest["sources"][0]["documents"]["train"] + manifest["sources"][0]["documents"]["val"] == 20


def test_split_is_by_document_and_deterministic(tmp_path):
    tok = tiny_tokenizer()
    src = write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    run([src], tmp_path / "one", val_fraction=0.3, seed=7)
    run([src], tmp_path / "two", val_fraction=0.3, seed=7)
    run([src], tmp_path / "other", val_fraction=0.3, seed=8)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    assert shard_bytes(tmp_path / "one") != shard_bytes(tmp_path / "other")

    def texts(folder, split):
        ds = TokenDataset(folder, split)
        return [tok.decode(d.tolist()) for d in ds.documents()]

    train, val = texts(tmp_path / "one", "train"), texts(tmp_path / "one", "val")
    assert set(train).isdisjoint(val)  # no document is in both splits
    assert sorted(train + val) == sorted(DOCUMENTS)
    assert val == [d for d in DOCUMENTS if is_validation(d, 0.3, 7)]
    assert 0 < len(val) < len(DOCUMENTS)


def test_dtype_and_manifest_contents(tmp_path):
    tok = tiny_tokenizer()
    src = write_text(tmp_path / "a.txt", DOCUMENTS[:10])
    run([src], tmp_path / "out", val_fraction=0.0)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["version"] == 1 and manifest["complete"] is True
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"] == {"fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size,
                                     "eos_id": tok.eos_id, "separator": "<|endoftext|>", "bos_id": None}
    assert TokenDataset(tmp_path / "out").separator == "<|endoftext|>"
    assert manifest["settings"]["val_fraction"] == 0.0
    train = manifest["splits"]["train"]
    assert train["documents"] == 10 and manifest["splits"]["val"] == {"tokens": 0, "documents": 0, "shards": []}
    shard = train["shards"][0]
    assert (tmp_path / "out" / shard["name"]).stat().st_size == 2 * train["tokens"]
    offsets = np.load(tmp_path / "out" / shard["index"])
    assert offsets[0] == 0 and offsets[-1] == train["tokens"] and len(offsets) == 11
    source = manifest["sources"][0]
    assert source["path"] == str(src.resolve()) and source["size"] == src.stat().st_size
    assert source["tokens"]["train"] == train["tokens"] and source["skipped"] == 0
    assert "created" in manifest


def test_uint32_when_the_vocabulary_is_large(tmp_path):
    src = write_text(tmp_path / "a.txt", ["hello 世界", "more text"])
    manifest = run([src], tmp_path / "out", tok=CharTokenizer(vocab_size=70_000), val_fraction=0.0)
    assert manifest["dtype"] == "uint32"
    ds = TokenDataset(tmp_path / "out")
    assert ds.array().dtype == np.uint32
    assert ds.document(0).tolist() == [ord(c) for c in "hello 世界"]


def test_shards_hold_whole_documents(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    manifest = run([src], tmp_path / "out", val_fraction=0.0, shard_tokens=120)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3
    ds = TokenDataset(tmp_path / "out")
    for shard in shards:
        offsets = np.load(tmp_path / "out" / shard["index"])
        lengths = np.diff(offsets)
        assert shard["tokens"] <= 120 or len(lengths) == 1  # only a lone long document overflows
        data = np.fromfile(tmp_path / "out" / shard["name"], dtype=np.uint16)
        assert (data[offsets[1:] - 1] == ds.eos_id).all()
    assert ds.num_documents == len(DOCUMENTS)


def test_resume_after_an_interruption_gives_identical_shards(tmp_path):
    files = [write_jsonl(tmp_path / f"{k}.jsonl", DOCUMENTS[k * 10 : k * 10 + 10]) for k in range(3)]
    opts = {"val_fraction": 0.25, "shard_tokens": 150, "batch_docs": 2}
    run(files, tmp_path / "oneshot", **opts)

    # Interrupted: the third file has a bad byte near its end; two chunks of it are written before the error.
    good = files[2].read_bytes()
    files[2].write_bytes(good + b'{"text": "bad \xff byte"}\n')
    with pytest.raises(DataError, match="byte offset"):
        run(files, tmp_path / "resumed", **opts)
    partial = read_manifest(tmp_path / "resumed")
    assert partial["complete"] is False and len(partial["sources"]) == 2
    with pytest.raises(DataError, match="has not finished"):
        TokenDataset(tmp_path / "resumed")
    files[2].write_bytes(good)
    run(files, tmp_path / "resumed", **opts)
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "oneshot")

    # Extended: prepare one file, then all three.
    run(files[:1], tmp_path / "extended", **opts)
    run(files, tmp_path / "extended", **opts)
    assert shard_bytes(tmp_path / "extended") == shard_bytes(tmp_path / "oneshot")
    one, ext = read_manifest(tmp_path / "oneshot"), read_manifest(tmp_path / "extended")
    assert one["splits"] == ext["splits"]
    for a, b in zip(one["sources"], ext["sources"], strict=True):
        assert {**a, "mtime_ns": 0} == {**b, "mtime_ns": 0}  # file 2 was rewritten in between


def test_rerun_is_a_no_op_and_changed_settings_are_refused(tmp_path):
    src = write_text(tmp_path / "a.txt", DOCUMENTS[:5])
    first = run([src], tmp_path / "out")
    assert run([src], tmp_path / "out")["updated"] == first["updated"]
    with pytest.raises(DataError, match=r"val_fraction 0.0 there, 0.5 now.*overwrite"):
        run([src], tmp_path / "out", val_fraction=0.5)
    with pytest.raises(DataError, match="tokenizer fingerprint"):
        run([src], tmp_path / "out", tok=CharTokenizer(vocab_size=1000))
    other = write_text(tmp_path / "b.txt", DOCUMENTS[5:9])
    with pytest.raises(DataError, match="is a different file"):
        run([other], tmp_path / "out")
    manifest = run([other], tmp_path / "out", overwrite=True)
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 4


def test_an_empty_validation_split_is_warned_about(tmp_path):
    src = write_text(tmp_path / "a.txt", ["just one document"])
    with pytest.warns(DataWarning, match="none of the 1 documents fell into the validation split"):
        run([src], tmp_path / "out", val_fraction=0.05)


def test_workers_give_the_same_shards(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    run([src], tmp_path / "w1", val_fraction=0.2, batch_docs=4)
    run([src], tmp_path / "w2", val_fraction=0.2, batch_docs=4, workers=2)
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")


def test_fingerprint_mismatch_names_both_hashes_and_the_manifest(tmp_path):
    tok = tiny_tokenizer()
    src = write_text(tmp_path / "a.txt", DOCUMENTS[:5])
    run([src], tmp_path / "out")
    TokenDataset(tmp_path / "out", "train", tokenizer=tok)  # the right one passes
    other = CharTokenizer(vocab_size=300)
    with pytest.raises(TokenizerMismatch) as err:
        TokenDataset(tmp_path / "out", "train", tokenizer=other)
    message = str(err.value)
    assert tok.fingerprint() in message and other.fingerprint() in message
    assert str(tmp_path / "out" / "manifest.json") in message


def test_prepared_folder_errors(tmp_path):
    with pytest.raises(DataError, match="manifest.json not found"):
        TokenDataset(tmp_path)
    src = write_text(tmp_path / "a.txt", DOCUMENTS[:5])
    run([src], tmp_path / "out")
    with pytest.raises(DataError, match="no split 'test'"):
        TokenDataset(tmp_path / "out", "test")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (tmp_path / "out" / manifest["splits"]["train"]["shards"][0]["name"]).write_bytes(b"\0\0")
    with pytest.raises(DataError, match="train_000.bin: 2 bytes"):
        TokenDataset(tmp_path / "out")


def test_bad_arguments(tmp_path):
    src = write_text(tmp_path / "a.txt", DOCUMENTS[:2])
    with pytest.raises(DataError, match="val_fraction"):
        run([src], tmp_path / "out", val_fraction=1.0)
    with pytest.raises(DataError, match="on_decode_error"):
        run([src], tmp_path / "out", on_decode_error="ignore")
    with pytest.raises(DataError, match="does not fit uint16"):
        run([src], tmp_path / "out", tok=CharTokenizer(vocab_size=70_000), dtype="uint16")
    no_eos = CharTokenizer()
    no_eos.eos_id = None
    with pytest.raises(DataError, match=r"no EOS or SEP token to end each document.*--separator.*--special-tokens"):
        run([src], tmp_path / "out", tok=no_eos)


def test_a_tokenizer_without_eos_ends_documents_with_sep(tmp_path):
    src = write_text(tmp_path / "a.txt", ["hello", "world"])
    sep_only = CharTokenizer(tag="sep")
    sep_only.eos_id, sep_only.sep_id = None, 7
    manifest = run([src], tmp_path / "out", tok=sep_only)
    assert manifest["tokenizer"]["eos_id"] == 7 and manifest["tokenizer"]["separator"] is None  # no id_to_token
    ds = TokenDataset(tmp_path / "out")
    assert ds.eos_id == 7 and ds.array().tolist() == [*map(ord, "hello"), 7, *map(ord, "world"), 7]


def test_wordpiece_documents_end_with_sep(tmp_path):
    """The BERT path: a WordPiece tokenizer (bert preset, no EOS) prepares shards separated by [SEP]."""
    from lmforge.tokenizers import train_tokenizer

    src = write_text(tmp_path / "a.txt", DOCUMENTS)
    tok = train_tokenizer([src], kind="wordpiece", vocab_size=400, show_progress=False)
    assert tok.eos_id is None and tok.sep_id is not None
    manifest = run([src], tmp_path / "out", tok=tok)
    assert manifest["tokenizer"]["eos_id"] == tok.sep_id and manifest["tokenizer"]["separator"] == "[SEP]"
    ds = TokenDataset(tmp_path / "out", tokenizer=tok)
    assert ds.eos_id == tok.sep_id and ds.separator == "[SEP]"
    offsets = ds.document_offsets()
    assert (ds.array()[offsets[1:] - 1] == tok.sep_id).all()
    for i, doc in enumerate(DOCUMENTS):
        assert ds.document(i).tolist() == tok.encode(doc, add_special_tokens=False)  # no [CLS] / [SEP] inside


def test_separator_can_be_named(tmp_path):
    from lmforge.tokenizers import train_tokenizer

    src = write_text(tmp_path / "a.txt", DOCUMENTS[:8])
    tok = train_tokenizer([src], kind="bpe", vocab_size=300, special_tokens="llama", show_progress=False)
    manifest = run([src], tmp_path / "out", tok=tok, separator="<pad>")
    assert manifest["tokenizer"]["eos_id"] == tok.pad_id and manifest["tokenizer"]["separator"] == "<pad>"
    ds = TokenDataset(tmp_path / "out")
    assert ds.document(0, with_eos=True)[-1] == tok.pad_id
    with pytest.raises(DataError, match=rf"documents end with id {tok.pad_id} there, {tok.eos_id} now"):
        run([src], tmp_path / "out", tok=tok)  # the default separator, </s>, into the same folder
    with pytest.raises(DataError, match=r"separator '\[SEP\]' is not in the tokenizer's vocabulary"):
        run([src], tmp_path / "other", tok=tok, separator="[SEP]")
    with pytest.raises(DataError, match="needs a tokenizer with token_to_id"):
        run([src], tmp_path / "other", tok=CharTokenizer(), separator="</s>")
