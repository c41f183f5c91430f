"""Bad input gives errors that name the file and the place: missing files, bad UTF-8, bad options."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.data import DataError, DataWarning, prepare
from lmforge.tokenizers import (
    Tokenizer,
    TokenizerError,
    TrainingDataError,
    iter_training_text,
    train_tokenizer,
)
from lmforge.tokenizers.specials import parse_special_tokens


def test_empty_file_list():
    with pytest.raises(TrainingDataError, match="no training files"):
        train_tokenizer([], kind="bpe")


def test_missing_file_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("hello\n")
    missing = tmp_path / "nope.txt"
    with pytest.raises(TrainingDataError, match="nope.txt: no such file"):
        train_tokenizer([good, missing], kind="bpe", show_progress=False)
    with pytest.raises(TrainingDataError, match=r"no files match '.*\*\.jsonl'"):
        train_tokenizer([str(tmp_path / "*.jsonl")], kind="bpe", show_progress=False)


def test_errors_are_data_errors():
    """The command line prints DataErrors as one line; both tokenizer errors are DataErrors and ValueErrors."""
    assert issubclass(TrainingDataError, TokenizerError)
    assert issubclass(TokenizerError, DataError) and issubclass(TokenizerError, ValueError)


def test_unknown_kind_and_preset(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(TrainingDataError, match="unknown tokenizer kind 'sentencepiece'; choose one of bpe"):
        train_tokenizer([f], kind="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(TrainingDataError, match="unknown special-token preset 'bret'.*bert"):
        train_tokenizer([f], kind="bpe", special_tokens="bret")


def test_vocab_too_small(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(TrainingDataError, match="vocab_size 200 is too small.*258 ids; pass --vocab-size 259"):
        train_tokenizer([f], kind="bpe", vocab_size=200)
    with pytest.raises(TrainingDataError, match="min_frequency must be 0 or more"):
        train_tokenizer([f], kind="bpe", vocab_size=300, min_frequency=-1)


def _suggested(err: pytest.ExceptionInfo) -> int:
    return int(re.search(r"pass --vocab-size (\d+) or more", str(err.value)).group(1))


@pytest.mark.parametrize("lowercase", [False, True])
def test_unigram_vocab_smaller_than_the_alphabet(tmp_path, sentences, lowercase):
    """Unigram keeps every character: too few ids used to fail with a bare Rust exception, or overshoot."""
    f = tmp_path / "a.txt"
    f.write_text("\n".join(sentences * 5) + "\n", encoding="utf-8")
    text = "\n".join(sentences * 5)
    chars = set((text.lower() if lowercase else text).replace(" ", "\u2581"))
    minimum = len(chars) + 3 + 256 + 1  # characters, the t5 preset's 3 tokens, the bytes, one more
    for size in (300, minimum - 1):  # the trainer fails, or returns more ids than asked for
        with pytest.raises(TrainingDataError, match=rf"vocab_size {size} is too small for a unigram") as err:
            train_tokenizer([f], kind="unigram", vocab_size=size, lowercase=lowercase, show_progress=False)
        assert f"({len(chars)} here)" in str(err.value) and _suggested(err) == minimum
    tok = train_tokenizer([f], kind="unigram", vocab_size=minimum, lowercase=lowercase, show_progress=False)
    assert tok.vocab_size == minimum


def test_wordpiece_vocab_smaller_than_the_alphabet(tmp_path, sentences):
    f = tmp_path / "a.txt"
    f.write_text("\n".join(sentences * 5) + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match="vocab_size 60 is too small for a wordpiece") as err:
        train_tokenizer([f], kind="wordpiece", vocab_size=60, show_progress=False)
    size = _suggested(err)
    assert size > 60
    assert train_tokenizer([f], kind="wordpiece", vocab_size=size, show_progress=False).vocab_size <= size


def test_undecodable_byte_reads_as_in_prepare(tmp_path):
    """Training files are read by lmforge.data's reader: the same message as `lmforge data prepare`."""
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    bad = tmp_path / "latin1.txt"
    head = "first line\n今天天气真好\ncaf".encode()
    bad.write_bytes(head + b"\xe9 au lait\n\nanother paragraph\n")  # "café" written in Latin-1
    with pytest.raises(TrainingDataError) as err:
        train_tokenizer([good, bad], kind="bpe", vocab_size=300, show_progress=False)
    message = str(err.value)
    assert message.startswith(f"{bad}: line 3, byte offset {len(head)}: undecodable bytes b'\\xe9'")

    class Chars:  # just enough of a tokenizer for prepare to reach the reader
        vocab_size, eos_id, bos_id = 70_000, 0, None

        def fingerprint(self):
            return "chars"

        def encode_batch(self, texts, add_special_tokens=False):
            return [[ord(c) for c in t] for t in texts]

    with pytest.raises(DataError) as prepared:
        prepare([good, bad], Chars(), tmp_path / "out", progress=False, val_fraction=0.0)
    assert str(prepared.value) == message

    # Skipping undecodable documents works as in prepare: the other documents train the tokenizer.
    with pytest.warns(DataWarning, match="skipped the document"):
        tok = train_tokenizer([good, bad], kind="bpe", vocab_size=300, on_decode_error="skip", show_progress=False)
    assert tok.vocab_size > 256


