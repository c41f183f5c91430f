"""`lmforge tokenizer train|encode`: train a tokenizer on text files, or show how a text is tokenized."""

from __future__ import annotations

from lmforge.tokenizers import Tokenizer, parse_special_tokens, train_tokenizer

SAMPLE_TEXT = "Hello, world! 今天天气真好 🙂"


def train(
    files: list[str],
    kind: str = "bpe",
    vocab_size: int = 8000,
    special_tokens: str = "auto",
    output: str = "tokenizer",
    min_frequency: int = 2,
    lowercase: bool = False,
) -> None:
    """Train a tokenizer on UTF-8 text files and save it as a folder.

    Args:
        files: UTF-8 text files to train on.
        kind: bpe (byte-level, lossless), wordpiece (BERT) or unigram (SentencePiece-style, lossless).
        vocab_size: Number of ids, special tokens included.
        special_tokens: A preset (bert, gpt, llama, t5, chat), comma-separated tokens such as
            "<s>,</s>,<pad>", or auto: the kind's usual family (bpe: gpt, wordpiece: bert, unigram: t5).
        output: Folder to write tokenizer.json and tokenizer_config.json into.
        min_frequency: Minimum count of a pair to be merged (bpe, wordpiece).
        lowercase: Lower-case the text before tokenizing.
    """
    tok = train_tokenizer(
        files,
        kind=kind,
        vocab_size=vocab_size,
        special_tokens=parse_special_tokens(special_tokens),
        min_frequency=min_frequency,
        lowercase=lowercase,
    )
    folder = tok.save(output)
    print(f"saved {kind} tokenizer to {folder}: vocab size {tok.vocab_size}")
    print("special tokens:", ", ".join(f"{role}={token}" for role, token in tok.special_tokens.items()))
    _show(tok, SAMPLE_TEXT, add_special_tokens=True)


def encode(tokenizer: str, text: str, add_special_tokens: bool = True) -> None:
    """Print the ids and tokens of a text.

    Args:
        tokenizer: A tokenizer folder (with tokenizer.json, vocab.txt, or vocab.json + merges.txt) or a
            tokenizer.json file.
        text: The text to encode.
        add_special_tokens: Add the family's special tokens (e.g. [CLS] ... [SEP]).
    """
    _show(Tokenizer.from_pretrained(tokenizer), text, add_special_tokens=add_special_tokens)


def _show(tok: Tokenizer, text: str, add_special_tokens: bool) -> None:
    ids = tok.encode(text, add_special_tokens=add_special_tokens)
    print(f"text:   {text!r}")
    print(f"ids:    {ids}")
    print(f"tokens: {[tok.id_to_token(i) for i in ids]}")
    print(f"decode: {tok.decode(ids)!r}")
