"""Unstructured pruning: magnitude masks (global or per layer), n:m (2:4) masks, the cubic schedule, masked training.

A mask is a bool tensor shaped like a Linear's weight, True where the weight is kept; `masks` maps module
names (`body.decoder.blocks.0.attn.q_proj`) to them. The layers are chosen by glob patterns over module
names, as in `lmforge.compress.quantize` (default: every Linear of the Transformer blocks, not the
embedding, not the LM head); a pattern that matches nothing is an error. Pruning zeroes weights in
place: the model keeps its shapes (so its checkpoint is the same size; a sparse format or structured
pruning, `lmforge.compress.structured`, is what shrinks it).

- Magnitude (Han et al. 2015; `torch.nn.utils.prune.l1_unstructured` / `global_unstructured`): the
  `round(sparsity * n)` smallest |w| are zeroed, over all selected weights at once (`scope="global"`,
  one threshold, so layers end at different sparsities) or in each layer (`scope="layer"`). Ties are
  broken by position (the earlier weight of the flattened tensors goes first), so the count is exact.
- n:m (`"2:4"`): of every m consecutive weights along the input dimension, the n largest |w| are kept:
  the layout NVIDIA's sparse tensor cores (Ampere and later) multiply at up to twice the dense speed.
  On CPU PyTorch has no such kernel: the mask is exact, the model just as fast as a dense one.
- Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"): during fine-tuning the sparsity rises
  from `initial_sparsity` to `sparsity` on a cubic curve between `start_step` and `end_step`, the masks
  recomputed every `every` steps. `MaskedTraining` is the trainer's `on_step` callable that does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.compress.config import (
    DEFAULT_INCLUDE,
    SCOPES,
    PruneConfig,
    PruneError,
    is_fraction,
    is_int,
    parse_nm,
)
from lmforge.compress.quantize import adapted_layers, match_linears

# ------------------------------------------------------------------------------------------------ choosing layers

def select_linears(model: nn.Module, include: Sequence[str] = DEFAULT_INCLUDE) -> list[str]:
    """The Linear modules `include` matches, in model order; a pattern that matches none is an error."""
    if isinstance(include, str) or not include:
        raise PruneError(f"include={include!r}: give a list of glob patterns over module names")
    chosen = match_linears(model, include, PruneError)
    adapted = adapted_layers(model, chosen)
    if adapted:
        raise PruneError(f"cannot prune adapted layers ({', '.join(adapted[:4])}{', ...' if len(adapted) > 4 else ''})"
                         ": merge the adapter first (lmforge.adapt.lora.merge_and_unload)")
    return chosen


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The weight of each named Linear; sharded (FSDP / TP) weights are refused."""
    weights = {n: model.get_submodule(n).weight for n in names}
    sharded = [n for n, w in weights.items() if hasattr(w, "full_tensor")]
    if sharded:
        raise PruneError(f"cannot prune sharded weights ({sharded[0]} is a DTensor): masks need whole weights; "
                         "prune under one process or DDP")
    return weights


# ------------------------------------------------------------------------------------------------ masks

def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the k smallest entries of a 1-D tensor, ties going to the lower index (exactly k)."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if k == 0:
        return chosen
    threshold = scores.kthvalue(k).values
    chosen = scores < threshold
    need = k - int(chosen.sum())
    tied = torch.nonzero(scores == threshold).flatten()[:need]
    chosen[tied] = True
    return chosen


