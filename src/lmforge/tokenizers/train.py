"""Train byte-level BPE, WordPiece and Unigram tokenizers on UTF-8 text files with the `tokenizers` library.

The three kinds and what they promise:

- `bpe`: byte-level BPE as in GPT-2. The ByteLevel pre-tokenizer maps every byte to a printable
  character and the initial alphabet holds all 256 bytes, so no text is ever unknown and
  `decode(encode(x)) == x` for any string. `add_prefix_space=False`: nothing is added.
- `unigram`: SentencePiece-style Unigram with the Metaspace pre-tokenizer (spaces become `▁`).
  Exact round trips come from *byte fallback*: the 256 pieces `<0x00>` ... `<0xFF>` are added to the
  vocabulary, and a character the training text never showed is spelled as its UTF-8 bytes instead
  of `<unk>` (we chose this over a "large enough character coverage", which still loses unseen
  characters). No dummy prefix is prepended (`prepend_scheme="never"`), which is what keeps
  leading spaces and text around special tokens exact.
- `wordpiece`: BERT-style, with BERT's normalizer (optional lower-casing, CJK characters split into
  single-character words) and pre-tokenizer (split on whitespace and punctuation). It is *not*
  lossless: decoding gives the normalized words joined by spaces.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from lmforge.tokenizers.specials import SpecialTokenPreset, resolve_preset
from lmforge.tokenizers.tokenizer import Tokenizer

Kind = Literal["bpe", "wordpiece", "unigram"]
KINDS: tuple[str, ...] = ("bpe", "wordpiece", "unigram")

# The special-token preset used when `special_tokens` is None.
DEFAULT_PRESET: dict[str, str] = {"bpe": "gpt", "wordpiece": "bert", "unigram": "t5"}

BYTE_PIECES: list[str] = [f"<0x{b:02X}>" for b in range(256)]


class TrainingDataError(ValueError):
    """A training file cannot be used as text (names the file and where the problem is)."""


def check_files(files: Sequence[str | Path]) -> list[Path]:
    """The files as paths, after checking that there is at least one and that each is a readable file."""
    if isinstance(files, (str, Path)):
        files = [files]
    if not files:
        raise ValueError("no training files given: pass one or more UTF-8 text files")
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"training file not found: {path}")
        if not path.is_file():
            raise TrainingDataError(f"training file is not a regular file: {path}")
    return paths


def iter_training_text(
    files: Sequence[str | Path], batch_lines: int = 1000, chunk_bytes: int = 1 << 20
) -> Iterator[list[str]]:
    """Yield the files' lines (newlines kept) in batches, streaming; invalid UTF-8 raises TrainingDataError.

    The error names the file, the byte offset (0-based) and line (1-based) of the first bad byte.
    """
    for path in check_files(files):
        decoder = codecs.getincrementaldecoder("utf-8")()
        fed = 0  # bytes given to the decoder so far
        newlines = 0  # b"\n" in those bytes
        tail = ""  # an unfinished line carried to the next chunk
        batch: list[str] = []
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(chunk_bytes)
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as err:
                    offset = fed - pending + err.start
                    line = newlines + chunk[: max(0, offset - fed)].count(b"\n") + 1
                    bad = err.object[err.start]
                    raise TrainingDataError(
                        f"{path}: not valid UTF-8: byte 0x{bad:02x} at byte offset {offset} (line {line}); "
                        "training files must be UTF-8 text"
                    ) from None
                fed += len(chunk)
                newlines += chunk.count(b"\n")
                lines = (tail + text).split("\n")
                tail = lines.pop()
                batch.extend(line + "\n" for line in lines)
                if not chunk:
                    break
                if len(batch) >= batch_lines:
                    yield batch
                    batch = []
        if tail:
            batch.append(tail)
        if batch:
            yield batch


def train_tokenizer(
    files: Sequence[str | Path],
    kind: Kind = "bpe",
    vocab_size: int = 8000,
    special_tokens: str | Sequence[str] | SpecialTokenPreset | None = None,
    min_frequency: int = 2,
    lowercase: bool = False,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a `kind` tokenizer of `vocab_size` ids on UTF-8 text files.

    `special_tokens` is a preset name ("bert", "gpt", "llama", "t5", "chat"; see
    `SPECIAL_TOKEN_PRESETS`), a list of tokens, or None / "auto" for the kind's usual family (bpe: gpt,
    wordpiece: bert, unigram: t5). The special tokens get ids 0, 1, ... in the preset's order and
    are counted in `vocab_size`. `min_frequency` applies to BPE/WordPiece merges. `lowercase`
    lower-cases the text first (and so gives up exact round trips for bpe and unigram).
    BPE training is reproducible; the library's WordPiece and Unigram trainers are not bit for bit,
    so save a trained tokenizer rather than training it again.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    paths = check_files(files)
    preset = resolve_preset(special_tokens, DEFAULT_PRESET[kind])
    tokens = list(preset.tokens)
    roles = dict(preset.roles)
    if kind in ("wordpiece", "unigram") and "unk" not in roles:  # these models need an unknown token
        roles["unk"] = "[UNK]" if kind == "wordpiece" else "<unk>"
        tokens.append(roles["unk"])
    needed = len(tokens) + (256 if kind in ("bpe", "unigram") else 0)
    if vocab_size <= needed:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer: its {len(tokens)} special tokens"
            + (" and 256 byte tokens" if needed > len(tokens) else "")
            + f" already take {needed} ids"
        )

    if kind == "bpe":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    elif kind == "wordpiece":
        backend = Backend(models.WordPiece(unk_token=roles["unk"]))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=tokens,
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
    else:
        backend = Backend(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                # Text that spells a byte piece, like "<0x41>", must not be read as that piece:
                # isolating its "<" keeps such text out of the byte pieces' reach.
                pre_tokenizers.Split(Regex(r"<(?=0x[0-9A-F]{2}>)"), behavior="isolated"),
                pre_tokenizers.Metaspace(prepend_scheme="never"),
            ]
        )
        backend.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="never")]
        )
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size - 256,  # the byte pieces are added after training
            special_tokens=tokens,
            unk_token=roles["unk"],
            show_progress=show_progress,
        )
    if lowercase and kind != "wordpiece":
        backend.normalizer = normalizers.Lowercase()

    backend.train_from_iterator(iter_training_text(paths), trainer=trainer)
    if kind == "unigram":
        backend = _add_byte_fallback(backend)
    _set_post_processor(backend, preset, kind)
    return Tokenizer(backend, roles)


def _add_byte_fallback(backend: Backend) -> Backend:
    """Append the 256 byte pieces to a trained Unigram model and switch byte fallback on."""
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    known = {piece for piece, _ in vocab}
    # The lowest score: byte pieces are only used for characters that have no piece at all.
    floor = min((score for _, score in vocab if score < 0), default=-20.0) - 10.0
    vocab.extend([piece, floor] for piece in BYTE_PIECES if piece not in known)
    data["model"]["byte_fallback"] = True
    return Backend.from_str(json.dumps(data))


def _set_post_processor(backend: Backend, preset: SpecialTokenPreset, kind: str) -> None:
    """Wrap sequences in the preset's template; byte-level BPE without one gets the ByteLevel processor."""
    if preset.single:
        used = {
            word.split(":")[0] for template in (preset.single, preset.pair or "") for word in template.split()
        }
        specials = [(t, backend.token_to_id(t)) for t in preset.tokens if t in used]
        backend.post_processor = processors.TemplateProcessing(
            single=preset.single, pair=preset.pair, special_tokens=specials
        )
    elif kind == "bpe":
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
