"""Train byte-level BPE, WordPiece and Unigram tokenizers with the `tokenizers` library.

Training files are read exactly as `lmforge data prepare` reads them (`lmforge.data.sources`): paths,
folders or globs; plain UTF-8 text (documents separated by blank lines, or `text_mode` "lines" /
"file"), JSON lines (the `text_key` field) and Parquet (the `text_key` column). So a tokenizer learns
the documents it will later tokenize, never JSON syntax, and bad input gives the same errors (file,
line, byte offset), raised as `TrainingDataError`.

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

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from lmforge.data.errors import DataError
from lmforge.tokenizers.errors import TrainingDataError
from lmforge.tokenizers.specials import SpecialTokenPreset, resolve_preset
from lmforge.tokenizers.tokenizer import Tokenizer

if TYPE_CHECKING:
    from lmforge.data.sources import Source

Kind = Literal["bpe", "wordpiece", "unigram"]
KINDS: tuple[str, ...] = ("bpe", "wordpiece", "unigram")

# The special-token preset used when `special_tokens` is None.
DEFAULT_PRESET: dict[str, str] = {"bpe": "gpt", "wordpiece": "bert", "unigram": "t5"}

BYTE_PIECES: list[str] = [f"<0x{b:02X}>" for b in range(256)]


def training_sources(
    files: Sequence[str | Path] | str | Path,
    input_format: str | None = None,
    text_mode: str = "paragraphs",
    on_decode_error: str = "fatal",
    on_empty: str = "fatal",
) -> list[Source]:
    """The files that paths, folders and globs name, after checking the reader options; else `TrainingDataError`."""
    from lmforge.data.sources import check_reader_options, expand_inputs

    if not isinstance(files, (str, Path)) and not files:
        raise TrainingDataError("no training files given: pass one or more text, JSON-lines or Parquet files")
    try:
        check_reader_options(text_mode, on_decode_error, on_empty)
        return expand_inputs(files, input_format)
    except DataError as err:
        raise TrainingDataError(str(err)) from None


def iter_training_text(
    files: Sequence[str | Path],
    batch_docs: int = 1000,
    *,
    text_key: str = "text",
    text_mode: str = "paragraphs",
    input_format: str | None = None,
    on_decode_error: str = "fatal",
    on_empty: str = "fatal",
) -> Iterator[list[str]]:
    """Yield the files' documents in batches, streaming, read as `lmforge data prepare` reads them.

    `files` are paths, folders or globs; the other options are `lmforge.data.read_documents`'.
    Bad input (a missing file, invalid UTF-8, malformed JSON, an empty file, or no document at all)
    raises `TrainingDataError` naming the file and, where there is one, the line and byte offset.
    """
    from lmforge.data.sources import read_documents

    sources = training_sources(files, input_format, text_mode, on_decode_error, on_empty)
    try:
        batch: list[str] = []
        total = 0
        for source in sources:
            for text, _ in read_documents(source, text_key=text_key, text_mode=text_mode,
                                          on_decode_error=on_decode_error, on_empty=on_empty):
                batch.append(text)
                if len(batch) >= batch_docs:
                    total += len(batch)
                    yield batch
                    batch = []
        total += len(batch)
        if batch:
            yield batch
        if total == 0:
            names = ", ".join(str(s.path) for s in sources)
            raise TrainingDataError(f"no text to train on: every training file was empty or skipped ({names})")
    except TrainingDataError:
        raise
    except DataError as err:  # the shared reader's message, as this module's error type
        raise TrainingDataError(str(err)) from None


def train_tokenizer(
    files: Sequence[str | Path],
    kind: Kind = "bpe",
    vocab_size: int = 8000,
    special_tokens: str | Sequence[str] | SpecialTokenPreset | None = None,
    min_frequency: int = 2,
    lowercase: bool = False,
    show_progress: bool = True,
    *,
    text_key: str = "text",
    text_mode: str = "paragraphs",
    input_format: str | None = None,
    on_decode_error: str = "fatal",
    on_empty: str = "fatal",
) -> Tokenizer:
    """Train a `kind` tokenizer of `vocab_size` ids on text, JSON-lines or Parquet files.

    `special_tokens` is a preset name ("bert", "gpt", "llama", "t5", "chat"; see
    `SPECIAL_TOKEN_PRESETS`), a list of tokens, or None / "auto" for the kind's usual family (bpe: gpt,
    wordpiece: bert, unigram: t5). The special tokens get ids 0, 1, ... in the preset's order and
    are counted in `vocab_size`. `min_frequency` applies to BPE/WordPiece merges. `lowercase`
    lower-cases the text first (and so gives up exact round trips for bpe and unigram). The files
    and the reader options (`text_key`, `text_mode`, `input_format`, `on_decode_error`, `on_empty`)
    are those of `lmforge.data.prepare`; see `iter_training_text`.
    BPE training is reproducible; the library's WordPiece and Unigram trainers are not bit for bit,
    so save a trained tokenizer rather than training it again.
    Bad input or options raise `TrainingDataError`.
    """
    if kind not in KINDS:
        raise TrainingDataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)} (--kind)")
    reader = {"text_key": text_key, "text_mode": text_mode, "input_format": input_format,
              "on_decode_error": on_decode_error, "on_empty": on_empty}
    preset = resolve_preset(special_tokens, DEFAULT_PRESET[kind])
    tokens = list(preset.tokens)
    roles = dict(preset.roles)
    if kind in ("wordpiece", "unigram") and "unk" not in roles:  # these models need an unknown token
        roles["unk"] = "[UNK]" if kind == "wordpiece" else "<unk>"
        tokens.append(roles["unk"])
    needed = len(tokens) + (256 if kind in ("bpe", "unigram") else 0)
    if vocab_size <= needed:
        raise TrainingDataError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer: its {len(tokens)} special tokens"
            + (" and 256 byte tokens" if needed > len(tokens) else "")
            + f" already take {needed} ids; pass --vocab-size {needed + 1} or more"
        )
    if min_frequency < 0:
        raise TrainingDataError(f"min_frequency must be 0 or more, got {min_frequency} (--min-frequency)")
    training_sources(files, input_format, text_mode, on_decode_error, on_empty)  # fail now, not mid-training

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

    try:
        backend.train_from_iterator(iter_training_text(files, **reader), trainer=trainer)
    except TrainingDataError:
        raise
    except Exception as err:  # the Rust trainer raises plain Exceptions
        if kind == "unigram" and "not large enough" in str(err):
            raise _unigram_too_small(files, reader, vocab_size, len(tokens), lowercase) from None
        raise
    trained = backend.get_vocab_size(with_added_tokens=True)
    if kind == "wordpiece" and trained > vocab_size:  # the trainer keeps every character, whatever the size
        raise TrainingDataError(
            f"vocab_size {vocab_size} is too small for a wordpiece tokenizer on these files: WordPiece keeps "
            f"every character of the training text (alone and as a ##continuation), which takes {trained} ids "
            f"here; pass --vocab-size {trained} or more (more leaves room for whole words)"
        )
    if kind == "unigram":
        if trained + 256 > vocab_size:  # the trainer overshot
            raise _unigram_too_small(files, reader, vocab_size, len(tokens), lowercase)
        backend = _add_byte_fallback(backend)
    _set_post_processor(backend, preset, kind)
    return Tokenizer(backend, roles)


def _unigram_too_small(
    files: Sequence[str | Path], reader: dict, vocab_size: int, num_special: int, lowercase: bool
) -> TrainingDataError:
    """The error for a Unigram vocabulary too small for the text's alphabet, with the size that fits.

    The trainer keeps every character it saw; with fewer free ids than that it fails, and with just
    about as many it returns more pieces than asked for. It needs one id beyond the characters, the
    special tokens and the 256 byte pieces.
    """
    chars: set[str] = set()
    for batch in iter_training_text(files, **reader):
        for text in batch:
            chars.update(text.lower() if lowercase else text)
    if " " in chars:  # the Metaspace pre-tokenizer spells a space as "▁"
        chars = (chars - {" "}) | {"\u2581"}
    needed = len(chars) + num_special + 256 + 1
    return TrainingDataError(
        f"vocab_size {vocab_size} is too small for a unigram tokenizer on these files: Unigram keeps every "
        f"distinct character of the training text as a piece ({len(chars)} here), besides the {num_special} "
        f"special tokens and 256 byte pieces; pass --vocab-size {needed} or more, or train --kind bpe, "
        "which needs no more than its 256 bytes"
    )


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
