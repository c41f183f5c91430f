"""The default corpus: cleaning helpers (no assets needed) and a real build from `make assets` (marked)."""

from __future__ import annotations

import hashlib
import json

import pytest
from _assets import require_asset

from lmforge.assets import AssetMissing
from lmforge.data import build_default_corpus, default_corpus_path, read_documents
from lmforge.data.corpus import _is_headline, _sample, _untag, as_paragraph, clean_fortune, read_fortunes


def test_clean_fortune_strips_colour_codes_and_overstrikes():
    raw = "\x1b[32m《感遇》\x1b[m\n_\x08H_\x08i there\xa0you  \n\tindented\x07\n"
    assert clean_fortune(raw) == "《感遇》\nHi there you\n    indented"


def test_read_fortunes_splits_records(tmp_path):
    path = tmp_path / "fortunes"
    path.write_text("One.\n%\nTwo,\n  -- someone\n%\n\n%\n")
    assert read_fortunes(path) == ["One.", "Two,\n  -- someone"]


def test_peoples_daily_helpers():
    assert _untag("迈向/v  充满/v  [中共/j  中央/n]nt  ，/w") == "迈向充满中共中央，"
    assert _is_headline("北京举行新年音乐会")
    assert not _is_headline("谢谢！（新华社北京１２月３１日电）".rstrip("）") + "。")
    assert not _is_headline("（新华社记者樊如钧摄）")


def test_sample_is_seeded_within_budget_and_in_source_order():
    docs = [(f"doc{i}", "x" * (10 + i % 7)) for i in range(200)]
    chosen = _sample("src", docs, 500, seed=0)
    assert chosen == sorted(chosen) and chosen == _sample("src", docs, 500, seed=0)
    assert 480 <= sum(len(docs[i][1]) for i in chosen) <= 500
    assert chosen != _sample("src", docs, 500, seed=1) and chosen != list(range(len(chosen)))


def test_plain_text_paragraphs_read_back_as_the_documents(tmp_path):
    """default.txt: one paragraph per document, so `text_mode="paragraphs"` gives the documents back."""
    docs = ["Genesis 1\n\nIn the beginning...", "    an indented fortune\n  -- someone", "一\n \n\n二", "plain"]
    assert as_paragraph(docs[0]) == "Genesis 1\nIn the beginning..."
    path = tmp_path / "default.txt"
    path.write_text("\n\n".join(as_paragraph(d) for d in docs) + "\n", encoding="utf-8")
    back = [text for text, _ in read_documents(path)]
    assert back == [as_paragraph(d) for d in docs] == ["Genesis 1\nIn the beginning...",
                                                      "an indented fortune\n  -- someone", "一\n二", "plain"]


def test_missing_assets_raise_asset_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_ASSETS", str(tmp_path))
    with pytest.raises(AssetMissing, match="make assets"):
        default_corpus_path()


@pytest.mark.assets
def test_build_default_corpus(tmp_path):
    path = require_asset(build_default_corpus, tmp_path / "corpus", 1.0)
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text(encoding="utf-8"))
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert manifest["documents"] == len(docs) and manifest["file_bytes"] == path.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert 0.9e6 <= manifest["bytes"] <= 1e6  # close to, never above, max_mb
    assert manifest["languages"]["en"] > 0.45e6 and manifest["languages"]["zh"] > 0.45e6
    sources = {s["name"]: s for s in manifest["sources"]}
    assert set(sources) == {"fortunes", "web-bible", "fortunes-zh", "peoples-daily"}
    for source in sources.values():
        assert source["documents"] > 10 and source["licence"] and source["version"] != "unknown"
    by_source = {name: [d["text"] for d in docs if d["source"] == name] for name in sources}
    assert any(text.startswith("Genesis ") or "Yahweh" in text for text in by_source["web-bible"])
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in by_source["peoples-daily"])
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in by_source["fortunes-zh"])
    english = "".join(by_source["fortunes"] + by_source["web-bible"])
    assert sum(ch.isascii() for ch in english) / len(english) > 0.99
    assert all("\x1b" not in d["text"] and d["text"].strip() and d["text"].rstrip() == d["text"] for d in docs)

    text = tmp_path / "corpus" / manifest["text_file"]  # default.txt: the same documents as plain text
    assert manifest["text_file_bytes"] == text.stat().st_size
    assert manifest["text_sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert [t for t, _ in read_documents(text)] == [as_paragraph(d["text"]) for d in docs]


@pytest.mark.assets
def test_default_corpus_path_builds_once():
    path = require_asset(default_corpus_path)
    assert path.name == "default.jsonl" and path.parent.name == "corpus"
    mtime = path.stat().st_mtime_ns
    assert default_corpus_path() == path and path.stat().st_mtime_ns == mtime
