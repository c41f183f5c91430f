"""Structured pruning: remove whole attention heads and FFN neurons, so the model really gets smaller.

The units removed:
- *attention*: a key/value group, i.e. one key/value head and the query heads that share it (query head h
  reads key/value head h // (n_heads / n_kv_heads)). A multi-head model (n_kv_heads == n_heads) has groups of
  one, so its heads are pruned one by one; a grouped-query model (LLaMA, SmolLM2) loses whole groups, since
  every query head of a group needs its key/value head; a multi-query model (one group) keeps its attention.
  A group owns its rows of q/k/v (weights and biases) and its query heads' columns of o_proj.
- *FFN*: a hidden unit (neuron) j, which owns row j of gate_proj and up_proj (weights and biases) and column j
  of down_proj.

`prune_heads` / `prune_ffn` build new, smaller `nn.Linear` layers and write the widths into `model.cfg`
(`layer_n_heads`, `layer_n_kv_heads`, `layer_d_ff`), so `lmforge.interop.native.save_model` writes a smaller
checkpoint and `load_model` rebuilds the pruned shapes. `structured_prune` chooses the units by importance:
- "l1": the L1 norm of the parameters a unit owns (data-free);
- "taylor": the first-order Taylor estimate of the loss change when the unit is removed, |sum over the unit's
  parameters of w * dL/dw| per calibration batch, summed over the batches (Molchanov et al. 2019, "Importance
  Estimation for Neural Network Pruning"; Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

Pruning works on the encoder (BERT, MiniLM: every task head) and decoder (GPT-2, LLaMA) families; it refuses
encoder-decoders, fused projections (`fuse_projections`: prune first, fuse afterwards) and layers that are not
plain `nn.Linear` (LoRA-wrapped: merge first; quantized: quantize after pruning).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lmforge.compress.config import SCOPES, PruneError
from lmforge.models.config import ModelConfig
from lmforge.models.electra import ElectraPretraining

Importance = Literal["l1", "taylor"]
Scope = Literal["global", "layer"]
IMPORTANCES = ("l1", "taylor")


@dataclass
class ImportanceScores:
    """Per layer, one score per attention unit and per FFN neuron (higher = more important)."""

    groups: list[torch.Tensor]
    """(n_kv_heads_i,) float32 per layer: one score per key/value group (per head in a multi-head model)."""
    neurons: list[torch.Tensor]
    """(d_ff_i,) float32 per layer: one score per FFN hidden unit."""


@dataclass
class PruneSummary:
    """What `structured_prune` removed, and the widths and sizes before and after."""

    importance: str
    scope: str
    parameters_before: int
    parameters_after: int
    heads_before: list[int]
    heads_after: list[int]
    kv_heads_before: list[int]
    kv_heads_after: list[int]
    d_ff_before: list[int]
    d_ff_after: list[int]
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)
    """Query heads removed per layer, in the layer's numbering before pruning."""
    pruned_neurons: dict[int, list[int]] = field(default_factory=dict)
    """FFN hidden units removed per layer, in the layer's numbering before pruning."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        heads = (sum(self.heads_before), sum(self.heads_after))
        ffn = (sum(self.d_ff_before), sum(self.d_ff_after))
        return (f"structured pruning ({self.importance}, {self.scope}): attention heads {heads[0]} -> {heads[1]}, "
                f"FFN units {ffn[0]} -> {ffn[1]}, parameters {self.parameters_before:,} -> "
                f"{self.parameters_after:,} ({self.parameters_after / self.parameters_before:.3f}x)")


def structured_prune(
    model: nn.Module,
    heads: float = 0.3,
    ffn: float = 0.3,
    importance: Importance = "l1",
    scope: Scope = "global",
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    batches: Iterable[Any] | None = None,
    multiple_of: int = 8,
) -> PruneSummary:
    """Remove the least important `heads` share of attention units and `ffn` share of FFN neurons, in place.

    `scope="global"` ranks the units of all layers together, each layer's scores divided by their root mean
    square (Michel et al. 2019 normalise per layer), so some layers lose more than others; `scope="layer"`
    removes the same share from every layer. Every layer keeps at least one key/value group and
    `multiple_of` neurons, and its kept FFN width is rounded to a multiple of `multiple_of` (the nearest,
    capped at the current width). The default 8 keeps GEMMs vector-aligned; int4 quantization afterwards
    needs FFN widths divisible by its group size (32 by default): pass `multiple_of=32` then.
    `importance="taylor"` needs `loss_fn(model, batch) -> scalar loss` and calibration `batches`.
    Returns a `PruneSummary`.
    """
    problems = []
    for name, value in (("heads", heads), ("ffn", ffn)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            problems.append(f"{name}={value!r} must be a fraction in [0, 1)")
    if scope not in SCOPES:
        problems.append(f"scope={scope!r} is not one of {', '.join(SCOPES)}")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of <= 0:
        problems.append(f"multiple_of={multiple_of!r} must be a positive integer")
    if problems:
        raise PruneError("structured_prune: " + "; ".join(problems))
    blocks = _blocks(model)
    scores = importance_scores(model, importance, loss_fn, batches)
    before = _widths(blocks)
    parameters_before = model.num_parameters()

    group_plan = _choose_groups(scores.groups, heads, scope)
    head_plan = {}
    for layer, groups in group_plan.items():
        rep = blocks[layer].attn.n_heads // blocks[layer].attn.n_kv_heads
        head_plan[layer] = [g * rep + j for g in groups for j in range(rep)]
    neuron_plan = _choose_neurons(scores.neurons, ffn, scope, multiple_of)
    prune_heads(model, head_plan)
    prune_ffn(model, neuron_plan)

    after = _widths(_blocks(model))
    return PruneSummary(
        importance=importance, scope=scope, parameters_before=parameters_before,
        parameters_after=model.num_parameters(), heads_before=before[0], heads_after=after[0],
        kv_heads_before=before[1], kv_heads_after=after[1], d_ff_before=before[2], d_ff_after=after[2],
        pruned_heads={k: v for k, v in head_plan.items() if v},
        pruned_neurons={k: v for k, v in neuron_plan.items() if v},
    )


def importance_scores(
    model: nn.Module,
    importance: Importance = "l1",
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    batches: Iterable[Any] | None = None,
) -> ImportanceScores:
    """Importance of every key/value group and FFN neuron of every layer: "l1" or "taylor" (module docstring).

    Taylor runs `loss_fn(model, batch)` per batch in eval mode (no dropout) and takes gradients with
    `torch.autograd.grad`, so the parameters' `.grad` and `requires_grad` are left as they were.
    """
    if importance not in IMPORTANCES:
        raise PruneError(f"importance={importance!r} is not one of {', '.join(IMPORTANCES)}")
    blocks = _blocks(model)
    if importance == "l1":
        with torch.no_grad():
            sums = [_unit_sums(block, lambda p: p.abs()) for block in blocks]
        return ImportanceScores([g for g, _ in sums], [n for _, n in sums])
    if loss_fn is None or batches is None:
        raise PruneError("importance='taylor' needs loss_fn(model, batch) -> loss and calibration batches")
    return _taylor_scores(model, blocks, loss_fn, batches)


def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove query heads `{layer: [head indices]}` (with their key/value heads), in place; returns `model`.

    A grouped-query layer loses whole key/value groups: the indices must cover every query head of each
    group they touch. Every problem (a layer or head out of range, a repeated head, all heads of a layer,
    a broken group) is reported at once in one `PruneError`.
    """
    blocks = _blocks(model)
    plan, problems = {}, []
    for layer, indices in _layers(heads, len(blocks), "heads", problems).items():
        attn = blocks[layer].attn
        n_heads, n_kv = attn.n_heads, attn.n_kv_heads
        chosen = _indices(indices, n_heads, f"layer {layer}: head", problems)
        if chosen is None:
            continue
        if len(chosen) >= n_heads:
            problems.append(f"layer {layer}: cannot prune {len(chosen)} heads, it has {n_heads}: keep at least one")
            continue
        rep = n_heads // n_kv
        broken = sorted(g for g in {h // rep for h in chosen} if any(g * rep + j not in chosen for j in range(rep)))
        if broken:
            g = broken[0]
            problems.append(f"layer {layer}: heads {sorted(chosen)} break key/value group {g} (query heads "
                            f"{g * rep}-{g * rep + rep - 1}): this grouped-query layer ({n_heads} heads, {n_kv} "
                            "key/value heads) prunes whole groups")
            continue
        plan[layer] = sorted(chosen)
    if problems:
        raise PruneError("prune_heads: " + "; ".join(problems))
    for layer, chosen in plan.items():
        if chosen:
            _remove_heads(blocks[layer].attn, chosen)
    _write_widths(model)
    return model


def prune_ffn(model: nn.Module, neurons: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove FFN hidden units `{layer: [neuron indices]}`, in place; returns `model`.

    Every problem (a layer or neuron out of range, a repeat, all units of a layer) is one `PruneError`.
    """
    blocks = _blocks(model)
    plan, problems = {}, []
    for layer, indices in _layers(neurons, len(blocks), "neurons", problems).items():
        width = blocks[layer].ffn.down_proj.in_features
        chosen = _indices(indices, width, f"layer {layer}: neuron", problems)
        if chosen is None:
            continue
        if len(chosen) >= width:
            problems.append(f"layer {layer}: cannot prune {len(chosen)} FFN neurons, it has {width}: "
                            "keep at least one")
            continue
        plan[layer] = sorted(chosen)
    if problems:
        raise PruneError("prune_ffn: " + "; ".join(problems))
    for layer, chosen in plan.items():
        if chosen:
            _remove_neurons(blocks[layer].ffn, chosen)
    _write_widths(model)
    return model


# --- which units: ranking ---------------------------------------------------------------------------------------

def _choose_groups(scores: list[torch.Tensor], fraction: float, scope: str) -> dict[int, list[int]]:
    """The key/value groups to remove per layer: the lowest-scored `fraction`, at least one kept per layer."""
    if fraction == 0:
        return {}
    if scope == "layer":
        return {i: _lowest(s, min(_round(fraction * len(s)), len(s) - 1)) for i, s in enumerate(scores)}
    units = sorted((float(v), i, g) for i, s in enumerate(scores) for g, v in enumerate(_normalised(s)))
    budget = _round(fraction * len(units))
    left = [len(s) for s in scores]
    plan: dict[int, list[int]] = {i: [] for i in range(len(scores))}
    for _, i, g in units:
        if budget == 0:
            break
        if left[i] > 1:
            plan[i].append(g)
            left[i] -= 1
            budget -= 1
    return plan


def _choose_neurons(scores: list[torch.Tensor], fraction: float, scope: str, multiple_of: int) -> dict[int, list[int]]:
    """The FFN units to remove per layer: the lowest-scored, each layer's kept width a multiple of `multiple_of`."""
    if fraction == 0:
        return {}
    widths = [len(s) for s in scores]
    if scope == "layer":
        targets = [w * (1 - fraction) for w in widths]
    else:  # the global ranking decides how many each layer loses; the rounding then fixes the exact count
        units = sorted((float(v), i) for i, s in enumerate(scores) for v in _normalised(s))
        removed = [0] * len(scores)
        for _, i in units[:_round(fraction * len(units))]:
            removed[i] += 1
        targets = [w - r for w, r in zip(widths, removed)]
    plan = {}
    for i, (s, w, target) in enumerate(zip(scores, widths, targets)):
        kept = min(w, max(multiple_of, multiple_of * _round(target / multiple_of)))
        plan[i] = _lowest(s, w - kept)
    return plan


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scores over their root mean square, so layers with larger weights or gradients compare fairly."""
    rms = scores.double().pow(2).mean().sqrt()
    return scores.double() / rms if rms > 0 else scores.double()


def _lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` lowest scores (ties: the lower index first), sorted."""
    if count <= 0:
        return []
    order = sorted(range(len(scores)), key=lambda j: (float(scores[j]), j))
    return sorted(order[:count])


def _round(x: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(x + 0.5)


# --- importance -------------------------------------------------------------------------------------------------

def _unit_sums(block: nn.Module, values: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`values(param)` (same shape as the parameter) summed over what each key/value group and FFN neuron owns.

    Returns (n_kv_heads,) and (d_ff,) float32 tensors.
    """
    attn, ffn = block.attn, block.ffn
    n_kv = attn.n_kv_heads

    def rows(linear: nn.Linear) -> torch.Tensor:  # per output row: its weights plus its bias
        total = values(linear.weight).float().sum(1)
        return total + values(linear.bias).float() if linear.bias is not None else total

    groups = rows(attn.q_proj).view(n_kv, -1).sum(1)  # a group's query heads are contiguous rows
    groups = groups + rows(attn.k_proj).view(n_kv, -1).sum(1) + rows(attn.v_proj).view(n_kv, -1).sum(1)
    groups = groups + values(attn.o_proj.weight).float().sum(0).view(n_kv, -1).sum(1)  # o_proj's bias is shared
    neurons = rows(ffn.up_proj) + values(ffn.down_proj.weight).float().sum(0)
    if ffn.gate_proj is not None:
        neurons = neurons + rows(ffn.gate_proj)
    return groups, neurons


def _owned_parameters(block: nn.Module) -> list[nn.Parameter]:
    """The parameters `_unit_sums` reads: q/k/v/o of the attention and gate/up/down of the FFN."""
    attn, ffn = block.attn, block.ffn
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, ffn.up_proj, ffn.down_proj]
    if ffn.gate_proj is not None:
        linears.append(ffn.gate_proj)
    return [p for linear in linears for p in linear.parameters()]


def _taylor_scores(model: nn.Module, blocks: list[nn.Module], loss_fn: Callable, batches: Iterable) -> ImportanceScores:
    """|sum of w * dL/dw| per unit and batch, summed over the batches."""
    params = [p for block in blocks for p in _owned_parameters(block)]
    requires = [p.requires_grad for p in params]
    training = model.training
    groups = [torch.zeros(b.attn.n_kv_heads) for b in blocks]
    neurons = [torch.zeros(b.ffn.down_proj.in_features) for b in blocks]
    seen = 0
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise PruneError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                                 + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grad = {id(p): (g if g is not None else torch.zeros_like(p)) for p, g in zip(params, grads)}
            with torch.no_grad():
                for i, block in enumerate(blocks):
                    g, n = _unit_sums(block, lambda p, grad=grad: p * grad[id(p)])
                    groups[i] += g.abs().cpu()
                    neurons[i] += n.abs().cpu()
            seen += 1
    finally:
        for p, flag in zip(params, requires):
            p.requires_grad_(flag)
        model.train(training)
    if not seen:
        raise PruneError("importance='taylor': batches held no batch (give at least one calibration batch)")
    return ImportanceScores(groups, neurons)


# --- removing units ---------------------------------------------------------------------------------------------

def _remove_heads(attn: nn.Module, pruned: list[int]) -> None:
    """Replace q/k/v/o by Linears without the query heads `pruned` (whole groups) and their key/value heads."""
    d, rep, gone = attn.head_dim, attn.n_heads // attn.n_kv_heads, set(pruned)
    kept_heads = [h for h in range(attn.n_heads) if h not in gone]
    kept_groups = [h // rep for h in kept_heads[::rep]]
    q_rows = _head_rows(kept_heads, d, attn.q_proj.weight.device)
    kv_rows = _head_rows(kept_groups, d, attn.k_proj.weight.device)
    attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced(attn.o_proj, cols=q_rows.to(attn.o_proj.weight.device))
    attn.n_heads, attn.n_kv_heads = len(kept_heads), len(kept_groups)


def _remove_neurons(ffn: nn.Module, pruned: list[int]) -> None:
    """Replace gate/up/down by Linears without the hidden units `pruned`."""
    gone = set(pruned)
    kept = torch.tensor([j for j in range(ffn.down_proj.in_features) if j not in gone],
                        device=ffn.down_proj.weight.device)
    if ffn.gate_proj is not None:
        ffn.gate_proj = _sliced(ffn.gate_proj, rows=kept)
    ffn.up_proj = _sliced(ffn.up_proj, rows=kept)
    ffn.down_proj = _sliced(ffn.down_proj, cols=kept)


def _head_rows(heads: list[int], head_dim: int, device: torch.device) -> torch.Tensor:
    """The row indices of `heads` in a (heads * head_dim, ...) projection."""
    return (torch.tensor(heads, device=device)[:, None] * head_dim + torch.arange(head_dim, device=device)).flatten()


@torch.no_grad()
def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding `linear`'s output `rows` and input `cols` (the bias follows the rows)."""
    weight = linear.weight if rows is None else linear.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias.copy_(linear.bias if rows is None else linear.bias[rows])
        new.bias.requires_grad_(linear.bias.requires_grad)
    new.train(linear.training)
    return new


def _write_widths(model: nn.Module) -> None:
    """Write the blocks' widths into the config of the model, its body and its stacks (as new configs, so a
    config shared with another model is left alone)."""
    heads, kv_heads, d_ff = _widths(_blocks(model))
    changes = dict(layer_n_heads=heads, layer_n_kv_heads=kv_heads, layer_d_ff=d_ff)
    body = model.body
    owners = [m for m in (model, body, body.encoder, body.decoder) if m is not None]
    replaced = {id(m.cfg): m.cfg.replace(**changes) for m in owners}
    for module in model.modules():
        if id(getattr(module, "cfg", None)) in replaced:
            module.cfg = replaced[id(module.cfg)]


def _widths(blocks: list[nn.Module]) -> tuple[list[int], list[int], list[int]]:
    """(query heads, key/value heads, FFN units) of every block."""
    return ([b.attn.n_heads for b in blocks], [b.attn.n_kv_heads for b in blocks],
            [b.ffn.down_proj.in_features for b in blocks])


# --- input checks -----------------------------------------------------------------------------------------------

def _blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a prunable model, after checking that each one can be pruned."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig) or not hasattr(model, "blocks") or getattr(model, "body", None) is None:
        raise PruneError(f"structured pruning needs an lmforge model, not a {type(model).__name__}")
    if cfg.family not in ("encoder", "decoder"):
        raise PruneError(f"structured pruning supports the encoder and decoder families, not {cfg.family!r}")
    if isinstance(model, ElectraPretraining):
        raise PruneError(f"{type(model).__name__} carries a second network (the ELECTRA generator): prune the "
                         "discriminator, a TokenClassifier, instead")
    blocks = model.blocks()
    problems = []
    for i, block in enumerate(blocks):
        if block.cross_attn is not None:
            problems.append(f"layer {i} has cross-attention")
        if block.attn.qkv_proj is not None or block.ffn.gate_up_proj is not None:
            problems.append(f"layer {i} has fused projections (fuse_projections): prune the unfused model and "
                            "fuse afterwards")
            continue
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _check_linear(getattr(block.attn, name), f"layer {i} attn.{name}", problems)
        for name in ("gate_proj", "up_proj", "down_proj"):
            module = getattr(block.ffn, name)
            if module is not None:
                _check_linear(module, f"layer {i} ffn.{name}", problems)
    if problems:
        raise PruneError("cannot prune this model: " + "; ".join(problems[:8]))
    return blocks


def _check_linear(module: nn.Module, name: str, problems: list[str]) -> None:
    if type(module) is not nn.Linear:
        problems.append(f"{name} is a {type(module).__name__}, not a plain nn.Linear (merge adapters first; "
                        "quantize after pruning)")


def _layers(plan: Mapping[int, Sequence[int]], n_layers: int, what: str, problems: list[str]) -> dict[int, Sequence[int]]:
    """The plan's layer keys checked (integers in range); the bad ones go to `problems`."""
    if not isinstance(plan, Mapping):
        problems.append(f"{what} must map layer index -> list of indices, got {type(plan).__name__}")
        return {}
    out = {}
    for key, indices in plan.items():
        try:
            layer = operator.index(key)
        except TypeError:
            problems.append(f"layer {key!r} is not an integer")
            continue
        if isinstance(key, bool) or not 0 <= layer < n_layers:
            problems.append(f"layer {key!r} is out of range: the model has {n_layers} layers")
            continue
        out[layer] = indices
    return out


def _indices(indices: Sequence[int], size: int, what: str, problems: list[str]) -> set[int] | None:
    """`indices` as a set after checking each is an integer in [0, size) and none repeats; None on a problem."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        problems.append(f"{what} indices must be a list of integers, got {indices!r}")
        return None
    chosen: set[int] = set()
    ok = True
    for value in indices:
        try:
            index = operator.index(value)
        except TypeError:
            problems.append(f"{what} {value!r} is not an integer")
            ok = False
            continue
        if isinstance(value, bool) or not 0 <= index < size:
            problems.append(f"{what} {value!r} is out of range [0, {size})")
            ok = False
        elif index in chosen:
            problems.append(f"{what} {index} is listed twice")
            ok = False
        chosen.add(index)
    return chosen if ok else None
