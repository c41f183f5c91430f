"""What the document-based pretraining objectives share: special ids, seeded collated batches, micro-batches.

Special ids. MLM needs [MASK], NSP [CLS] and [SEP], span corruption sentinels <extra_id_0..99>, and
every padded batch a pad id. The rule (`resolve_special_ids`): a role the tokenizer already has
(`Tokenizer.mask_id`, `cls_id`, `sep_id`, `pad_id`, or `<extra_id_k>` tokens) keeps the tokenizer's id;
a role it lacks gets a new id *after* the data's vocabulary (V, V+1, ...), the model's `vocab_size`
grows to cover it, and the token is added, as a special token with that role, to the copy of the
tokenizer that `bind` returns, so a tokenizer saved beside an exported model names every id the model
was trained with. A GPT-style BPE tokenizer (`<|endoftext|>`, `<pad>`) thus gains [CLS] [SEP] [MASK]
(or 100 sentinels); a BERT tokenizer gains nothing.

Randomness. Masking, segment pairing and span corruption draw from generators seeded by (seed, epoch,
step, rank) of the batch, not from the global RNG: a resumed run redraws exactly the same batches
without any extra checkpointed state, ranks draw independent masks, and a validation batch is masked
the same way at every evaluation (its seed depends only on its index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from lmforge.data import DocumentBatches, TokenDataset
from lmforge.models import TASKS, Model
from lmforge.models.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

Batch = dict[str, torch.Tensor | int]
ENCODER_ROLES = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
SENTINEL = "<extra_id_{}>"
EVAL_SEED = 0
"""Seed of the validation masks: fixed, so validation losses are comparable across steps and runs."""


@dataclass(frozen=True)
class Binding:
    """An objective bound to its data (`Objective.bind`).

    `objective` is a new instance with its special ids fixed (the unbound one is left as it was);
    `tokenizer` names every id the model trains with (a copy, with the tokens the objective reserved
    added; None without a tokenizer); `overrides` are the ModelConfig fields those ids need
    (e.g. a larger `vocab_size`, the pad id).
    """

    objective: Any
    tokenizer: Tokenizer | None
    overrides: dict[str, Any]


def check_family(objective, cfg: ModelConfig) -> None:
    """Raise `ConfigError` unless the objective trains models of `cfg.family`."""
    if cfg.family not in objective.families:
        raise ConfigError(f"objective {objective.name!r} trains {' or '.join(objective.families)} models, "
                          f"but this model is {cfg.family!r}")


def build_task_model(objective, cfg: ModelConfig) -> Model:
    """A fresh `TASKS[objective.model_task]` model, with the objective's ModelConfig overrides and arguments."""
    check_family(objective, cfg)
    return objective.check_model(TASKS[objective.model_task](cfg.replace(**objective.model_overrides),
                                                             **objective.model_kwargs))


@dataclass(frozen=True)
class SpecialIds:
    """The ids an objective builds its inputs with, and the vocabulary size the model needs for them."""

    vocab_size: int
    eos: int
    pad: int
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    sentinels: tuple[int, ...] = ()
    specials: frozenset[int] = field(default_factory=frozenset)
    """Every special id: never masked, never drawn as a random replacement."""
    beyond_data: tuple[str, ...] = ()
    """Tokens whose ids lie after the data's vocabulary (reserved by an objective)."""


def resolve_special_ids(dataset: TokenDataset, tokenizer: Tokenizer | None, roles: dict[str, str],
                        num_sentinels: int = 0) -> SpecialIds:
    """The tokenizer's own ids for `roles` (role -> default token), new ids after the vocabulary for the rest.

    New tokens are added to `tokenizer` (when given) as special tokens with their roles: pass a copy
    (`Tokenizer.copy()`). Calling this again with that tokenizer finds them there and gives the same ids.
    """
    vocab = dataset.vocab_size
    if tokenizer is not None and tokenizer.vocab_size < vocab:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the data was made with {vocab}")
    ids: dict[str, int] = {}
    new: list[tuple[str, str | None]] = []  # (token, role) in id order
    next_id = vocab if tokenizer is None else tokenizer.vocab_size

    def lookup(role: str | None, token: str) -> int | None:
        if tokenizer is None:
            return None
        found = getattr(tokenizer, f"{role}_id") if role else None
        return found if found is not None else tokenizer.token_to_id(token)

    for role, token in roles.items():
        found = lookup(role, token)
        if found is None:
            found, next_id = next_id, next_id + 1
            new.append((token, role))
        ids[role] = found
    sentinel_names = [SENTINEL.format(k) for k in range(num_sentinels)]
    sentinels = [lookup(None, name) for name in sentinel_names]
    if any(s is None for s in sentinels):  # all of the tokenizer's, or all new: never a mix
        sentinels = list(range(next_id, next_id + num_sentinels))
        new += [(name, None) for name in sentinel_names]
        next_id += num_sentinels
    if tokenizer is not None and new:
        _add_tokens(tokenizer, new, first_id=next_id - len(new))
    extra = {dataset.eos_id, *ids.values(), *sentinels}
    if tokenizer is not None:
        extra |= {i for i in tokenizer.special_ids if i is not None}
    names = {**dict(zip(sentinels, sentinel_names)), **{i: roles[role] for role, i in ids.items()}}
    beyond = tuple(tokenizer.id_to_token(i) if tokenizer is not None else names.get(i, str(i))
                   for i in sorted(extra) if i >= vocab)
    return SpecialIds(vocab_size=max(vocab, next_id, max(extra) + 1), eos=dataset.eos_id, pad=ids["pad"],
                      cls=ids.get("cls"), sep=ids.get("sep"), mask=ids.get("mask"), sentinels=tuple(sentinels),
                      specials=frozenset(extra), beyond_data=beyond)


