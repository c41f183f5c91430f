"""`lmforge data prepare|corpus`: the CLI verbs, called directly and through the `lmforge` command line."""

from __future__ import annotations

import json

import pytest
from _assets import require_asset
from _data_helpers import DOCUMENTS, write_jsonl, write_text

from lmforge.cli import data as data_cli
from lmforge.data import TokenDataset, read_manifest


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer folder made by `lmforge.tokenizers` (what users pass on the command line)."""
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("cli_tok")
    text = write_text(root / "train.txt", DOCUMENTS)
    tok = train_tokenizer([text], kind="bpe", vocab_size=300, special_tokens="gpt", show_progress=False)
    return tok.save(root / "tok")


def test_prepare_verb(tmp_path, tokenizer_dir, capsys):
    files = [write_text(tmp_path / "a.txt", DOCUMENTS[:20]), write_jsonl(tmp_path / "b.jsonl", DOCUMENTS[20:])]
    data_cli.prepare([str(tmp_path / "*.*")], str(tokenizer_dir), str(tmp_path / "out"), workers=1, val_fraction=0.1)
    out = capsys.readouterr().out
    assert "train:" in out and "val:" in out and "manifest.json" in out
    manifest = read_manifest(tmp_path / "out")
    assert [s["path"] for s in manifest["sources"]] == [str(f.resolve()) for f in files]
    train = TokenDataset(tmp_path / "out", "train", tokenizer=str(tokenizer_dir))  # fingerprint matches
    val = TokenDataset(tmp_path / "out", "val", tokenizer=str(tokenizer_dir))
    assert train.num_documents + val.num_documents == len(DOCUMENTS)


def test_prepare_through_the_command_line(tmp_path, tokenizer_dir, capsys):
    from lmforge.cli import main

    a = write_text(tmp_path / "a.txt", DOCUMENTS[:10])
    b = write_text(tmp_path / "b.txt", DOCUMENTS[10:12])
    main(["data", "prepare", str(a), str(b), "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "out"),
          "--workers", "1", "--val-fraction", "0", "--text-mode", "lines"])
    manifest = read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["documents"] == 12 and manifest["settings"]["text_mode"] == "lines"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(SystemExit):
        main(["data", "prepare", str(bad), "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "o2")])
    assert f"{bad}: line 2, byte offset 3" in capsys.readouterr().err


@pytest.mark.assets
def test_corpus_verb(capsys):
    from lmforge.data.corpus import default_corpus_path

    require_asset(data_cli.corpus)  # the default place: built once, then reused
    out = capsys.readouterr().out
    assert "peoples-daily" in out and "web-bible" in out and "default.jsonl" in out
    manifest = json.loads((default_corpus_path().parent / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["max_mb"] == 4.0 and manifest["languages"]["zh"] > 1.9e6
