"""Special-token presets per model family, and the roles (pad, bos, eos, ...) special tokens play.

A preset fixes three things: the special tokens and their ids (a trainer gives them ids 0, 1, 2, ...
in the order listed), which role each one plays, and the template that `encode(...,
add_special_tokens=True)` wraps a sequence (or a pair) in. The roles also decide the *document
separator*, the token that `lmforge data prepare` puts after every document: the eos token, or the
sep token for a tokenizer without one (BERT).

preset  tokens, in id order                          roles                                 encode adds    separator
bert    [PAD] [UNK] [CLS] [SEP] [MASK]               pad unk cls sep mask                  [CLS] A [SEP]  [SEP]
gpt     <|endoftext|> <pad>                          bos=eos=<|endoftext|> pad             nothing        <|endoftext|>
llama   <unk> <s> </s> <pad>                         unk bos eos pad                       <s> A          </s>
t5      <pad> </s> <unk>                             pad eos unk                           A </s>         </s>
chat    <|endoftext|> <|im_start|> <|im_end|> <pad>  bos=<|im_start|> eos=<|im_end|> pad   nothing        <|im_end|>

GPT-2 itself has no padding token; the `gpt` and `llama` presets add `<pad>` so that batches can be
padded without reusing the end-of-text token. The `chat` preset follows SmolLM2-Instruct (ChatML
markers `<|im_start|>` / `<|im_end|>`, ids 1 and 2) plus the same `<pad>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lmforge.tokenizers.errors import TrainingDataError

# The roles a special token can play; each one is a `<role>_id` attribute of `Tokenizer`.
ROLES: tuple[str, ...] = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")

# The roles whose token can end each document in prepared data, the first one present wins.
SEPARATOR_ROLES: tuple[str, ...] = ("eos", "sep")

# A special token made only of word characters ("foo") would be cut out of every word containing it.
_WORD = re.compile(r"\w+")

# Roles guessed from a token's spelling, for tokenizers that come without a `tokenizer_config.json`.
KNOWN_ROLES: dict[str, tuple[str, ...]] = {
    "[PAD]": ("pad",),
    "<pad>": ("pad",),
    "[UNK]": ("unk",),
    "<unk>": ("unk",),
    "[CLS]": ("cls",),
    "[SEP]": ("sep",),
    "[MASK]": ("mask",),
    "<mask>": ("mask",),
    "<s>": ("bos",),
    "</s>": ("eos",),
    "<|endoftext|>": ("bos", "eos"),
}


@dataclass(frozen=True)
class SpecialTokenPreset:
    """A family's special tokens (in id order), their roles and the post-processing template."""

    name: str
    tokens: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)
    single: str | None = None  # TemplateProcessing template for one sequence, e.g. "[CLS] $A [SEP]"
    pair: str | None = None  # ... and for a pair of sequences
    description: str = ""

    @property
    def separator(self) -> str | None:
        """The token that ends each document in prepared data (see `document_separator`)."""
        return document_separator(self.roles)


