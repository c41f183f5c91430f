"""Training byte-level BPE, Unigram and WordPiece tokenizers; round trips, presets, batches, saving."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import pre_tokenizers

from lmforge.tokenizers import SPECIAL_TOKEN_PRESETS, Tokenizer, train_tokenizer

# Text the tokenizers never saw in training: unseen scripts, a lone emoji, control characters,
# a literal byte-piece spelling, runs of spaces.
EXTRA = [
    "",
    " ",
    "Ω ☃ 漢字 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩‍👩‍👧",
    "x<0x41>y and <0xZZ> and <0x7f>",
    "tabs\tand\nnew\r\nlines\n\n",
    "    four leading, two trailing  ",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences) -> list[Path]:
    """Two small UTF-8 training files made of the shared test sentences."""
    folder = tmp_path_factory.mktemp("corpus")
    a, b = folder / "a.txt", folder / "b.txt"
    a.write_text("\n".join(sentences[:10] * 30) + "\n", encoding="utf-8")
    b.write_text("\n".join(sentences[10:] * 30), encoding="utf-8")  # no final newline
    return [a, b]


@pytest.fixture(scope="module")
def trained(corpus):
    """kind -> a tokenizer trained on the corpus with the kind's default preset (cached per module)."""
    cache: dict[str, Tokenizer] = {}

    def get(kind: str) -> Tokenizer:
        if kind not in cache:
            cache[kind] = train_tokenizer(corpus, kind=kind, vocab_size=600, show_progress=False)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_round_trip_is_exact(trained, sentences, kind):
    tok = trained(kind)
    for text in sentences + EXTRA:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, (kind, text, tok.tokenize(text))
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode_batch(sentences + EXTRA) == [tok.encode(t) for t in sentences + EXTRA]
    assert tok.decode_batch(tok.encode_batch(sentences)) == sentences


def test_bpe_knows_every_byte(trained):
    tok = trained("bpe")
    vocab = tok.get_vocab()
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)
    assert tok.vocab_size == 600
    rng = random.Random(0)
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x0, 0x1F)]
    for _ in range(50):
        text = "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(1, 30)))
        assert tok.decode(tok.encode(text)) == text


def test_unigram_spells_unseen_characters_as_bytes(trained):
    tok = trained("unigram")
    snowman = "☃"  # not in the corpus
    assert tok.tokenize(snowman) == [f"<0x{b:02X}>" for b in snowman.encode("utf-8")]
    assert tok.unk_id is not None and tok.unk_id not in tok.encode("Ω ☃ 漢字 " + snowman)
    # A text spelling a byte piece is not read as that byte.
    assert tok.decode(tok.encode("<0x41>")) == "<0x41>"
    assert tok.vocab_size <= 600


def test_wordpiece_keeps_words_up_to_normalization(corpus, sentences):
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=600, lowercase=True, show_progress=False)

    def words(text: str) -> list[str]:
        pieces = tok.tokenize(text)
        out: list[str] = []
        for piece in pieces:
            if piece.startswith("##"):
                out[-1] += piece[2:]
            else:
                out.append(piece)
        return out

    assert words("A man is eating food.") == ["a", "man", "is", "eating", "food", "."]
    assert words("今天天气真好。") == ["今", "天", "天", "气", "真", "好", "。"]  # one word per CJK character
    assert words("I love 北京!") == ["i", "love", "北", "京", "!"]
    assert tok.decode(tok.encode("A man is eating food.")) == "a man is eating food."
    for text in sentences:  # every training sentence is covered without [UNK]
        assert tok.unk_id not in tok.encode(text)
    cased = train_tokenizer(corpus, kind="wordpiece", vocab_size=600, show_progress=False)
    assert cased.decode(cased.encode("A man is eating food.")) == "A man is eating food."


def test_wordpiece_default_is_bert(trained):
    tok = trained("wordpiece")
    ids = tok.encode("A man.")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.decode(ids) == "A man."
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] A man. [SEP]"


@pytest.mark.parametrize("preset", sorted(SPECIAL_TOKEN_PRESETS))
def test_preset_tokens_and_ids(corpus, preset):
    spec = SPECIAL_TOKEN_PRESETS[preset]
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=400, special_tokens=preset, show_progress=False)
    for expected_id, token in enumerate(spec.tokens):  # the preset's order is the id order
        assert tok.token_to_id(token) == expected_id
        assert tok.id_to_token(expected_id) == token
    for role in ("pad", "unk", "bos", "eos", "cls", "sep", "mask"):
        token = spec.roles.get(role)
        assert getattr(tok, f"{role}_id") == (None if token is None else tok.token_to_id(token))
    assert tok.special_ids == set(range(len(spec.tokens)))

    plain = tok.encode("A man.", add_special_tokens=False)
    wrapped = tok.encode("A man.")
    expected = {
        "bert": [tok.cls_id, *plain, tok.sep_id],
        "llama": [tok.bos_id, *plain],
        "t5": [*plain, tok.eos_id],
        "gpt": plain,
        "chat": plain,
    }[preset]
    assert wrapped == expected
    for token in spec.tokens:  # special tokens typed in the text are never split
        assert tok.encode(f"x{token}y", add_special_tokens=False).count(tok.token_to_id(token)) == 1