def test_empty_training_file_is_named(tmp_path):
    """An empty file used to train a tokenizer silently; now it is an error naming it (or skipped on request)."""
    good = tmp_path / "good.txt"
    good.write_text("hello world\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(TrainingDataError, match=rf"{re.escape(str(empty))}: is empty \(0 bytes\).*--on_empty skip"):
        train_tokenizer([good, empty], kind="bpe", vocab_size=300, show_progress=False)
    with pytest.raises(TrainingDataError, match=rf"{re.escape(str(blank))}: contains no documents \(only blank"):
        train_tokenizer([blank], kind="bpe", vocab_size=300, show_progress=False)
    with pytest.warns(DataWarning, match="empty.txt: is empty"):
        train_tokenizer([good, empty], kind="bpe", vocab_size=300, on_empty="skip", show_progress=False)
    with pytest.warns(DataWarning), pytest.raises(TrainingDataError, match="no text to train on"):
        train_tokenizer([empty, blank], kind="bpe", vocab_size=300, on_empty="skip", show_progress=False)
    with pytest.raises(TrainingDataError, match="text_mode must be one of"):
        train_tokenizer([good], kind="bpe", vocab_size=300, text_mode="sentences")


def test_jsonl_errors_name_the_line(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "fine"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"docs.jsonl: line 2: no field 'text' \(fields: 'body'\)"):
        train_tokenizer([f], kind="bpe", vocab_size=300, show_progress=False)
    f.write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match="docs.jsonl: line 2: malformed JSON"):
        train_tokenizer([f], kind="bpe", vocab_size=300, show_progress=False)


def test_streaming_reader(tmp_path):
    text = "one 今天\ntwo 🙂🚀\n\nthree without newline"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    assert list(iter_training_text([f])) == [["one 今天\ntwo 🙂🚀", "three without newline"]]
    lines = [doc for batch in iter_training_text([f], batch_docs=2, text_mode="lines") for doc in batch]
    assert lines == ["one 今天", "two 🙂🚀", "three without newline"]
    assert [len(b) for b in iter_training_text([f], batch_docs=2, text_mode="lines")] == [2, 1]
    assert list(iter_training_text([f], text_mode="file")) == [[text]]

    j = tmp_path / "t.jsonl"
    j.write_text("".join(json.dumps({"body": d, "n": i}) + "\n" for i, d in enumerate(["a b", "c"])))
    assert list(iter_training_text([j], text_key="body")) == [["a b", "c"]]
    assert list(iter_training_text([str(tmp_path / "t.*")], text_key="body", text_mode="lines")) == [
        ["a b", "c", "one 今天", "two 🙂🚀", "three without newline"]  # a glob, sorted: t.jsonl, t.txt
    ]

    head = text.encode()
    f.write_bytes(head + b"\n\x80tail")  # a stray continuation byte after a line break
    with pytest.raises(TrainingDataError, match=rf"t.txt: line 5, byte offset {len(head) + 1}: undecodable"):
        list(iter_training_text([f]))


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*lmforge tokenizer train FILES --output"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_file(broken)
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    broken.unlink()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)


def test_parse_special_tokens():
    assert parse_special_tokens("auto") is None
    assert parse_special_tokens("chat") == "chat"
    assert parse_special_tokens("<s>, </s>,<pad>") == ["<s>", "</s>", "<pad>"]
    assert parse_special_tokens("<|endoftext|>") == ["<|endoftext|>"]
    assert parse_special_tokens("<|endoftext|>,") == ["<|endoftext|>"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bret", "unknown special-token preset 'bret'; known presets: bert, gpt"),
        ("Bert", "unknown special-token preset 'Bert'"),
        ("[CLS] [SEP]", r"'\[CLS\] \[SEP\]' holds whitespace \(separate tokens with commas: \[CLS\],\[SEP\]\)"),
        ("bert,<extra>", r"'bert' is a preset name.*\[PAD\],\[UNK\],\[CLS\],\[SEP\],\[MASK\]"),
        ("<s>,</s>,<s>", "'<s>' is repeated"),
        ("<s>,foo", "'foo' is a plain word.*<foo> or \\[FOO\\]"),
    ],
)
def test_special_tokens_that_do_not_parse(spec, message):
    with pytest.raises(TrainingDataError, match=message):
        parse_special_tokens(spec)


def test_bad_special_token_lists_in_python(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\n")
    with pytest.raises(TrainingDataError, match="bad special tokens: '<s>' is repeated; '' is blank"):
        train_tokenizer([f], special_tokens=["<s>", "<s>", ""], show_progress=False)