SPECIAL_TOKEN_PRESETS: dict[str, SpecialTokenPreset] = {
    "bert": SpecialTokenPreset(
        name="bert",
        tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        roles={"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        description="BERT encoders: [CLS] text [SEP], segment ids for pairs, [MASK] for MLM",
    ),
    "gpt": SpecialTokenPreset(
        name="gpt",
        tokens=("<|endoftext|>", "<pad>"),
        roles={"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<pad>"},
        description="GPT-2 style decoders: <|endoftext|> separates documents; nothing added on encode",
    ),
    "llama": SpecialTokenPreset(
        name="llama",
        tokens=("<unk>", "<s>", "</s>", "<pad>"),
        roles={"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"},
        single="<s> $A",
        pair="<s> $A <s>:1 $B:1",
        description="LLaMA style decoders: <s> is prepended on encode, </s> ends a document",
    ),
    "t5": SpecialTokenPreset(
        name="t5",
        tokens=("<pad>", "</s>", "<unk>"),
        roles={"pad": "<pad>", "eos": "</s>", "unk": "<unk>"},
        single="$A </s>",
        pair="$A </s> $B </s>",
        description="T5 style encoder-decoders: </s> is appended on encode (no sentinel tokens)",
    ),
    "chat": SpecialTokenPreset(
        name="chat",
        tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"),
        roles={"bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<pad>"},
        description="ChatML chat models (as SmolLM2-Instruct): <|im_start|>role ... <|im_end|>",
    ),
}


def get_preset(name: str) -> SpecialTokenPreset:
    """The special-token preset called `name`; a `TrainingDataError` lists the known presets otherwise."""
    try:
        return SPECIAL_TOKEN_PRESETS[name]
    except KeyError:
        known = ", ".join(SPECIAL_TOKEN_PRESETS)
        raise TrainingDataError(
            f"unknown special-token preset {name!r}; known presets: {known}, or auto, or the tokens "
            'comma-separated (--special-tokens "<s>,</s>,<pad>")'
        ) from None


def document_separator(roles: Mapping[str, str]) -> str | None:
    """The token that ends each document in prepared data: the eos token, else the sep token, else None."""
    return next((roles[role] for role in SEPARATOR_ROLES if roles.get(role)), None)


def infer_roles(tokens: Iterable[str]) -> dict[str, str]:
    """Guess each role's token from the tokens' spelling (`[PAD]`, `<s>`, ...); the first match wins."""
    roles: dict[str, str] = {}
    for token in tokens:
        for role in KNOWN_ROLES.get(token, ()):
            roles.setdefault(role, token)
    return roles


def check_special_tokens(tokens: Sequence[str]) -> None:
    """Raise `TrainingDataError` for special tokens that cannot work: blank, with spaces, repeated, or words."""
    problems, seen = [], set()
    for token in tokens:
        if not isinstance(token, str) or not token.strip():
            problems.append(f"{token!r} is blank")
        elif token in SPECIAL_TOKEN_PRESETS:
            problems.append(
                f"{token!r} is a preset name, which cannot be combined with other tokens: give the preset alone, "
                f"or spell out its tokens ({','.join(SPECIAL_TOKEN_PRESETS[token].tokens)})"
            )
        elif any(c.isspace() for c in token):
            problems.append(f"{token!r} holds whitespace (separate tokens with commas: {','.join(token.split())})")
        elif _WORD.fullmatch(token):
            problems.append(
                f"{token!r} is a plain word, which would be cut out of every text containing it; "
                f"mark it, e.g. <{token}> or [{token.upper()}]"
            )
        elif token in seen:
            problems.append(f"{token!r} is repeated")
        seen.add(token)
    if problems:
        raise TrainingDataError("bad special tokens: " + "; ".join(problems))


def custom_preset(tokens: Sequence[str]) -> SpecialTokenPreset:
    """A preset made of the given tokens in that order, roles guessed from their spelling, no template."""
    check_special_tokens(tokens)
    tokens = tuple(tokens)
    return SpecialTokenPreset(name="custom", tokens=tokens, roles=infer_roles(tokens))


def parse_special_tokens(spec: str) -> str | list[str] | None:
    """Read a command-line value: "auto" is None, a preset name stays, `<s>,</s>,<pad>` becomes a list.

    Raises `TrainingDataError` for an unknown preset name and for tokens that cannot work (see
    `check_special_tokens`); empty items (`<s>,`) are ignored, so `"<|endoftext|>,"` is a list of one.
    """
    spec = spec.strip()
    if spec in ("", "auto"):
        return None
    if not any(c in spec for c in "<[|,"):
        return get_preset(spec).name  # a preset name; an unknown one raises, listing the presets
    tokens = [token.strip() for token in spec.split(",") if token.strip()]
    check_special_tokens(tokens)
    return tokens


def resolve_preset(
    special_tokens: str | Sequence[str] | SpecialTokenPreset | None, default: str
) -> SpecialTokenPreset:
    """Turn a preset name, a token list, a preset, or None / "auto" (meaning `default`) into a preset."""
    if special_tokens is None or special_tokens == "auto":
        return get_preset(default)
    if isinstance(special_tokens, SpecialTokenPreset):
        return special_tokens
    if isinstance(special_tokens, str):
        return get_preset(special_tokens)
    return custom_preset(list(special_tokens))
