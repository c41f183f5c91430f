"""A tiny prepared corpus and tokenizer shared by the trainer tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = "the cat sat on a mat while dog ran far away and we went home 今天 天气 真好 我们 去 公园 散步".split()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared data folder, tokenizer folder): ~40k tokens of a random-word corpus, BPE vocab 300."""
    from lmforge.data.shards import prepare
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    text = root / "corpus.txt"
    docs = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) for _ in range(500))
    text.write_text("\n\n".join(docs), encoding="utf-8")
    tok = train_tokenizer([text], kind="bpe", vocab_size=300, show_progress=False)
    tok.save(root / "tok")
    prepare([text], root / "tok", root / "data", progress=False, workers=1)
    return root / "data", root / "tok"

