"""`lmforge tokenizer train|encode`: the verb functions, parsed from their signatures by jsonargparse."""

from __future__ import annotations

import inspect
import typing

import pytest
from jsonargparse import CLI

from lmforge.cli import main
from lmforge.cli import tokenizer as cli
from lmforge.tokenizers import Tokenizer


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
    with pytest.raises(FileNotFoundError, match="missing.txt"):
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