def test_chat_markers_round_trip(corpus):
    tok = train_tokenizer(corpus, kind="unigram", vocab_size=600, special_tokens="chat", show_progress=False)
    chat = "<|im_start|>user\n今天天气真好?<|im_end|>\n<|im_start|>assistant\nYes 🙂<|im_end|>\n"
    ids = tok.encode(chat)
    assert ids.count(tok.bos_id) == 2 and ids.count(tok.eos_id) == 2
    assert tok.decode(ids, skip_special_tokens=False) == chat
    assert tok.decode(ids) == chat.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_custom_special_tokens(corpus):
    tok = train_tokenizer(
        corpus, kind="bpe", vocab_size=400, special_tokens=["<s>", "</s>", "<sep2>"], show_progress=False
    )
    assert [tok.token_to_id(t) for t in ["<s>", "</s>", "<sep2>"]] == [0, 1, 2]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, None)
    with pytest.raises(ValueError, match="no padding token"):
        tok(["a", "b c"])
    tok.set_special_token("pad", "</s>")
    assert tok(["a", "b c"])["input_ids"].shape[0] == 2


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_save_and_reload(trained, sentences, tmp_path, kind):
    tok = trained(kind)
    folder = tok.save(tmp_path / "tok")
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    for again in (Tokenizer.from_pretrained(folder), Tokenizer.from_file(folder / "tokenizer.json")):
        assert again.encode_batch(sentences + EXTRA) == tok.encode_batch(sentences + EXTRA)
        assert again.special_tokens == tok.special_tokens
        assert again.vocab_size == tok.vocab_size
        assert again.fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_transformers_loads_saved_folder(trained, sentences, tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    tok = trained(kind)
    folder = tok.save(tmp_path / "tok")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    for text in sentences + EXTRA:
        ids = tok.encode(text)
        assert fast(text)["input_ids"] == ids
        assert auto(text)["input_ids"] == ids
        assert auto.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert auto.pad_token_id == tok.pad_id
    assert auto.eos_token_id == tok.eos_id
    ours = tok(sentences, return_tensors=None)
    theirs = auto(sentences, padding=True)
    for key in ours:
        assert ours[key] == theirs[key], key


def test_batch_padding_and_masks_by_hand(corpus):
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=400, special_tokens="bert", show_progress=False)
    texts = ["A man.", "The quick brown fox jumps over the lazy dog."]
    singles = [tok.encode(t) for t in texts]
    longest = max(map(len, singles))

    batch = tok(texts)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch["input_ids"].shape == (2, longest) and batch["input_ids"].dtype == torch.long
    for row, ids in enumerate(singles):
        pad = longest - len(ids)
        assert batch["input_ids"][row].tolist() == ids + [tok.pad_id] * pad
        assert batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * pad
        assert batch["token_type_ids"][row].tolist() == [0] * longest

    left = tok(texts, padding_side="left")
    for row, ids in enumerate(singles):
        pad = longest - len(ids)
        assert left["input_ids"][row].tolist() == [tok.pad_id] * pad + ids
        assert left["attention_mask"][row].tolist() == [0] * pad + [1] * len(ids)
    tok.padding_side = "left"
    assert torch.equal(tok(texts)["input_ids"], left["input_ids"])
    tok.padding_side = "right"

    fixed = tok(texts, padding="max_length", max_length=longest + 3)
    assert fixed["input_ids"].shape == (2, longest + 3)
    assert fixed["attention_mask"].sum(1).tolist() == [len(ids) for ids in singles]

    cut = tok(texts, truncation=True, max_length=5)  # [CLS] + 3 tokens + [SEP]
    assert cut["input_ids"].shape == (2, 5)
    for row, text in enumerate(texts):
        body = tok.encode(text, add_special_tokens=False)
        expected = [tok.cls_id, *body[:3], tok.sep_id]
        expected += [tok.pad_id] * (5 - len(expected))
        assert cut["input_ids"][row].tolist() == expected

    pair = tok(["A man."], ["A dog."], return_tensors=None)
    a, b = tok.encode("A man.", False), tok.encode("A dog.", False)
    assert pair["input_ids"] == [[tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]]
    assert pair["token_type_ids"] == [[0] * (len(a) + 2) + [1] * (len(b) + 1)]

    ragged = tok(texts, padding=False, return_tensors=None)
    assert ragged["input_ids"] == singles
    with pytest.raises(ValueError, match="different lengths"):
        tok(texts, padding=False)
    assert tok.encode("A man.") == singles[0]  # no padding or truncation left behind


def test_gpt_style_batches_have_no_token_type_ids(trained):
    tok = trained("bpe")
    batch = tok(["a", "b c d"], return_tensors=None)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"][0][1:] == [tok.pad_id] * (len(batch["input_ids"][1]) - 1)


