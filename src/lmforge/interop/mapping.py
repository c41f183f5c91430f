"""Renaming tables between lmforge state dicts and Hugging Face checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from lmforge.models.config import ConfigError


@dataclass(frozen=True)
class Rule:
    """lmforge tensor `ours` <- Hugging Face tensor `theirs`.

    `transpose`: the HF tensor is stored (in, out), as GPT-2's Conv1D does. `part=(i, n)`: ours is
    the i-th of n equal row blocks of theirs (a fused QKV). `flat`: theirs has a leading 1-dim.
    """

    ours: str
    theirs: str
    transpose: bool = False
    part: tuple[int, int] | None = None
    flat: bool = False


def linear(ours: str, theirs: str, bias: bool, transpose: bool = False,
           part: tuple[int, int] | None = None) -> list[Rule]:
    """Rules for a Linear layer's weight and (optional) bias."""
    rules = [Rule(f"{ours}.weight", f"{theirs}.weight", transpose, part)]
    if bias:
        rules.append(Rule(f"{ours}.bias", f"{theirs}.bias", False, part))
    return rules


def norm(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    """Rules for a LayerNorm (weight and bias) or RMSNorm (weight only)."""
    return linear(ours, theirs, bias)


class Head(NamedTuple):
    """Where a task head sits in a transformers checkpoint: lmforge's `head.proj` <- the Linear `name`."""

    name: str
    """The HF name of the head's Linear (`classifier`, `score`, `qa_outputs`)."""
    bias: bool
    """Whether that Linear has a bias."""
    base_prefix: str
    """The base model's name in this architecture (`bert.`, `model.`, `transformer.`)."""


def head_rules(head: Head | None) -> list[Rule]:
    """Rules for a task head's Linear (none for tasks without one)."""
    return linear("head.proj", head.name, head.bias) if head else []


def num_labels_of(hf: dict) -> int:
    """The label count of an HF config: its `id2label` entries, else `num_labels`, else 2 (transformers' default)."""
    return len(hf.get("id2label") or {}) or hf.get("num_labels") or 2


def labels_of(hf: dict) -> list[str] | None:
    """The class names of an HF config's `id2label`, in id order; None when they are transformers' LABEL_i."""
    id2label = hf.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names or None


def label_fields(hf: dict) -> dict:
    """The ModelConfig fields an HF config's labels give: num_labels and (named) labels."""
    return {"num_labels": num_labels_of(hf), "labels": labels_of(hf)}


def to_ours(rules: list[Rule], theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply rules to a Hugging Face state dict (entries whose source is absent are left out)."""
    out = {}
    for r in rules:
        if r.theirs not in theirs:
            continue
        t = theirs[r.theirs]
        if r.flat:
            t = t.reshape(-1)
        if r.transpose:
            t = t.t()
        if r.part is not None:
            t = t.chunk(r.part[1], dim=0)[r.part[0]]
        out[r.ours] = t.contiguous()
    return out


def to_theirs(rules: list[Rule], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert the rules: an lmforge state dict -> Hugging Face names (fused parts concatenated).

    A tensor no rule maps is an error naming it: a wrapper's tensors (an adapter, a quantized layer) or a
    head the target class lacks would otherwise vanish from the written checkpoint.
    """
    unmapped = sorted(set(ours) - {r.ours for r in rules})
    if unmapped:
        raise ConfigError(f"no Hugging Face name for {', '.join(unmapped[:8])}"
                          + (f" (and {len(unmapped) - 8} more)" if len(unmapped) > 8 else ""))
    groups: dict[str, list[Rule]] = {}
    for r in rules:
        if r.ours in ours:
            groups.setdefault(r.theirs, []).append(r)
    out = {}
    for name, group in groups.items():
        group.sort(key=lambda r: r.part[0] if r.part else 0)
        t = torch.cat([ours[r.ours] for r in group], dim=0) if group[0].part else ours[group[0].ours]
        r = group[0]
        if r.transpose:
            t = t.t()
        if r.flat:
            t = t.reshape(1, -1)
        out[name] = t.contiguous()
    return out
