"""A tiny sentiment task the fine-tuning and evaluation tests share: each sentence's label is the sentiment word it
holds, among filler words (a module of its own: tests import it by name, as `_assets`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = "good great fine lovely superb".split()
NEGATIVE = "bad awful poor dull terrible".split()
FILLER = "the a movie film plot actor scene story was is and very quite it this".split()


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """`n` rows {"text", "label"}: label "pos" or "neg", the one sentiment word placed among 3-9 filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """`rows` as JSON lines at `path`; returns it."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