def _scores(weight: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """|w| in float32, with the weights `previous` pruned (False) ranked below every other one."""
    scores = weight.detach().abs().float()
    if previous is not None:
        scores.masked_fill_(~previous.to(scores.device), -1.0)
    return scores


def _check_sparsity(sparsity: float) -> None:
    if not is_fraction(sparsity):
        raise PruneError(f"sparsity={sparsity!r} must be in [0, 1) (the fraction of weights set to zero)")


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global",
                    include: Sequence[str] = DEFAULT_INCLUDE,
                    previous: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) zeroing the `round(sparsity * n)` smallest |w|, over all selected weights or per layer.

    With `previous` masks, the weights they prune are pruned first (they stay pruned as the sparsity grows).
    """
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PruneError(f"scope={scope!r} (allowed: {', '.join(SCOPES)})")
    weights = _weights(model, select_linears(model, include))
    previous = previous or {}
    scores = {n: _scores(w, previous.get(n)) for n, w in weights.items()}
    if scope == "layer":
        return {n: ~_smallest(s.flatten(), round(sparsity * s.numel())).view_as(s) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = ~_smallest(flat, round(sparsity * flat.numel()))
    parts = keep.split([s.numel() for s in scores.values()])
    return {n: part.view_as(s) for (n, s), part in zip(scores.items(), parts)}


@torch.no_grad()
def nm_masks(model: nn.Module, n: int = 2, m: int = 4,
             include: Sequence[str] = DEFAULT_INCLUDE) -> dict[str, torch.Tensor]:
    """Keep-masks holding the n largest |w| of every m consecutive weights along each row (the input dimension).

    Ties go to the earlier weight. Every selected layer's in_features must be a multiple of m.
    """
    if not (is_int(n) and is_int(m) and 0 < n < m):
        raise PruneError(f"n={n!r}, m={m!r}: n:m keeps n of every m weights, so 0 < n < m")
    weights = _weights(model, select_linears(model, include))
    uneven = [f"{name} (in_features {w.shape[1]})" for name, w in weights.items() if w.shape[1] % m]
    if uneven:
        raise PruneError(f"{n}:{m} sparsity groups {m} consecutive inputs, but in_features is not a multiple of "
                         f"{m} for {', '.join(uneven[:4])}{' ...' if len(uneven) > 4 else ''}; leave those layers "
                         "out with include")
    masks = {}
    for name, w in weights.items():
        rows, cols = w.shape
        groups = w.detach().abs().float().reshape(rows, cols // m, m)  # (out, in / m, m)
        order = groups.argsort(dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
        masks[name] = keep.reshape(rows, cols)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set each named Linear's weight to zero where its mask is False, in place."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        if weight.shape != mask.shape:
            raise PruneError(f"mask for {name} is {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        weight.masked_fill_(~mask.to(weight.device), 0.0)


# ------------------------------------------------------------------------------------------------ reports

@dataclass
class SparsityReport:
    """Zeros per selected layer, measured on the weights: {name: (zeros, weights)}."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Zeros over all selected weights."""
        return self.zeros / max(self.total, 1)

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "zeros": self.zeros, "weights": self.total,
                "layers": {n: {"zeros": z, "weights": t, "sparsity": z / max(t, 1)} for n, (z, t) in self.layers.items()}}

    def __str__(self) -> str:
        return f"{self.zeros:,} of {self.total:,} weights in {len(self.layers)} layers are zero ({self.sparsity:.1%})"


@torch.no_grad()
def sparsity_of(model: nn.Module, include: Sequence[str] = DEFAULT_INCLUDE) -> SparsityReport:
    """The zeros of each Linear `include` selects, and in total."""
    weights = _weights(model, select_linears(model, include))
    return SparsityReport({n: (int((w == 0).sum()), w.numel()) for n, w in weights.items()})


@dataclass
class PruneSummary:
    """What `prune_model` did: the method, the sparsity asked for and the one measured afterwards."""

    method: str
    target: float
    report: SparsityReport

    def __str__(self) -> str:
        return f"{self.method} pruning to {self.target:.1%}: {self.report}"


@torch.no_grad()
def prune_model(model: nn.Module, config: PruneConfig) -> PruneSummary:
    """Prune `model` in place, one-shot, to `config.sparsity` (the schedule fields are for `MaskedTraining`)."""
    config.validate()
    apply_masks(model, _config_masks(model, config, config.sparsity))
    return PruneSummary(config.method, config.sparsity, sparsity_of(model, config.include))


