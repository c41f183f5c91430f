"""`lmforge data prepare|corpus`: the CLI verbs, called directly and through the `lmforge` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _assets import require_asset
from _data_helpers import DOCUMENTS, run_lmforge, write_jsonl, write_text

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


def test_shard_tokens_default_is_the_library_default():
    """The verb spells the default out (so the module imports no numpy); it must stay the library's."""
    import inspect

    from lmforge.data.shards import DEFAULT_SHARD_TOKENS

    assert inspect.signature(data_cli.prepare).parameters["shard_tokens"].default == DEFAULT_SHARD_TOKENS


def test_the_module_imports_no_heavy_dependency():
    """`lmforge --help` must be fast: the verb module imports lmforge.data and numpy inside the functions."""
    heavy = ("numpy", "torch", "tokenizers", "lmforge.data.shards", "lmforge.data.corpus", "lmforge.tokenizers")
    code = f"import sys, lmforge.cli.data; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bert_path_through_the_real_command_line(tmp_path):
    """`lmforge tokenizer train corpus.txt --kind wordpiece` then `lmforge data prepare corpus.txt --tokenizer
    tokenizer`: this failed with "the tokenizer has no EOS token"; BERT's documents end with [SEP]."""
    from lmforge.tokenizers import Tokenizer

    write_text(tmp_path / "corpus.txt", DOCUMENTS)
    trained = run_lmforge("tokenizer", "train", "corpus.txt", "--kind", "wordpiece", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "document separator (lmforge data prepare): [SEP]" in trained.stdout
    prepared = run_lmforge("data", "prepare", "corpus.txt", "--tokenizer", "tokenizer", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert "documents end with [SEP]" in prepared.stdout
    tok = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tok.eos_id is None
    documents = 0
    for split in ("train", "val"):
        ds = TokenDataset(tmp_path / "out" / "data", split, tokenizer=tok)
        assert ds.eos_id == tok.sep_id == tok.token_to_id("[SEP]")
        offsets = ds.document_offsets()
        assert (ds.array()[offsets[1:] - 1] == tok.sep_id).all()
        documents += ds.num_documents
    assert documents == len(DOCUMENTS)


def test_no_separator_error_through_the_command_line(tmp_path):
    write_text(tmp_path / "corpus.txt", DOCUMENTS)
    trained = run_lmforge("tokenizer", "train", "corpus.txt", "--vocab-size", "300", "--special-tokens", "<s>,<pad>",
                          cwd=tmp_path)
    assert trained.returncode == 0 and "document separator: none" in trained.stdout
    failed = run_lmforge("data", "prepare", "corpus.txt", cwd=tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("lmforge: error: the tokenizer has no EOS or SEP token")
    fixed = run_lmforge("data", "prepare", "corpus.txt", "--separator", "<s>", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert TokenDataset(tmp_path / "out" / "data").separator == "<s>"


@pytest.mark.assets
def test_readme_sequence(tmp_path):
    """README: `data corpus`, then `tokenizer train` and `data prepare` on its default.jsonl, all on the CLI."""
    from lmforge.data.corpus import corpus_sources
    from lmforge.tokenizers import Tokenizer

    require_asset(corpus_sources)
    steps = [
        ["data", "corpus", "--output", "runs/corpus", "--max_mb", "0.3"],
        ["tokenizer", "train", "runs/corpus/default.jsonl", "--kind", "bpe", "--vocab-size", "8000", "--output", "tok/"],
        ["data", "prepare", "runs/corpus/default.jsonl", "--tokenizer", "tok/", "--output", "runs/data"],
    ]
    for step in steps:
        done = run_lmforge(*step, cwd=tmp_path)
        assert done.returncode == 0, (step, done.stderr)
    assert (tmp_path / "runs" / "corpus" / "default.txt").is_file()
    tok = Tokenizer.from_pretrained(tmp_path / "tok")
    assert not [t for t in tok.get_vocab() if '"text' in t or 'source"' in t]  # learned the text, not the JSON
    train = TokenDataset(tmp_path / "runs" / "data", "train", tokenizer=tmp_path / "tok")
    assert train.separator == "<|endoftext|>"
    val = TokenDataset(tmp_path / "runs" / "data", "val")
    lines = (tmp_path / "runs" / "corpus" / "default.jsonl").read_text(encoding="utf-8").splitlines()
    texts = sorted(json.loads(line)["text"] for line in lines)
    decoded = sorted(tok.decode(d.tolist()) for ds in (train, val) for d in ds.documents())
    assert decoded == texts  # every document, English and Chinese, back exactly


def test_tokenizer_errors_are_one_line(tmp_path, capsys):
    from lmforge.cli import main

    corpus = write_text(tmp_path / "a.txt", DOCUMENTS[:4])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    for tokenizer, message in [
        (tmp_path / "nowhere", f"tokenizer '{tmp_path / 'nowhere'}': no such file or folder; train one with"),
        (tmp_path / "broken", f"{tmp_path / 'broken' / 'tokenizer.json'}: not a valid tokenizer.json"),
    ]:
        with pytest.raises(SystemExit) as done:
            main(["data", "prepare", str(corpus), "--tokenizer", str(tokenizer), "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.startswith(f"lmforge: error: {message}"), err