def test_bpe_training_is_reproducible(corpus, trained):
    again = train_tokenizer(corpus, kind="bpe", vocab_size=600, show_progress=False)
    assert again.fingerprint() == trained("bpe").fingerprint()


def test_fingerprint(trained):
    bpe, unigram = trained("bpe"), trained("unigram")
    digest = bpe.fingerprint()
    assert len(digest) == 64 and int(digest, 16) >= 0
    bpe(["a", "b c"], truncation=True, max_length=2)
    assert bpe.fingerprint() == digest  # per-call padding/truncation leave no trace
    assert unigram.fingerprint() != digest


def _documents_three_ways(folder, sentences):
    """The same documents as blank-line separated text and as JSON lines (field "body")."""
    docs = [" ".join(sentences[i : i + 3]).strip() for i in range(0, len(sentences), 3)] * 10
    text = folder / "docs.txt"
    text.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    jsonl = folder / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)),
                     encoding="utf-8")
    return docs, text, jsonl


def test_jsonl_trains_on_the_text_not_the_syntax(tmp_path, sentences):
    """A .jsonl file trains the same tokenizer as its documents written as plain text."""
    _, text, jsonl = _documents_three_ways(tmp_path, sentences)
    plain = train_tokenizer([text], kind="bpe", vocab_size=400, show_progress=False)
    from_jsonl = train_tokenizer([jsonl], kind="bpe", vocab_size=400, text_key="body", show_progress=False)
    assert from_jsonl.fingerprint() == plain.fingerprint()

    def learned_quotes(tok):  # merged tokens holding '"' (the texts hold none; JSON is full of them)
        return [t for t in tok.get_vocab() if '"' in t and len(t) > 1]

    assert learned_quotes(from_jsonl) == []
    # The JSON itself, read as text, teaches the tokenizer its syntax: what `tokenizer train` used to do.
    as_text = train_tokenizer([jsonl], kind="bpe", vocab_size=400, input_format="text", show_progress=False)
    assert learned_quotes(as_text)


def test_parquet_trains_like_text(tmp_path, sentences):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    docs, text, _ = _documents_three_ways(tmp_path, sentences)
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": docs}), parquet)
    plain = train_tokenizer([text], kind="bpe", vocab_size=400, show_progress=False)
    from_parquet = train_tokenizer([parquet], kind="bpe", vocab_size=400, text_key="body", show_progress=False)
    assert from_parquet.fingerprint() == plain.fingerprint()


SEPARATORS = {"bert": "[SEP]", "gpt": "<|endoftext|>", "llama": "</s>", "t5": "</s>", "chat": "<|im_end|>"}


@pytest.mark.parametrize("preset", sorted(SPECIAL_TOKEN_PRESETS))
def test_document_separator_per_preset(corpus, preset):
    """The token that ends each document in prepared data: eos when the preset has one, else sep."""
    assert SPECIAL_TOKEN_PRESETS[preset].separator == SEPARATORS[preset]
    kind = "wordpiece" if preset == "bert" else "bpe"
    tok = train_tokenizer(corpus, kind=kind, vocab_size=400, special_tokens=preset, show_progress=False)
    assert tok.separator == SEPARATORS[preset]
    assert tok.separator_id == tok.token_to_id(SEPARATORS[preset])
    assert tok.separator_id == (tok.eos_id if tok.eos_id is not None else tok.sep_id)
    none = train_tokenizer(corpus, kind="bpe", vocab_size=400, special_tokens=["<s>", "<pad>"], show_progress=False)
    assert none.separator is None and none.separator_id is None


def test_set_template_is_saved_for_transformers(corpus, sentences, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=400, special_tokens=["<|endoftext|>", "[CLS]", "[SEP]"],
                          show_progress=False)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    plain = {text: tok.encode(text, add_special_tokens=False) for text in sentences}
    assert all(tok.encode(text) == ids for text, ids in plain.items())  # no template yet: nothing added

    tok.set_template("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1")
    for text, ids in plain.items():
        assert tok.encode(text) == [cls, *ids, sep]
        assert tok.decode(tok.encode(text)) == text  # the template's tokens are special: decode drops them
    a, b = sentences[0], sentences[10]
    pair = tok([a], [b], padding=False, return_tensors=None)["input_ids"][0]
    assert pair == [cls, *plain[a], sep, *plain[b], sep]

    folder = tok.save(tmp_path / "tok")
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    again = Tokenizer.from_pretrained(folder)
    for text, ids in plain.items():
        assert auto(text)["input_ids"] == [cls, *ids, sep] == again.encode(text)
    assert auto(a, b)["input_ids"] == pair

    with pytest.raises(ValueError, match=r"names tokens not in the vocabulary: \[BOS\]"):
        tok.set_template("[BOS] $A [SEP]")
    assert tok.encode(a) == [cls, *plain[a], sep]  # a refused template changes nothing
    tok.set_template(None)
    assert tok.encode(a) == plain[a] and tok.decode(tok.encode(a)) == a
