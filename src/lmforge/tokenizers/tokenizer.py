"""`Tokenizer`: a thin, typed wrapper around a Hugging Face `tokenizers.Tokenizer` (the Rust library).

It loads the three folder layouts found in the wild (`tokenizer.json`; BERT's `vocab.txt`; GPT-2's
`vocab.json` + `merges.txt`) and the tokenizer a GGUF file stores in its metadata, knows which token
plays which role (pad, bos, eos, ...) and the chat template, pads and truncates batches into tensors,
and saves a folder that `transformers` loads as it is.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from lmforge.tokenizers.errors import TokenizerError
from lmforge.tokenizers.specials import ROLES, document_separator, infer_roles

PaddingArg = bool | Literal["longest", "max_length", "do_not_pad"]

# transformers writes this huge number as `model_max_length` when the real limit is unknown.
_UNKNOWN_MAX_LENGTH = 10**12


def _role_property(role: str) -> property:
    def get(self: Tokenizer) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self._backend.token_to_id(token)

    return property(get, doc=f"Id of the {role} token, or None when this tokenizer has none.")


class Tokenizer:
    """Text <-> ids, batches with padding and masks, special-token ids and a stable fingerprint."""

    pad_id = _role_property("pad")
    unk_id = _role_property("unk")
    bos_id = _role_property("bos")
    eos_id = _role_property("eos")
    cls_id = _role_property("cls")
    sep_id = _role_property("sep")
    mask_id = _role_property("mask")

    def __init__(
        self,
        backend: Backend,
        special_tokens: dict[str, str] | None = None,
        *,
        padding_side: Literal["right", "left"] = "right",
        model_max_length: int | None = None,
        model_input_names: Sequence[str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        """Wrap `backend`; `special_tokens` maps roles ("pad", "eos", ...) to tokens, guessed when None.

        Padding and truncation baked into a `tokenizer.json` are switched off: this class pads and
        truncates per call only. `chat_template` is the Jinja template of a chat model (transformers'
        `chat_template`), kept and saved with the tokenizer.
        """
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        self._lock = threading.Lock()  # __call__ switches padding on and off around one batch
        if special_tokens is None:
            special_tokens = infer_roles(t.content for t in self._special_added_tokens())
        for role, token in special_tokens.items():
            if role not in ROLES:
                raise ValueError(f"unknown special-token role {role!r}; roles are {', '.join(ROLES)}")
            if backend.token_to_id(token) is None:
                raise ValueError(f"special token {token!r} (role {role!r}) is not in the vocabulary")
        self.special_tokens: dict[str, str] = dict(special_tokens)
        self.padding_side = padding_side
        self.model_max_length = model_max_length
        if model_input_names is None:
            bert_style = self.cls_id is not None and self.sep_id is not None  # segment ids for pairs
            model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
            if not bert_style:
                model_input_names.remove("token_type_ids")
        self.model_input_names = list(model_input_names)
        self.chat_template = chat_template

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, path: str | Path, *, lowercase: bool | None = None) -> Tokenizer:
        """Load a folder (`tokenizer.json`, or `vocab.json` + `merges.txt`, or `vocab.txt`), a `.json` file, a
        `.gguf` file, or the tokenizer of a named offline checkpoint (`all-minilm-l6-v2`, `smollm2-135m-instruct`).

        `lowercase` only matters for a BERT `vocab.txt`; None reads `do_lower_case` from
        `tokenizer_config.json` and defaults to True (uncased BERT). Special-token roles, padding side
        and `model_max_length` come from `tokenizer_config.json` / `special_tokens_map.json` when the
        folder has them, else roles are guessed from the special tokens' spelling.
        """
        from lmforge.assets import named_folder

        path = named_folder(path) or Path(path)
        if path.is_file() and path.suffix == ".gguf":
            return cls.from_gguf(path)
        if path.is_file():
            return cls.from_file(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer not found: {path} is neither a folder nor a tokenizer.json file; train one with "
                f"`lmforge tokenizer train FILES --output {path}` or give the folder it was saved to"
            )
        config = _read_config(path)
        if (path / "tokenizer.json").is_file():
            backend = _load_tokenizer_json(path / "tokenizer.json")
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = _gpt2_backend(path / "vocab.json", path / "merges.txt", config)
        elif (path / "vocab.txt").is_file():
            if lowercase is None:
                lowercase = bool(config.get("do_lower_case", True))
            backend = _bert_backend(path / "vocab.txt", lowercase, config)
        else:
            raise FileNotFoundError(
                f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt"
            )
        return cls._with_config(backend, config)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` file (a `tokenizer_config.json` beside it is read too)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls._with_config(_load_tokenizer_json(path), _read_config(path.parent))

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """The tokenizer a GGUF file describes in its metadata (see `from_gguf_metadata`)."""
        from lmforge.gguf_file import read_gguf

        try:
            metadata = read_gguf(path).metadata
        except (OSError, ValueError) as err:
            raise TokenizerError(f"{path}: not a readable GGUF file ({err})") from None
        return cls.from_gguf_metadata(metadata, source=str(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], source: str = "GGUF metadata") -> Tokenizer:
        """The tokenizer that GGUF metadata describes: `tokenizer.ggml.*` and `tokenizer.chat_template`.

        Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported. Control tokens become special
        tokens (kept whole, dropped by decode), user-defined ones plain added tokens; the text is split
        before BPE as llama.cpp does for `tokenizer.ggml.pre`.
        """
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise TokenizerError(f"{source}: tokenizer.ggml.model={kind!r} is not supported yet "
                                 "(supported: gpt2, byte-level BPE)")
        tokens, merges = metadata.get("tokenizer.ggml.tokens"), metadata.get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise TokenizerError(f"{source}: no tokenizer.ggml.tokens or tokenizer.ggml.merges")
        pre = metadata.get("tokenizer.ggml.pre", "gpt2")  # older files lack it; transformers then uses GPT-2's
        if pre not in GGUF_PRE_TOKENIZERS:
            raise TokenizerError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported yet; "
                                 f"supported: {', '.join(GGUF_PRE_TOKENIZERS)}")
        vocab = {token: i for i, token in enumerate(tokens)}
        backend = Backend(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], fuse_unk=False))
        backend.pre_tokenizer = GGUF_PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        types = metadata.get("tokenizer.ggml.token_type") or []
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, kind in zip(tokens, types) if kind == _GGUF_CONTROL])
        backend.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _GGUF_USER_DEFINED])
        roles = {}
        for role, key in _GGUF_ROLES.items():
            index = metadata.get(f"tokenizer.ggml.{key}")
            if index is not None and not 0 <= index < len(tokens):
                raise TokenizerError(f"{source}: tokenizer.ggml.{key}={index} is not a token id "
                                     f"(0..{len(tokens) - 1})")
            if index is not None:
                roles[role] = tokens[index]
        context = metadata.get(f"{metadata.get('general.architecture')}.context_length")
        tokenizer = cls(backend, roles, model_max_length=context,
                        chat_template=metadata.get("tokenizer.chat_template"))
        bos = [roles["bos"]] if metadata.get("tokenizer.ggml.add_bos_token") and "bos" in roles else []
        eos = [roles["eos"]] if metadata.get("tokenizer.ggml.add_eos_token") and "eos" in roles else []
        if bos or eos:
            single = " ".join([*bos, "$A", *eos])
            tokenizer.set_template(single, " ".join([single, *bos, "$B", *eos]))
        return tokenizer

    @classmethod
    def _with_config(cls, backend: Backend, config: dict[str, Any]) -> Tokenizer:
        special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        roles = {}
        for role in ROLES:
            token = _token_text(config.get(f"{role}_token"))
            if token is not None and backend.token_to_id(token) is not None:
                roles[role] = token
        if not roles:
            roles = infer_roles(sorted(special, key=backend.token_to_id))
        max_length = config.get("model_max_length")
        if not isinstance(max_length, int) or max_length >= _UNKNOWN_MAX_LENGTH:
            max_length = None
        return cls(
            backend,
            roles,
            padding_side=config.get("padding_side", "right"),
            model_max_length=max_length,
            model_input_names=config.get("model_input_names"),
            chat_template=config.get("chat_template"),
        )

    def save(self, folder: str | Path) -> Path:
        """Write `tokenizer.json` and `tokenizer_config.json` into `folder` (created); return the folder.

        The folder loads with `Tokenizer.from_pretrained` and with `transformers`'
        `AutoTokenizer.from_pretrained` / `PreTrainedTokenizerFast(tokenizer_file=...)`.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._backend.save(str(folder / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        config.update({f"{role}_token": token for role, token in self.special_tokens.items()})
        roles_tokens = set(self.special_tokens.values())
        extra = [t.content for t in self._special_added_tokens() if t.content not in roles_tokens]
        if extra:
            config["additional_special_tokens"] = extra
        config.update(
            padding_side=self.padding_side,
            model_input_names=self.model_input_names,
            clean_up_tokenization_spaces=False,  # decode must give back the text as it was
        )
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return folder

    # ---------------------------------------------------------------------------------- encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text` (with the family's special tokens around it unless told otherwise)."""
        with self._lock:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """The ids of many texts at once, unpadded, encoded in parallel by the Rust library."""
        with self._lock:
            encodings = self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The token strings of `text` (byte-level tokens show bytes as printable characters, e.g. `Ġ`)."""
        with self._lock:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids` (a list or a 1-D tensor), dropping special tokens unless told otherwise."""
        return self._backend.decode(_as_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        """The texts of many id sequences (a list of lists or a 2-D tensor)."""
        rows = [_as_list(ids) for ids in _as_list(batch)]
        return self._backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pairs: str | Sequence[str] | None = None,
        *,
        padding: PaddingArg = True,
        truncation: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: Literal["right", "left"] | None = None,
        add_special_tokens: bool = True,
        return_tensors: Literal["pt"] | None = "pt",
    ) -> dict[str, Any]:
        """Encode a batch: `input_ids`, `attention_mask` (and `token_type_ids` for BERT-style tokenizers).

        A single string is a batch of one. `padding=True` pads to the longest sequence,
        `"max_length"` to `max_length`; `truncation=True` cuts each sequence (or pair, longest first)
        to `max_length` (default `model_max_length`), special tokens included. `padding_side`
        overrides `self.padding_side` ("left" for batched generation with a decoder). Returns int64
        tensors of shape (batch, length) with `return_tensors="pt"`, lists of lists with None.
        """
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(text_pairs, str):
            text_pairs = [text_pairs]
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text_pairs")
        inputs: list = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', not {padding!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, not {return_tensors!r}")
        side = padding_side or self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {side!r}")
        if truncation or padding == "max_length":
            max_length = max_length or self.model_max_length
            if max_length is None:
                raise ValueError(
                    "truncation=True or padding='max_length' needs max_length "
                    "(this tokenizer has no model_max_length)"
                )
        if padding != "do_not_pad" and self.pad_id is None:
            raise ValueError(
                "this tokenizer has no padding token: call set_special_token('pad', token), "
                "e.g. with the eos token, or pass padding=False"
            )

        with self._lock:
            try:
                if truncation:
                    self._backend.enable_truncation(max_length, strategy="longest_first")
                if padding != "do_not_pad":
                    self._backend.enable_padding(
                        direction=side,
                        pad_id=self.pad_id,
                        pad_token=self.special_tokens["pad"],
                        length=max_length if padding == "max_length" else None,
                        pad_to_multiple_of=pad_to_multiple_of,
                    )
                encodings = self._backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            finally:
                self._backend.no_padding()
                self._backend.no_truncation()

        out: dict[str, Any] = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        if return_tensors == "pt":
            import torch

            lengths = {len(ids) for ids in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(
                    f"sequences have different lengths {sorted(lengths)}: pass padding=True "
                    "(or truncation=True with padding='max_length') to get a tensor, or return_tensors=None"
                )
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        return out

    # ------------------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """The number of ids, added (special) tokens included: the size an embedding table needs."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        """Same as `vocab_size`."""
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary, added tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, or None when it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """The token with id `id`, or None when the id is out of range."""
        return self._backend.id_to_token(id)

    @property
    def special_ids(self) -> set[int]:
        """The ids of all special tokens (those `decode(..., skip_special_tokens=True)` drops)."""
        ids = {i for i, t in self._backend.get_added_tokens_decoder().items() if t.special}
        ids.update(self._backend.token_to_id(t) for t in self.special_tokens.values())
        return ids

    def set_special_token(self, role: str, token: str) -> None:
        """Make `token` (already in the vocabulary) play `role`, e.g. `("pad", "<|endoftext|>")` for GPT-2."""
        if role not in ROLES:
            raise ValueError(f"unknown special-token role {role!r}; roles are {', '.join(ROLES)}")
        if self._backend.token_to_id(token) is None:
            raise ValueError(f"special token {token!r} is not in the vocabulary")
        self.special_tokens[role] = token

    def copy(self) -> Tokenizer:
        """An independent copy: adding tokens or setting a template on it leaves this one as it is."""
        return Tokenizer(Backend.from_str(self.to_json()), dict(self.special_tokens), padding_side=self.padding_side,
                         model_max_length=self.model_max_length, model_input_names=list(self.model_input_names),
                         chat_template=self.chat_template)

    def set_template(self, single: str | None, pair: str | None = None) -> None:
        """What `encode(..., add_special_tokens=True)` wraps text in, e.g. `"[CLS] $A [SEP]"` (None: nothing).

        Templates use `tokenizers`' TemplateProcessing syntax (`$A`, `$B:1`, `[SEP]:1`); every special
        token they name must be in the vocabulary. The template is saved in `tokenizer.json`, so
        `transformers`' `AutoTokenizer` adds the same tokens. A pair template with a second segment (`:1`)
        makes batches carry `token_type_ids`.
        """
        if single is None:
            model = type(self._backend.model).__name__
            self._backend.post_processor = processors.ByteLevel(trim_offsets=False) if model == "BPE" else None
            return
        words = [w for t in (single, pair or "") for w in t.split() if not w.startswith("$")]
        names = list(dict.fromkeys(w.rsplit(":", 1)[0] if w.rsplit(":", 1)[-1].isdigit() else w for w in words))
        missing = [n for n in names if self._backend.token_to_id(n) is None]
        if missing:
            raise ValueError(f"template {single!r} names tokens not in the vocabulary: {', '.join(missing)}")
        with self._lock:
            self._backend.post_processor = processors.TemplateProcessing(
                single=single, pair=pair, special_tokens=[(n, self._backend.token_to_id(n)) for n in names])
        if pair is not None and ":1" in pair and "token_type_ids" not in self.model_input_names:
            self.model_input_names.insert(1, "token_type_ids")  # a second segment: the model reads segment ids

    @property
    def separator(self) -> str | None:
        """The token that ends each document in prepared data (`lmforge data prepare`): eos, else sep, else None."""
        return document_separator(self.special_tokens)

    @property
    def separator_id(self) -> int | None:
        """The id of `separator`, or None when this tokenizer has neither an eos nor a sep token."""
        token = self.separator
        return None if token is None else self._backend.token_to_id(token)

    @property
    def backend(self) -> Backend:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._backend

    def to_json(self) -> str:
        """The `tokenizer.json` text of this tokenizer (without padding or truncation)."""
        with self._lock:
            return self._backend.to_str()

    def fingerprint(self) -> str:
        """A sha256 hex digest of the serialized tokenizer: equal digests mean equal ids for any text.

        The JSON is re-serialized with sorted keys, so formatting does not matter; the digest can
        change with the version of the `tokenizers` library if its file format gains fields.
        """
        canonical = json.dumps(
            json.loads(self.to_json()), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        model = type(self._backend.model).__name__
        specials = ", ".join(f"{role}={token!r}" for role, token in self.special_tokens.items())
        return f"Tokenizer({model}, vocab_size={self.vocab_size}, {specials})"

    def _special_added_tokens(self) -> list[AddedToken]:
        decoder = self._backend.get_added_tokens_decoder()
        return [decoder[i] for i in sorted(decoder) if decoder[i].special]


# ------------------------------------------------------------------------------------- helpers


def _as_list(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _token_text(value: Any) -> str | None:
    """A token from a config value: a string, or a serialized AddedToken `{"content": ...}`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_tokenizer_json(path: Path) -> Backend:
    try:
        return Backend.from_file(str(path))
    except Exception as err:  # the Rust error says what is wrong, not in which file
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({err}); save it again, or remove it") from None


def _read_config(folder: Path) -> dict[str, Any]:
    """`special_tokens_map.json` overlaid with `tokenizer_config.json`, each when present.

    The chat template is `tokenizer_config.json`'s (a string, or the one named "default" of a list), else
    that of `chat_template.jinja` (where transformers >= 4.50 writes it).
    """
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                config.update(json.loads(path.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                raise TokenizerError(f"{path}: not valid JSON ({err})") from None
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config["chat_template"] = template if isinstance(template, str) else None
    return config


def _add_specials(backend: Backend, tokens: Iterable[str | None]) -> None:
    """Register the tokens that are in the vocabulary as special (never split, dropped by decode)."""
    present = [t for t in dict.fromkeys(tokens) if t is not None and backend.token_to_id(t) is not None]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in present])


def _bert_backend(vocab_txt: Path, lowercase: bool, config: dict[str, Any]) -> Backend:
    """A BERT WordPiece tokenizer from `vocab.txt`, built as `transformers`' BertTokenizerFast builds it."""
    names = {role: _token_text(config.get(f"{role}_token")) for role in ("unk", "cls", "sep", "pad", "mask")}
    defaults = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"}
    names = {role: names[role] or defaults[role] for role in defaults}
    backend = Backend(models.WordPiece.from_file(str(vocab_txt), unk_token=names["unk"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),  # None: strip accents when lower-casing
        lowercase=lowercase,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    _add_specials(backend, names.values())
    cls_id, sep_id = backend.token_to_id(names["cls"]), backend.token_to_id(names["sep"])
    if cls_id is not None and sep_id is not None:
        cls, sep = names["cls"], names["sep"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, cls_id), (sep, sep_id)],
        )
    return backend


# GGUF metadata (llama.cpp's names): token types that are added tokens, and the ids of each role's token.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_GGUF_ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])


def _llama3_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# How text is split before BPE, by `tokenizer.ggml.pre`, as llama.cpp's `llama-vocab.cpp` splits it: GPT-2's
# regex; StarCoder-style (SmolLM) each digit on its own first, then GPT-2's regex; LLaMA 3's regex. llama.cpp
# names GPT-2's `gpt-2` (and refuses `gpt2`); `gpt2` stays for files without the key (transformers' default).
GGUF_PRE_TOKENIZERS = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "llama-bpe": _llama3_split,
}


def _gpt2_backend(vocab_json: Path, merges_txt: Path, config: dict[str, Any]) -> Backend:
    """A GPT-2 byte-level BPE tokenizer from `vocab.json` + `merges.txt`."""
    try:
        vocab, merges = models.BPE.read_file(str(vocab_json), str(merges_txt))
    except Exception as err:
        raise TokenizerError(f"cannot read GPT-2 vocabulary {vocab_json} / {merges_txt}: {err}") from None
    backend = Backend(
        models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(config.get("add_prefix_space", False))
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    named = [_token_text(config.get(f"{role}_token")) for role in ROLES]
    _add_specials(backend, [*named, "<|endoftext|>"])
    return backend
