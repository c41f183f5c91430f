"""Test helpers for tests/data: a small BPE tokenizer trained in-process, behind lmforge's tokenizer interface."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


class TinyTokenizer:
    """`tokenizers.Tokenizer` with the interface `lmforge.data` expects (as `lmforge.tokenizers` provides)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 300) -> TinyTokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TinyTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.tok.token_to_id(EOS)

    @property
    def bos_id(self) -> None:
        return None

    def fingerprint(self) -> str:
        canonical = json.dumps(json.loads(self.tok.to_str()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def id_to_token(self, id: int) -> str | None:
        return self.tok.id_to_token(id)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


class CharTokenizer:
    """One id per character (its code point, capped), EOS = 0: picklable, and any vocabulary size."""

    def __init__(self, vocab_size: int = 70_000, tag: str = "") -> None:
        self.vocab_size = vocab_size
        self.eos_id: int | None = 0
        self.sep_id: int | None = None
        self.bos_id = None
        self.tag = tag

    def fingerprint(self) -> str:
        return hashlib.sha256(f"char:{self.vocab_size}:{self.tag}".encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return [min(ord(c), self.vocab_size - 1) or 1 for c in text]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(t) for t in texts]


# Documents written for these tests: English and Chinese, short and long, all distinct.
DOCUMENTS = [
    f"Document {i}: {'The quick brown fox jumps over the lazy dog. ' * (1 + i % 4)}{'今天天气真好，我们去公园散步吧。' * (i % 3)}".strip()
    for i in range(40)
]


def write_text(path: Path, docs: list[str]) -> Path:
    """Write documents as blank-line separated paragraphs."""
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    """Write documents as JSON lines."""
    path.write_text("".join(json.dumps({key: d, "n": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    return path


_TOKENIZER: list[TinyTokenizer] = []


def tiny_tokenizer() -> TinyTokenizer:
    """A byte-level BPE (vocabulary 300) trained on `DOCUMENTS`, trained once per session."""
    if not _TOKENIZER:
        _TOKENIZER.append(TinyTokenizer.train(DOCUMENTS, vocab_size=300))
    return _TOKENIZER[0]


def run_lmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real `lmforge` command line (`python -m lmforge.cli`) in `cwd`; stdout and stderr as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