def _add_tokens(tokenizer: Tokenizer, tokens: list[tuple[str, str | None]], first_id: int) -> None:
    """Add (token, role) pairs to the tokenizer as special tokens at ids first_id, first_id + 1, ..."""
    from tokenizers import AddedToken

    tokenizer.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in tokens])
    for offset, (token, role) in enumerate(tokens):
        if tokenizer.token_to_id(token) != first_id + offset:
            raise ConfigError(f"could not add {token!r} to the tokenizer at id {first_id + offset}")
        if role is not None:
            tokenizer.set_special_token(role, token)


def batch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A 32-bit seed for one batch of one rank, mixed from its coordinates (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


class CollatedBatches:
    """`DocumentBatches` turned into tensors by `collate(documents, seed)`; resumable through its position.

    The seed of each batch comes from (seed, epoch, step, rank), so resuming at a saved position
    draws the same masks without saving any generator state.
    """

    def __init__(self, documents: DocumentBatches, collate: Callable[[list[list[int]], int], Batch],
                 seed: int) -> None:
        self.documents, self.collate, self.seed = documents, collate, seed

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Batch]:
        """Collated batches from the current position on (empty rank slices are skipped)."""
        docs = self.documents
        for batch in docs:
            if batch:  # the short last batch of an evaluation may leave a rank nothing
                yield self.collate(batch, batch_seed(self.seed, docs.epoch, docs.step, docs.rank))

    def state_dict(self) -> dict:
        """The document position (the masks follow from it)."""
        return self.documents.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.documents.load_state_dict(state)


def train_documents(dataset: TokenDataset, batch_size: int, max_len: int, seed: int, rank: int,
                    world_size: int, min_local: int = 1) -> DocumentBatches:
    """Shuffled document pieces of at most `max_len` tokens, in global batches; checks one batch fits."""
    if max_len < 1:
        raise ConfigError(f"seq_len leaves no room for text (max {max_len} tokens per piece)")
    docs = DocumentBatches(dataset, batch_size, max_len=max_len, seed=seed, shuffle=True, rank=rank,
                           world_size=world_size)
    if len(docs) == 0:
        raise ConfigError(f"the {dataset.split} split of {dataset.path} has {docs.num_items} pieces of up to "
                          f"{max_len} tokens: too few for one batch of {batch_size}")
    if batch_size // world_size < min_local:
        raise ConfigError(f"this objective needs at least {min_local} sequences per process and batch, "
                          f"got batch_size {batch_size} over {world_size} processes")
    return docs


def eval_documents(dataset: TokenDataset, batch_size: int, max_len: int, rank: int,
                   world_size: int) -> DocumentBatches:
    """The whole split once, in order, `batch_size` pieces per process and batch."""
    return DocumentBatches(dataset, batch_size * world_size, max_len=max_len, seed=EVAL_SEED, shuffle=False,
                           rank=rank, world_size=world_size, max_epochs=1, drop_last=False)


