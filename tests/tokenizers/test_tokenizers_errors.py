"""Bad input gives errors that name the file and the place: missing files, bad UTF-8, bad options."""

from __future__ import annotations

import pytest

from lmforge.tokenizers import Tokenizer, TrainingDataError, iter_training_text, train_tokenizer
from lmforge.tokenizers.specials import parse_special_tokens


def test_empty_file_list():
    with pytest.raises(ValueError, match="no training files"):
        train_tokenizer([], kind="bpe")


def test_missing_file_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("hello\n")
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer([good, missing], kind="bpe", show_progress=False)


def test_unknown_kind_and_preset(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer([f], kind="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown special-token preset 'bret'.*bert"):
        train_tokenizer([f], kind="bpe", special_tokens="bret")


def test_vocab_too_small(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(ValueError, match="vocab_size 200 is too small"):
        train_tokenizer([f], kind="bpe", vocab_size=200)


def test_undecodable_byte_names_file_offset_and_line(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    bad = tmp_path / "latin1.txt"
    head = "first line\n今天天气真好\ncaf".encode()
    bad.write_bytes(head + b"\xe9 au lait\n")  # "café" written in Latin-1
    with pytest.raises(TrainingDataError, match=rf"latin1\.txt.*0xe9 at byte offset {len(head)} \(line 3\)"):
        train_tokenizer([good, bad], kind="bpe", vocab_size=300, show_progress=False)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 1 << 20])
def test_streaming_reader(tmp_path, chunk_bytes):
    text = "one 今天\ntwo 🙂🚀\n\nthree without newline"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    lines = [
        line for batch in iter_training_text([f], batch_lines=2, chunk_bytes=chunk_bytes) for line in batch
    ]
    assert lines == ["one 今天\n", "two 🙂🚀\n", "\n", "three without newline"]

    head = text.encode()
    f.write_bytes(head + b"\n\x80tail")  # a stray continuation byte after a line break
    with pytest.raises(TrainingDataError, match=rf"byte 0x80 at byte offset {len(head) + 1} \(line 5\)"):
        list(iter_training_text([f], chunk_bytes=chunk_bytes))
    f.write_bytes(head + "🙂".encode()[:2])  # a character cut off at the end of the file
    with pytest.raises(TrainingDataError, match=rf"at byte offset {len(head)} "):
        list(iter_training_text([f], chunk_bytes=chunk_bytes))


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_file(broken)


def test_parse_special_tokens():
    assert parse_special_tokens("auto") is None
    assert parse_special_tokens("chat") == "chat"
    assert parse_special_tokens("<s>, </s>,<pad>") == ["<s>", "</s>", "<pad>"]
    assert parse_special_tokens("<|endoftext|>") == ["<|endoftext|>"]
