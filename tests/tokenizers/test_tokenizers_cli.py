"""`lmforge tokenizer train|encode`: the verb functions, parsed from their signatures by jsonargparse."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import typing

import pytest
from jsonargparse import CLI

from lmforge.cli import main
from lmforge.cli import tokenizer as cli
from lmforge.tokenizers import Tokenizer, TrainingDataError


@pytest.fixture(scope="module")
def verbs():
    """The `tokenizer` verbs, as `lmforge.cli` maps them."""
    return {"tokenizer": {"train": cli.train, "encode": cli.encode}}


@pytest.fixture(scope="module")
def texts(tmp_path_factory, sentences) -> list[str]:
    folder = tmp_path_factory.mktemp("cli")
    a, b = folder / "a.txt", folder / "b.txt"
    a.write_text("\n".join(sentences[:10] * 20) + "\n", encoding="utf-8")
    b.write_text("\n".join(sentences[10:] * 20) + "\n", encoding="utf-8")
    return [str(a), str(b)]


def test_train_then_encode(verbs, texts, tmp_path, capsys):
    out = tmp_path / "wp"
    args = ["tokenizer", "train", f"[{texts[0]}, {texts[1]}]", "--kind", "wordpiece", "--vocab_size", "500"]
    CLI(verbs, args=[*args, "--output", str(out)], as_positional=True)
    printed = capsys.readouterr().out
    tok = Tokenizer.from_pretrained(out)
    assert f"vocab size {tok.vocab_size}" in printed
    assert tok.vocab_size <= 500
    assert tok.cls_id is not None and tok.mask_id is not None  # "auto" gives wordpiece the bert tokens

    CLI(verbs, args=["tokenizer", "encode", str(out), "今天天气真好"], as_positional=True)
    printed = capsys.readouterr().out
    assert f"ids:    {tok.encode('今天天气真好')}" in printed
    assert "'今'" in printed


def test_train_with_token_list(verbs, texts, tmp_path, capsys):
    out = tmp_path / "uni"
    args = ["tokenizer", "train", f"[{texts[0]}]", "--kind", "unigram", "--vocab_size", "400"]
    CLI(verbs, args=[*args, "--special_tokens", "<s>,</s>,<pad>", "--output", str(out)], as_positional=True)
    tok = Tokenizer.from_pretrained(out)
    assert [tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>")] == [0, 1, 2]
    assert "decode: 'Hello, world! 今天天气真好 🙂'" in capsys.readouterr().out  # unigram is lossless


def test_train_error_names_the_file(verbs, tmp_path):
    with pytest.raises(TrainingDataError, match="missing.txt: no such file"):
        CLI(verbs, args=["tokenizer", "train", f"[{tmp_path / 'missing.txt'}]"], as_positional=True)


def test_first_parameter_is_the_file_list():
    first = next(iter(inspect.signature(cli.train).parameters))
    assert first == "files"
    assert typing.get_type_hints(cli.train)["files"] == list[str]


def test_lmforge_main(texts, tmp_path, capsys):
    out = tmp_path / "bpe"
    main(["tokenizer", "train", *texts, "--kind", "bpe", "--vocab-size", "400", "--output", str(out)])
    assert Tokenizer.from_pretrained(out).vocab_size == 400
    main(["tokenizer", "encode", str(out), "A man is eating food.", "--add-special-tokens", "false"])
    assert "tokens:" in capsys.readouterr().out


def test_kind_choices_are_listed_and_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["tokenizer", "train", "--help"])
    assert done.value.code == 0
    assert "{bpe,wordpiece,unigram}" in capsys.readouterr().out
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(SystemExit) as done:
        main(["tokenizer", "train", str(f), "--kind", "sentencepiece", "--output", str(tmp_path / "tok")])
    assert done.value.code == 2
    assert "sentencepiece" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


@pytest.fixture()
def files(tmp_path, sentences):
    """A small text file, an empty one, and a broken tokenizer folder."""
    (tmp_path / "small.txt").write_text("\n".join(sentences * 5) + "\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{d}/empty.txt"], "{d}/empty.txt: is empty (0 bytes); remove it from the inputs or pass"),
        (["train", "{d}/missing.txt"], "{d}/missing.txt: no such file"),
        (["train", "{d}/small.txt", "--kind", "unigram", "--vocab-size", "300"],
         "vocab_size 300 is too small for a unigram tokenizer on these files"),
        (["train", "{d}/small.txt", "--vocab-size", "100"], "vocab_size 100 is too small for a bpe tokenizer"),
        (["train", "{d}/small.txt", "--special-tokens", "[CLS] [SEP]"], "bad special tokens: '[CLS] [SEP]' holds whitespace"),
        (["train", "{d}/small.txt", "--special-tokens", "bret"], "unknown special-token preset 'bret'"),
        (["encode", "{d}/nowhere", "hi"], "tokenizer not found: {d}/nowhere is neither a folder"),
        (["encode", "{d}/broken", "hi"], "{d}/broken/tokenizer.json: not a valid tokenizer.json"),
    ],
)
def test_bad_input_is_one_line(files, capsys, args, message):
    """Each of these used to be a traceback or silently accepted; now `lmforge: error: ...`, exit status 2."""
    args = [a.format(d=files) for a in args]
    with pytest.raises(SystemExit) as done:
        main(["tokenizer", *args, "--output", str(files / "out")] if args[0] == "train" else ["tokenizer", *args])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error: " + message.format(d=files)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (files / "out").exists()


def test_train_on_json_lines(tmp_path, sentences):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": s}, ensure_ascii=False) + "\n" for s in sentences * 10),
                     encoding="utf-8")
    main(["tokenizer", "train", str(jsonl), "--vocab-size", "400", "--text-key", "body", "--output", str(tmp_path / "t")])
    tok = Tokenizer.from_pretrained(tmp_path / "t")
    assert not [t for t in tok.get_vocab() if '"' in t and len(t) > 1]  # no JSON syntax learned
    assert tok.decode(tok.encode(sentences[0])) == sentences[0]


def test_the_module_imports_no_heavy_dependency():
    """`lmforge --help` must be fast: the verb module imports lmforge.tokenizers inside the functions."""
    code = ("import sys, lmforge.cli.tokenizer; "
            "print(sorted(m for m in ('numpy', 'torch', 'tokenizers', 'lmforge.tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
