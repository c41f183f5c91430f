"""`lmforge tokenizer train|encode`: train a tokenizer on text files, or show how a text is tokenized.

Only typing is imported here (jsonargparse reads the signatures' hints from this module's globals);
`lmforge.tokenizers` is imported inside the functions, so `lmforge --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

SAMPLE_TEXT = "Hello, world! 今天天气真好 🙂"


def train(
    files: list[str],
    kind: Literal["bpe", "wordpiece", "unigram"] = "bpe",
    vocab_size: int = 8000,
    special_tokens: str = "auto",
    output: str = "tokenizer",
    min_frequency: int = 2,
    lowercase: bool = False,
    text_key: str = "text",
    text_mode: Literal["paragraphs", "lines", "file"] = "paragraphs",
    input_format: Literal["text", "jsonl", "parquet"] | None = None,
    on_decode_error: Literal["fatal", "skip"] = "fatal",
    on_empty: Literal["fatal", "skip"] = "fatal",
) -> None:
    """Train a tokenizer on text, JSON-lines or Parquet files and save it as a folder.

    The files are read as `lmforge data prepare` reads them, so `lmforge tokenizer train
    corpus.jsonl` learns the documents' text, not their JSON.

    Args:
        files: Input files, folders or globs ("corpus/*.jsonl"): UTF-8 text, JSON lines or Parquet.
        kind: bpe (byte-level, lossless), wordpiece (BERT) or unigram (SentencePiece-style, lossless).
        vocab_size: Number of ids, special tokens included.
        special_tokens: A preset (bert, gpt, llama, t5, chat), comma-separated tokens such as
            "<s>,</s>,<pad>", or auto: the kind's usual family (bpe: gpt, wordpiece: bert, unigram: t5).
        output: Folder to write tokenizer.json and tokenizer_config.json into.
        min_frequency: Minimum count of a pair to be merged (bpe, wordpiece).
        lowercase: Lower-case the text before tokenizing.
        text_key: Field (JSON lines) or column (Parquet) that holds the text.
        text_mode: How plain text is cut into documents: blank-line separated paragraphs, lines, or one
            document per file.
        input_format: Read every file as this format instead of guessing from its suffix.
        on_decode_error: Undecodable bytes: fatal stops with the file and byte offset, skip drops that
            document with a warning.
        on_empty: A file without documents: fatal stops, skip warns and goes on.
    """
    from lmforge.tokenizers import parse_special_tokens, train_tokenizer

    tok = train_tokenizer(
        files,
        kind=kind,
        vocab_size=vocab_size,
        special_tokens=parse_special_tokens(special_tokens),
        min_frequency=min_frequency,
        lowercase=lowercase,
        text_key=text_key,
        text_mode=text_mode,
        input_format=input_format,
        on_decode_error=on_decode_error,
        on_empty=on_empty,
    )
    folder = tok.save(output)
    print(f"saved {kind} tokenizer to {folder}: vocab size {tok.vocab_size}")
    print("special tokens:", ", ".join(f"{role}={token}" for role, token in tok.special_tokens.items()))
    if tok.separator is not None:
        print(f"document separator (lmforge data prepare): {tok.separator}")
    else:
        print("document separator: none (no eos or sep token); `lmforge data prepare` will need --separator TOKEN")
    _show(tok, SAMPLE_TEXT, add_special_tokens=True)


def encode(tokenizer: str, text: str, add_special_tokens: bool = True) -> None:
    """Print the ids and tokens of a text.

    Args:
        tokenizer: A tokenizer folder (with tokenizer.json, vocab.txt, or vocab.json + merges.txt) or a
            tokenizer.json file.
        text: The text to encode.
        add_special_tokens: Add the family's special tokens (e.g. [CLS] ... [SEP]).
    """
    from lmforge.tokenizers import Tokenizer

    _show(Tokenizer.from_pretrained(tokenizer), text, add_special_tokens=add_special_tokens)


def _show(tok: Tokenizer, text: str, add_special_tokens: bool) -> None:
    ids = tok.encode(text, add_special_tokens=add_special_tokens)
    print(f"text:   {text!r}")
    print(f"ids:    {ids}")
    print(f"tokens: {[tok.id_to_token(i) for i in ids]}")
    print(f"decode: {tok.decode(ids)!r}")