def split_batch(batch: Batch, n: int, groups: dict[str, Sequence[str]]) -> list[Batch]:
    """`n` micro-batches of a batch of (B, ...) tensors, each trimmed to its own longest row.

    `groups` maps a mask key to the keys that share its width ({"attention_mask": ["input_ids", ...]});
    columns past a micro-batch's last real position are dropped from those keys.
    """
    out: list[Batch] = [{} for _ in range(n)]
    for key, value in batch.items():
        pieces = value.tensor_split(n) if isinstance(value, torch.Tensor) else [value] * n
        for part, piece in zip(out, pieces):
            part[key] = piece
    for part in out:
        for mask_key, keys in groups.items():
            width = int((part[mask_key] != 0).sum(1).max()) if part[mask_key].numel() else 0
            for key in (mask_key, *keys):
                part[key] = part[key][:, :width]
    return out


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class DocumentObjective:
    """Base of the objectives that read whole documents (MLM, NSP, ELECTRA, span corruption, SimCSE).

    Subclasses give `roles` / `num_sentinels` (the special ids they need), `groups` (which keys share a
    width, for trimming micro-batches), `max_tokens(seq_len)` (text tokens per piece), `collate`,
    `loss` and `eval_sums`, and the model they train (`model_task`, `model_kwargs`, `model_overrides`).
    `bind(dataset, tokenizer)` returns a configured copy with `ids` set; the unbound one cannot make
    batches.
    """

    name: str = ""
    families: tuple[str, ...] = ()
    ids: SpecialIds | None = field(default=None, repr=False)
    """The special ids; set by `bind`."""

    roles: ClassVar[dict[str, str]] = {"pad": "[PAD]"}
    num_sentinels: ClassVar[int] = 0
    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids",)}
    min_local: ClassVar[int] = 1
    """Sequences each process needs per batch (in-batch negatives and NotNext pairs need 2)."""
    model_task: ClassVar[str] = "encoder"
    model_kwargs: ClassVar[dict[str, Any]] = {}
    model_overrides: ClassVar[dict[str, Any]] = {}

    def bind(self, dataset: TokenDataset, tokenizer: Tokenizer | None) -> Binding:
        """Fix the special ids for this data (reserving missing ones on a copy of the tokenizer)."""
        tokenizer = tokenizer.copy() if tokenizer is not None else None
        ids = resolve_special_ids(dataset, tokenizer, self.roles, self.num_sentinels)
        bound = dataclasses.replace(self, ids=ids, **self.bound_fields(ids, tokenizer))
        return Binding(bound, tokenizer, bound.config_overrides())

    def bound_fields(self, ids: SpecialIds, tokenizer: Tokenizer | None) -> dict[str, Any]:
        """Fields `bind` sets besides `ids` (e.g. a word-start table); none here."""
        return {}

    def config_overrides(self) -> dict[str, Any]:
        """The ModelConfig fields the special ids need: the vocabulary that covers them and the pad id."""
        return {"vocab_size": self.special.vocab_size, "pad_token_id": self.special.pad}

    @property
    def special(self) -> SpecialIds:
        """The special ids; raises `ConfigError` on an unbound objective."""
        if self.ids is None:
            raise ConfigError(f"objective {self.name!r} is not bound to data: use objective.bind(dataset, "
                              "tokenizer).objective, and build the model config with the overrides it returns")
        return self.ids

    def build_model(self, cfg: ModelConfig) -> Model:
        """A fresh model of `model_task`; the family and the vocabulary are checked."""
        return build_task_model(self, cfg)

    def check_model(self, model: Model) -> Model:
        """Check the model's family and that its vocabulary covers the special ids; return it."""
        cfg = model.cfg
        check_family(self, cfg)
        if cfg.vocab_size < self.special.vocab_size:
            raise ConfigError(f"objective {self.name!r} needs vocab_size >= {self.special.vocab_size} (the data's "
                              f"vocabulary plus {', '.join(self.special.beyond_data[:5]) or 'its special ids'}), "
                              f"got {cfg.vocab_size}")
        return model

    def max_tokens(self, seq_len: int) -> int:
        """Text tokens per document piece so that a built sequence fits `seq_len`."""
        raise NotImplementedError

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """Tensors for a list of documents; randomness only from `seed`."""
        raise NotImplementedError

    def train_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int, rank: int,
                     world_size: int) -> CollatedBatches:
        """Shuffled document pieces, collated per batch with seeds from the batch position (exact resume)."""
        _ = self.special  # raises a clear error on an unbound objective
        docs = train_documents(dataset, batch_size, self.max_tokens(seq_len), seed, rank, world_size,
                               self.min_local)
        return CollatedBatches(docs, lambda d, s: self.collate(d, s, seq_len), seed)

    def eval_loader(self, dataset: TokenDataset, batch_size: int, seq_len: int, rank: int,
                    world_size: int) -> CollatedBatches:
        """The whole split once, masked with the same seeds at every evaluation."""
        docs = eval_documents(dataset, batch_size, self.max_tokens(seq_len), rank, world_size)
        return CollatedBatches(docs, lambda d, s: self.collate(d, s, seq_len), EVAL_SEED)

    def split(self, batch: Batch, n: int) -> list[Batch]:
        """The local batch as `n` micro-batches (gradient accumulation), each trimmed of padding columns."""
        return split_batch(batch, n, self.groups)

    def num_tokens(self, batch: Batch) -> int:
        """Real (non-padding) input tokens of a batch."""
        return int(batch["attention_mask"].sum())

    def export_model(self, model):
        """The model to save in Hugging Face format after training."""
        return model

    def templates(self, tokenizer: Tokenizer) -> tuple[str, str | None] | None:
        """The (single, pair) special-token templates `collate` builds sequences with; None: nothing added."""
        return None

    def export_tokenizer(self, tokenizer: Tokenizer | None) -> Tokenizer | None:
        """A copy of the tokenizer that adds the special tokens the objective trained with (`templates`)."""
        if tokenizer is None or (templates := self.templates(tokenizer)) is None:
            return tokenizer
        exported = tokenizer.copy()
        exported.set_template(*templates)
        return exported
