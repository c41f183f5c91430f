"""The `lmforge` command line: each verb is one module whose typed function *is* the interface.

jsonargparse turns the functions' signatures and docstrings into parsers (and later YAML configs
with command-line overrides). Two conveniences are added here, before parsing:
`--vocab-size` is accepted for `--vocab_size`, and a verb whose first parameter is a list takes
its items as plain positional words (`lmforge tokenizer train a.txt b.txt --kind bpe`).
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable

from lmforge.cli import convert, data, demo, pretrain, tokenizer

# verb -> function, or verb -> {sub-verb -> function}. No logic lives in this file.
VERBS: dict[str, Callable | dict[str, Callable]] = {
    "convert": convert.convert,
    "data": {
        "prepare": data.prepare,
        "corpus": data.corpus,
    },
    "demo": demo.demo,
    "pretrain": pretrain.pretrain,
    "tokenizer": {
        "train": tokenizer.train,
        "encode": tokenizer.encode,
    },
}


def _takes_list_first(fn: Callable) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    hints = typing.get_type_hints(fn)
    return typing.get_origin(hints.get(params[0].name)) is list


def normalize_argv(argv: list[str], verbs: dict = VERBS) -> list[str]:
    """Rewrite `--a-b` as `--a_b` and gather a list-first verb's positional words into one list."""
    out, fn, i = [], verbs, 0
    while isinstance(fn, dict) and i < len(argv) and argv[i] in fn:  # walk the verb path
        fn = fn[argv[i]]
        out.append(argv[i])
        i += 1
    rest = []
    for tok in argv[i:]:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            tok = "--" + name.replace("-", "_") + eq + value
        rest.append(tok)
    if callable(fn) and _takes_list_first(fn):
        positional, options, j = [], [], 0
        while j < len(rest):
            tok = rest[j]
            if tok.startswith("-"):
                options.append(tok)
                takes_value = "=" not in tok and tok not in ("-h", "--help")
                if takes_value and j + 1 < len(rest):
                    options.append(rest[j + 1])
                    j += 1
            else:
                positional.append(tok)
            j += 1
        if len(positional) > 1 or (positional and not positional[0].startswith("[")):
            positional = ["[" + ", ".join(_quote(p) for p in positional) + "]"]
        rest = positional + options
    return out + rest


def _quote(item: str) -> str:
    return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lmforge` console script."""
    from jsonargparse import CLI

    argv = sys.argv[1:] if argv is None else argv
    try:
        CLI(VERBS, args=normalize_argv(argv), as_positional=True)
    except USER_ERRORS as err:  # bad input: the message names the file/field; no traceback
        print(f"lmforge: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    """The error types that mean bad input rather than a bug."""
    from lmforge.data.errors import DataError
    from lmforge.interop.hf import CheckpointError
    from lmforge.models.config import ConfigError
    from lmforge.tokenizers.train import TrainingDataError

    return (DataError, CheckpointError, ConfigError, TrainingDataError, FileNotFoundError, UnicodeDecodeError)


USER_ERRORS = _user_errors()


if __name__ == "__main__":
    main()