def _config_masks(model: nn.Module, config: PruneConfig, sparsity: float,
                  previous: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    nm = config.nm()
    if nm is not None:
        return nm_masks(model, *nm, include=config.include)
    return magnitude_masks(model, sparsity, config.scope, config.include, previous=previous)


# ------------------------------------------------------------------------------------------------ gradual pruning

def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f) (1 - (t - t0) / (end - t0))^3, clamped to s_i before t0, s_f after end."""
    if end <= start:
        raise PruneError(f"end={end} must be > start={start}")
    progress = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


class MaskedTraining:
    """The trainer's `on_step(model, step)` for pruning during fine-tuning (`lmforge.train.loop.train`).

    The trainer calls it once before the first update (with the starting step: 0, or the step a run
    resumes at) and after every optimizer step. At each pruning step of the schedule it recomputes the
    masks from the current weights at the scheduled sparsity; the weights already pruned are ranked
    below all others, so they stay pruned and the sparsity only grows. After every step it re-applies
    the masks: the optimizer's momentum (and Adam's moments) keep moving pruned weights, and zeroing them
    again is what keeps them at exactly zero for the next forward, the evaluations and the checkpoints.

    The masks are not stored: a checkpoint's weights carry them as zeros. On resume (no masks yet, the
    step past `start_step`) they are recomputed from those weights at the sparsity in effect at that step,
    which picks exactly the zeros, so the resumed run goes on as the uninterrupted one would (unless a
    kept weight happened to train to exactly 0.0, which float training practically never does).
    The same holds for a model pruned one-shot and fine-tuned to recover with the same config: its zeros
    are its masks.
    """

    def __init__(self, config: PruneConfig) -> None:
        config.validate()
        self.config = config
        self.masks: dict[str, torch.Tensor] | None = None
        self.sparsity = 0.0
        """The target sparsity of the current masks."""

    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed after `step` optimizer steps."""
        c = self.config
        if c.schedule == "oneshot":
            return step == c.start_step
        return c.start_step <= step <= c.end_step and ((step - c.start_step) % c.every == 0 or step == c.end_step)

    def scheduled_sparsity(self, step: int) -> float:
        """The sparsity in effect after `step` steps: that of the last pruning step so far (0 before start_step)."""
        c = self.config
        if step < c.start_step:
            return 0.0
        if c.schedule == "oneshot":
            return c.sparsity
        last = c.end_step if step >= c.end_step else c.start_step + (step - c.start_step) // c.every * c.every
        return cubic_sparsity(last, c.sparsity, c.start_step, c.end_step, c.initial_sparsity)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        """Recompute the masks if `step` is a pruning step (or none exist yet past start_step); zero the pruned."""
        if step >= self.config.start_step and (self.masks is None or self.is_pruning_step(step)):
            self.sparsity = self.scheduled_sparsity(step)
            self.masks = _config_masks(model, self.config, self.sparsity, previous=self.masks)
        if self.masks is not None:
            apply_masks(model, self.masks)


# ------------------------------------------------------------------------------------------------ 2:4 kernels

def to_semi_structured(linear: nn.Linear) -> nn.Linear:
    """Store a 2:4-pruned CUDA Linear's weight as PyTorch's `SparseSemiStructuredTensor` (in place), for its speed-up.

    Only NVIDIA GPUs of compute capability 8.0 (Ampere) or later have 2:4 sparse tensor cores; the
    weight must be fp16 / bf16 / int8 (or f32) and of a shape the kernels accept (see PyTorch's docs).
    """
    if not torch.cuda.is_available() or linear.weight.device.type != "cuda":
        where = "CPU" if not torch.cuda.is_available() else f"a {linear.weight.device.type} weight"
        raise PruneError(f"no 2:4 sparse kernel on {where} in PyTorch: the mask is exact, the speed-up needs an "
                         "NVIDIA Ampere+ GPU (a CUDA weight)")
    capability = torch.cuda.get_device_capability(linear.weight.device)
    if capability < (8, 0):
        raise PruneError(f"2:4 sparse tensor cores need compute capability 8.0 (Ampere) or later, this GPU has "
                         f"{capability[0]}.{capability[1]}")
    weight = linear.weight.detach()
    rows, cols = weight.shape
    if cols % 4 or bool(((weight.reshape(rows, -1, 4) != 0).sum(-1) > 2).any()):
        raise PruneError(f"weight {tuple(weight.shape)} is not 2:4 sparse (at most 2 nonzeros in every 4 inputs): "
                         "prune it with method 2:4 first")
    from torch.sparse import to_sparse_semi_structured

    try:
        linear.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
    except (RuntimeError, ValueError) as err:
        raise PruneError(f"PyTorch cannot store weight {tuple(weight.shape)} {weight.dtype} as 2:4 sparse: {err}") from None
    return linear


__all__ = ["DEFAULT_INCLUDE", "MaskedTraining", "PruneConfig", "PruneError", "PruneSummary", "SparsityReport",
           "apply_masks", "cubic_sparsity", "magnitude_masks", "nm_masks", "parse_nm", "prune_model",
           "select_linears", "sparsity_of", "to_semi_structured"]
