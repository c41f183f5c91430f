"""The `lmforge` command line: each verb is one module whose typed function *is* the interface.

jsonargparse turns the functions' signatures and docstrings into parsers (and later YAML configs
with command-line overrides). `normalize_argv` rewrites the arguments before parsing, for four
conveniences: `--vocab-size` is accepted for `--vocab_size`; a verb whose first parameter is a list
takes its items as plain positional words (`lmforge tokenizer train a.txt b.txt --kind bpe`); a
mapping given to a dict-typed option is merged key by key into the config's mapping
(`--model.overrides '{n_layers: 2}'` keeps the YAML's other overrides); and `--resume true`
without `--config` reads the run folder's saved config.yaml.

Importing this package must stay cheap (no torch), so that `lmforge --help` and usage errors answer
at once: the verb modules import their heavy dependencies inside their functions.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from lmforge import __version__
from lmforge.cli import (
    chat,
    convert,
    data,
    demo,
    distill,
    evaluate,
    finetune,
    generate,
    pretrain,
    prune,
    quantize,
    serve,
    tokenizer,
)

# verb -> function, or verb -> {sub-verb -> function}. No logic lives in this file.
VERBS: dict[str, Callable | dict[str, Callable]] = {
    "chat": chat.chat,
    "convert": convert.convert,
    "data": {
        "prepare": data.prepare,
        "corpus": data.corpus,
        "labelled": data.labelled,
    },
    "demo": demo.demo,
    "distill": distill.distill,
    "evaluate": evaluate.evaluate,
    "finetune": finetune.finetune,
    "generate": generate.generate,
    "pretrain": pretrain.pretrain,
    "prune": prune.prune,
    "quantize": quantize.quantize,
    "serve": serve.serve,
    "tokenizer": {
        "train": tokenizer.train,
        "encode": tokenizer.encode,
    },
}

# The errors that mean bad input rather than a bug, as (module, name). A module that was never
# imported cannot have raised its error, so checking for them needs no import.
USER_ERRORS = [
    ("lmforge.adapt.config", "AdaptError"),
    ("lmforge.compress.distill", "DistillError"),
    ("lmforge.compress.quantize", "QuantError"),
    ("lmforge.compress.structured", "PruneError"),
    ("lmforge.data.errors", "DataError"),
    ("lmforge.evaluate.errors", "EvaluationError"),
    ("lmforge.generate.chat", "ChatError"),
    ("lmforge.generate.console", "OptionError"),
    ("lmforge.interop.hf", "CheckpointError"),
    ("lmforge.models.config", "ConfigError"),
    ("lmforge.tokenizers.train", "TrainingDataError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "UnicodeDecodeError"),
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lmforge` console script."""
    from jsonargparse import CLI, ArgumentError, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # --help shows the fields' docstrings
    argv = sys.argv[1:] if argv is None else argv
    try:
        CLI(VERBS, args=normalize_argv(argv), as_positional=True, prog="lmforge", version=__version__,
            exit_on_error=False)
    except ArgumentError as err:  # a usage error: the problem in one line and where to read more
        print(f"lmforge: error: {' '.join(str(err).split())}", file=sys.stderr)
        print(f"see `{' '.join(['lmforge', *_verb(argv)[0], '--help'])}`", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        loaded = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
        if not isinstance(err, loaded):
            raise
        print(f"lmforge: error: {err}", file=sys.stderr)  # bad input: the message names the file/field
        raise SystemExit(2) from None


def normalize_argv(argv: list[str], verbs: dict = VERBS) -> list[str]:
    """Rewrite the arguments into what jsonargparse parses (see the module docstring)."""
    path, fn = _verb(argv, verbs)
    rest = []
    for tok in argv[len(path):]:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            tok = "--" + name.replace("-", "_") + eq + value
        rest.append(tok)
    if not callable(fn):
        return path + rest
    if _takes_list_first(fn):
        rest = _gather_positionals(rest)
    rest = _merge_dicts(rest, dict_options(fn))
    return path + _resume_from_run_folder(fn, rest)


def _verb(argv: list[str], verbs: dict = VERBS) -> tuple[list[str], Callable | dict]:
    """The verb path at the start of argv (`["data", "prepare"]`) and its function (or its sub-verbs)."""
    path, fn = [], verbs
    while isinstance(fn, dict) and len(path) < len(argv) and argv[len(path)] in fn:
        fn = fn[argv[len(path)]]
        path.append(argv[len(path)])
    return path, fn


def _takes_list_first(fn: Callable) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    hints = typing.get_type_hints(fn)
    return typing.get_origin(hints.get(params[0].name)) is list


def _gather_positionals(args: list[str]) -> list[str]:
    """`a.txt --kind bpe b.txt` -> `'["a.txt", "b.txt"]' --kind bpe` (one list, first)."""
    positional, options, j = [], [], 0
    while j < len(args):
        tok = args[j]
        if tok.startswith("-"):
            options.append(tok)
            takes_value = "=" not in tok and tok not in ("-h", "--help")
            if takes_value and j + 1 < len(args):
                options.append(args[j + 1])
                j += 1
        else:
            positional.append(tok)
        j += 1
    if len(positional) > 1 or (positional and not positional[0].startswith("[")):
        positional = ["[" + ", ".join(_quote(p) for p in positional) + "]"]
    return positional + options


def _quote(item: str) -> str:
    return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dict_options(fn: Callable) -> set[str]:
    """The dotted names of `fn`'s dict-typed options: dict parameters, and dict fields of dataclass ones."""
    def walk(hints: dict, prefix: str) -> set[str]:
        found = set()
        for name, hint in hints.items():
            hint = _without_none(hint)
            if hint is dict or typing.get_origin(hint) is dict:
                found.add(prefix + name)
            elif dataclasses.is_dataclass(hint):
                fields = {f.name for f in dataclasses.fields(hint)}
                found |= walk({k: v for k, v in typing.get_type_hints(hint).items() if k in fields}, f"{prefix}{name}.")
        return found

    hints = typing.get_type_hints(fn)
    return walk({p: hints[p] for p in inspect.signature(fn).parameters if p in hints}, "")


def _without_none(hint):
    """`X | None` -> X; any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _merge_dicts(args: list[str], names: set[str]) -> list[str]:
    """Rewrite `--opt '{a: 1, b: {c: 2}}'` for a dict-typed `opt` as `--opt.a=1 '--opt.b={"c": 2}'`.

    jsonargparse merges dotted keys into the mapping from a YAML file, but a whole mapping replaces
    it. One level only: a nested mapping replaces that key's value (jsonargparse would turn the
    values of deeper dotted keys into strings). `--opt '{}'` still clears the mapping.
    """
    if not names:
        return args
    from jsonargparse import get_loader

    load = get_loader("yaml")  # the loader jsonargparse parses values with (e.g. 1e-5 is a float)
    out, i = [], 0
    while i < len(args):
        name, eq, value = args[i][2:].partition("=")
        if not args[i].startswith("--") or name not in names or not (eq or i + 1 < len(args)):
            out.append(args[i])
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        mapping = _load_mapping(load, value)
        if mapping:
            out += [f"--{name}.{key}=" + (v if isinstance(v, str) else json.dumps(v)) for key, v in mapping.items()]
        else:
            out += [args[i]] if eq else args[i:i + 2]
        i += 1 if eq else 2
    return out


def _load_mapping(load: Callable, text: str) -> dict | None:
    import yaml

    try:
        value = load(text)
    except yaml.YAMLError:  # jsonargparse reports it
        return None
    return value if isinstance(value, dict) else None


def _option_value(args: list[str], name: str) -> str | None:
    """The last value given to `--name` in args (`--name v` or `--name=v`), or None."""
    value = None
    for i, tok in enumerate(args):
        if tok == "--" + name and i + 1 < len(args):
            value = args[i + 1]
        elif tok.startswith(f"--{name}="):
            value = tok.partition("=")[2]
    return value


def _resume_from_run_folder(fn: Callable, args: list[str]) -> list[str]:
    """`--resume true` without `--config` reads the run folder's config.yaml first (later arguments win).

    For verbs with `out_dir` and `resume` parameters (pretrain), whose run folder saves their arguments.
    """
    params = inspect.signature(fn).parameters
    if "resume" not in params or "out_dir" not in params:
        return args
    if str(_option_value(args, "resume")).lower() != "true":
        return args
    if any(tok == "--config" or tok.startswith("--config=") for tok in args):
        return args
    saved = Path(_option_value(args, "out_dir") or params["out_dir"].default) / "config.yaml"
    return ["--config", str(saved), *args] if saved.is_file() else args


if __name__ == "__main__":
    main()
