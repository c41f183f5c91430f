"""Weight-only quantization: packed Linear and Embedding modules, the handler that swaps them in, checkpoint hooks.

Decoding one token reads every weight once, so the bytes per weight set its speed. A `QuantLinear` holds
one Linear's weight packed in one format, as buffers with stable names (so `state_dict()` and safetensors
carry them), and multiplies with lmforge's own kernels (`lmforge.kernels`); the bias stays f32, and a
bf16 model's activations are widened to f32 around the product. `quantize_model` is the handler (as in
gpt-fast's `quantize.py`): it picks Linear modules by name with glob patterns (a pattern that matches
nothing is an error, as in PEFT) and swaps them in place.

Schemes (all per output row, so fusing q/k/v or gate/up concatenates the packed rows, see `QuantLinear.concat`):
- f32: the weight itself (`weight`), our f32 kernel;
- bf16: `weight` in bf16, widened exactly to f32 in the kernel; f32 activations;
- int8: `qweight` int8 (N, K) and one f32 `scale` per row; f32 activations (the closest to fp32, though
  not token for token: SmolLM2's greedy text parts from fp32's at near-ties, see tests/compress);
- q8_0: llama.cpp's Q8_0, `qweight` int8 (N, K) and an f16 `scale` per 32 weights; the kernel quantizes
  the activations to Q8_0 blocks too;
- int4: `qweight` uint8 (N, K/2), two weights a byte, an f16 `scale` per group of 32/64/128 along K, and
  with `symmetric=False` an f16 `min` (Q4_0 / Q4_1 style); activations as for q8_0.

The embedding (`body.tokens`, int8 or q8_0 rows) is dequantised row by row on lookup. A tied LM head
(`cfg.tie_embeddings`) is untied as soon as either side is quantized: the model's config then says
`tie_embeddings=False` and is saved so (a float weight left on one side is stored under its own name).
When both are quantized, the head shares the embedding's packed tensors (the same scheme packs the same
rows identically); the checkpoint stores them once, as the embedding's, says `"tied_head": true`, and
loading shares them again.

A quantized lmforge folder has a `quantization` entry in `lmforge.json` (the `QuantConfig`, `fused`,
`tied_head`); loading builds the model on the meta device, swaps in empty quantized modules as the entry
says (`restore_quantized`) and takes the packed tensors as they are: nothing is quantized twice.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge import kernels
from lmforge.compress.config import DEFAULT_INCLUDE, config_from_dict
from lmforge.kernels import formats

SCHEMES = ("f32", "bf16", "int8", "q8_0", "int4")
EMBEDDING_SCHEMES = ("int8", "q8_0")
GROUP_SIZES = formats.GROUP_SIZES  # int4 scale groups
Q8_BLOCK = formats.BLOCK_SIZE  # Q8_0 blocks, and the activation blocks of the q8_0 and int4 kernels
HEAD = "lm_head.proj"
EMBEDDING = "body.tokens"
FORMAT_VERSION = 1


class QuantError(ValueError):
    """A quantization option, or a quantized checkpoint, is wrong; the message names the field, layer or tensor."""


@dataclass
class QuantConfig:
    """What to quantize, and how. Saved as the `quantization.config` of a quantized checkpoint's lmforge.json."""

    scheme: str = "int8"
    """f32, bf16, int8, q8_0 or int4 (see the module docstring)."""
    group_size: int = 32
    """Weights per int4 scale: 32, 64 or 128 (it must divide each layer's input width). q8_0 blocks are 32."""
    symmetric: bool = True
    """int4 only: Q4_0 style (scale only) when true, Q4_1 style (scale and min) when false."""
    include: Sequence[str] = DEFAULT_INCLUDE
    """Glob patterns over module names (`*.attn.*`, `body.decoder.blocks.0.*`); each must match some Linear.
    The LM head is left to `lm_head`."""
    lm_head: bool = False
    """Quantize the LM head's projection too (untying it from the embedding, see the module docstring)."""
    embedding: bool = False
    """Quantize the token embedding's rows (int8 or q8_0 only)."""
    embedding_scheme: str | None = None
    """The embedding's scheme (int8 or q8_0; a head tied to it shares those rows), when it differs from `scheme`:
    int4 layers over an int8 embedding, as llama.cpp's Q4 files keep their token embedding wider. None: `scheme`."""

    def __post_init__(self) -> None:
        if isinstance(self.include, list):
            self.include = tuple(self.include)

    def validate(self) -> None:
        """Raise one `QuantError` naming every bad field."""
        problems = []
        if self.scheme not in SCHEMES:
            problems.append(f"scheme={self.scheme!r} (allowed: {', '.join(SCHEMES)})")
        if self.group_size not in GROUP_SIZES:
            problems.append(f"group_size={self.group_size!r} (allowed: {', '.join(map(str, GROUP_SIZES))})")
        elif self.scheme == "q8_0" and self.group_size != Q8_BLOCK:
            problems.append(f"group_size={self.group_size}: q8_0 blocks are {Q8_BLOCK} wide (leave group_size out)")
        if not isinstance(self.symmetric, bool):
            problems.append(f"symmetric={self.symmetric!r} (allowed: true, false)")
        elif not self.symmetric and self.scheme != "int4":
            problems.append(f"symmetric=false: only int4 has an asymmetric form, not {self.scheme}")
        if isinstance(self.include, str) or not all(isinstance(p, str) and p for p in self.include):
            problems.append(f"include={self.include!r} (allowed: a list of glob patterns over module names)")
        if self.embedding and self.rows_scheme not in EMBEDDING_SCHEMES:
            problems.append(f"embedding=true: embedding rows are int8 or q8_0, not {self.rows_scheme}"
                            + (" (set embedding_scheme: int8)" if self.embedding_scheme is None else ""))
        if self.embedding_scheme is not None and not self.embedding:
            problems.append(f"embedding_scheme={self.embedding_scheme!r} needs embedding=true")
        if problems:
            raise QuantError("invalid quantization config: " + "; ".join(problems))

    @property
    def rows_scheme(self) -> str:
        """The scheme of the embedding's rows (and of a head that shares them)."""
        return self.embedding_scheme or self.scheme

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "include": list(self.include)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "quantization config") -> QuantConfig:
        """Build from a dict (e.g. lmforge.json's), rejecting unknown fields by name; validated."""
        return config_from_dict(cls, data, source, QuantError)


def packed_layout(scheme: str, out_features: int, in_features: int, group_size: int = 32,
                  symmetric: bool = True) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The buffers that hold an (out, in) weight in `scheme`: name -> (shape, dtype)."""
    n, k = out_features, in_features
    if scheme == "f32":
        return {"weight": ((n, k), torch.float32)}
    if scheme == "bf16":
        return {"weight": ((n, k), torch.bfloat16)}
    if scheme == "int8":
        return {"qweight": ((n, k), torch.int8), "scale": ((n,), torch.float32)}
    if scheme == "q8_0":
        return {"qweight": ((n, k), torch.int8), "scale": ((n, k // Q8_BLOCK), torch.float16)}
    layout = {"qweight": ((n, k // 2), torch.uint8), "scale": ((n, k // group_size), torch.float16)}
    if not symmetric:
        layout["min"] = ((n, k // group_size), torch.float16)
    return layout


def width_problem(name: str, in_features: int, scheme: str, group_size: int) -> str | None:
    """Why a layer of `in_features` inputs cannot take `scheme` (a block that does not divide it), or None."""
    block = {"q8_0": Q8_BLOCK, "int4": group_size}.get(scheme)
    if block is None or in_features % block == 0:
        return None
    what = "the q8_0 block" if scheme == "q8_0" else "group_size"
    fits = [g for g in GROUP_SIZES if in_features % g == 0] if scheme == "int4" else []
    hint = f"; group sizes that fit: {', '.join(map(str, fits))}" if fits else ""
    return f"{name}: input width {in_features} is not a multiple of {what} {block}{hint}"


def pack(weight: torch.Tensor, scheme: str, group_size: int = 32, symmetric: bool = True) -> dict[str, torch.Tensor]:
    """An (N, K) float weight packed in `scheme`: the tensors named as in `packed_layout`."""
    w = weight.detach().float()
    if scheme == "f32":
        return {"weight": w.contiguous()}
    if scheme == "bf16":
        return {"weight": w.to(torch.bfloat16)}
    if scheme == "int8":
        return dict(zip(("qweight", "scale"), formats.pack_int8(w)))
    if scheme == "q8_0":
        return dict(zip(("qweight", "scale"), formats.pack_q8_0(w)))
    if symmetric:
        return dict(zip(("qweight", "scale"), formats.pack_q4_0(w, group_size)))
    return dict(zip(("qweight", "scale", "min"), formats.pack_q4_1(w, group_size)))


def unpack(packed: dict[str, torch.Tensor], scheme: str, group_size: int = 32) -> torch.Tensor:
    """The f32 (N, K) weight of `pack`'s tensors."""
    if scheme in ("f32", "bf16"):
        return packed["weight"].float()
    if scheme == "int8":
        return formats.unpack_int8(packed["qweight"], packed["scale"])
    if scheme == "q8_0":
        return formats.unpack_q8_0(packed["qweight"], packed["scale"])
    return formats.unpack_q4(packed["qweight"], packed["scale"], packed.get("min"), group_size)


class _Packed(nn.Module):
    """Shared by the quantized modules: packed buffers that `.to(dtype)` leaves in their formats."""

    scheme: str
    group_size: int
    symmetric: bool

    def _register(self, layout: dict[str, tuple[tuple[int, ...], torch.dtype]], device) -> None:
        for name, (shape, dtype) in layout.items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        raise NotImplementedError

    def packed(self) -> dict[str, torch.Tensor]:
        """The packed tensors by name (`qweight`, `scale`, `min`, or `weight`), bias excluded."""
        return {name: getattr(self, name) for name in self._layout()}

    def set_packed(self, tensors: dict[str, torch.Tensor], where: str = "") -> None:
        """Take `tensors` as the packed buffers (not copied), after checking their shapes and dtypes."""
        for name, (shape, dtype) in self._layout().items():
            t = tensors[name]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise QuantError(f"{where or type(self).__name__}.{name}: {t.dtype} {tuple(t.shape)} does not fit "
                                 f"{self.scheme} ({dtype} {shape})")
            setattr(self, name, t)

    def dequantize(self) -> torch.Tensor:
        """The f32 weight (N, K) the packed tensors stand for."""
        return unpack(self.packed(), self.scheme, self.group_size)

    def _apply(self, fn: Callable, recurse: bool = True) -> _Packed:
        # `model.to(torch.bfloat16)` must not round the f16 scales or the f32 bias: buffers keep their
        # dtypes and follow device moves only. (This module has no parameters and no children.)
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self


class QuantLinear(_Packed):
    """`nn.Linear` with its weight packed in one scheme (buffers), multiplied by lmforge's kernels."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, scheme: str = "int8",
                 group_size: int = 32, symmetric: bool = True, device: torch.device | str | None = None) -> None:
        """Empty (uninitialised) buffers of the right shapes; see `from_linear` to quantize a Linear."""
        super().__init__()
        if scheme not in SCHEMES:
            raise QuantError(f"scheme={scheme!r} (allowed: {', '.join(SCHEMES)})")
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.group_size = group_size if scheme == "int4" else Q8_BLOCK
        self.symmetric = symmetric or scheme != "int4"
        self._register(self._layout(), device)
        if "min" not in self._layout():
            self.register_buffer("min", None)  # only int4 asymmetric (Q4_1) has minimums
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return packed_layout(self.scheme, self.out_features, self.in_features, self.group_size, self.symmetric)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, scheme: str, group_size: int = 32, symmetric: bool = True,
                    name: str = "linear") -> QuantLinear:
        """`linear`'s weight packed in `scheme` (bias kept f32); `name` is the layer's, for errors."""
        problem = width_problem(name, linear.in_features, scheme, group_size)
        if problem:
            raise QuantError(problem)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, group_size, symmetric,
                     device="meta")
        module.set_packed(pack(linear.weight, scheme, module.group_size, module.symmetric), name)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    @classmethod
    def concat(cls, parts: Sequence[QuantLinear]) -> QuantLinear:
        """One QuantLinear whose rows are the parts' rows, in order (fusing q/k/v or gate/up); nothing re-quantized."""
        first = parts[0]
        kinds = {(p.scheme, p.group_size, p.symmetric, p.in_features, p.bias is not None) for p in parts}
        if len(kinds) > 1:
            raise QuantError(f"cannot fuse quantized projections of different formats: {sorted(kinds)}")
        fused = cls(first.in_features, sum(p.out_features for p in parts), first.bias is not None, first.scheme,
                    first.group_size, first.symmetric, device="meta")
        fused.set_packed({name: torch.cat([p.packed()[name] for p in parts]) for name in first.packed()})
        if first.bias is not None:
            fused.bias = torch.cat([p.bias for p in parts])
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) -> (..., N), in x's dtype (the product itself in f32)."""
        dtype = x.dtype
        x = x if dtype == torch.float32 else x.float()
        if torch.is_grad_enabled() and x.requires_grad:
            # The kernels have no backward: training through this frozen layer (to LoRA factors before it,
            # QLoRA) multiplies by the weight dequantized on the fly, which autograd differentiates.
            y = nn.functional.linear(x, self.dequantize(), self.bias)
            return y if dtype == torch.float32 else y.to(dtype)
        if self.scheme == "f32":
            y = kernels.linear_f32(x, self.weight)
        elif self.scheme == "bf16":
            y = kernels.linear_bf16(x, self.weight, exact=True)
        elif self.scheme == "int8":
            y = kernels.linear_int8(x, self.qweight, self.scale)
        elif self.scheme == "q8_0":
            y = kernels.linear_q8_0(x, self.qweight, self.scale)
        else:
            y = kernels.linear_q4(x, self.qweight, self.scale, self.min, self.group_size)
        if self.bias is not None:
            y = y + self.bias
        return y if dtype == torch.float32 else y.to(dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.scheme in ("q8_0", "int4") else ""
        form = "" if self.scheme != "int4" else ", symmetric" if self.symmetric else ", asymmetric"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme}{group}{form}")


class QuantEmbedding(_Packed):
    """`nn.Embedding` with int8 or q8_0 rows, dequantised on lookup into the model's dtype."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scheme: str = "int8",
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        """Empty (uninitialised) buffers of the right shapes; see `from_embedding`."""
        super().__init__()
        if scheme not in EMBEDDING_SCHEMES:
            raise QuantError(f"embedding scheme={scheme!r} (allowed: {', '.join(EMBEDDING_SCHEMES)})")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.scheme, self.group_size, self.symmetric = scheme, Q8_BLOCK, True
        self.out_dtype = dtype  # what lookups return; follows `model.to(dtype)`
        self._register(self._layout(), device)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return packed_layout(self.scheme, self.num_embeddings, self.embedding_dim)

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding, scheme: str, name: str = "embedding") -> QuantEmbedding:
        """`embedding`'s rows packed in `scheme`."""
        problem = width_problem(name, embedding.embedding_dim, scheme, Q8_BLOCK)
        if problem:
            raise QuantError(problem)
        module = cls(embedding.num_embeddings, embedding.embedding_dim, scheme, device="meta",
                     dtype=embedding.weight.dtype)
        module.set_packed(pack(embedding.weight, scheme), name)
        return module

    @property
    def weight(self) -> torch.Tensor:
        """An empty tensor of the lookups' dtype on the tables' device: what `Model.dtype`, `Model.device`
        and `make_cache` read from the token embedding."""
        return torch.empty(0, dtype=self.out_dtype, device=self.qweight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., D) rows, dequantised."""
        flat = ids.reshape(-1)
        rows = unpack({name: t[flat] for name, t in self.packed().items()}, self.scheme)  # (M, D)
        return rows.to(self.out_dtype).view(*ids.shape, self.embedding_dim)

    def _apply(self, fn: Callable, recurse: bool = True) -> QuantEmbedding:
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype, device=self.qweight.device)).dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.scheme}"


@dataclass
class QuantSummary:
    """What `quantize_model` did: the modules swapped, and bytes before and after."""

    scheme: str
    modules: list[str] = field(default_factory=list)
    bytes_before: int = 0
    """Of the swapped modules' weights and biases (a tied weight counted once)."""
    bytes_after: int = 0
    model_bytes_before: int = 0
    """Of every tensor of the model's state dict, each shared one counted once."""
    model_bytes_after: int = 0

    def __str__(self) -> str:
        def mb(n: int) -> str:
            return f"{n / 1e6:.3g} MB"

        return (f"{len(self.modules)} modules -> {self.scheme}: {mb(self.bytes_before)} -> {mb(self.bytes_after)}; "
                f"the model {mb(self.model_bytes_before)} -> {mb(self.model_bytes_after)}")


def state_bytes(module: nn.Module) -> int:
    """Bytes of the module's state dict, each tensor shared between entries (a tied weight) counted once."""
    return _bytes(module.state_dict(keep_vars=True).values())


def _bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if t is not None:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape)) if not t.is_meta else id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def is_quantized(model: nn.Module) -> bool:
    """Whether any module of `model` is a quantized one."""
    return any(isinstance(m, _Packed) for m in model.modules())


def linear_names(model: nn.Module) -> list[str]:
    """The names of the Linear modules that `include` patterns choose from (the LM head is `lm_head`'s)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != HEAD]


def match_linears(model: nn.Module, include: Sequence[str], error: type[ValueError]) -> list[str]:
    """The Linear modules `include`'s glob patterns match (in model order, never the LM head); a pattern that
    matches none raises `error` listing the model's Linear modules (quantization and pruning choose alike)."""
    names = linear_names(model)
    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        examples = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "none"
        raise error(f"include pattern(s) {', '.join(map(repr, unmatched))} match no Linear module; "
                    f"the model's Linear modules are {examples}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]


def adapted_layers(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The layers of `names` that are, or lie inside, a fine-tuning wrapper (its class sets `adapted = True`)."""
    wrappers = [n for n, m in model.named_modules() if n and getattr(type(m), "adapted", False)]
    return [n for n in names if any(n == w or n.startswith(w + ".") for w in wrappers)]


def select(model: nn.Module, config: QuantConfig) -> list[str]:
    """The Linear modules `config.include` matches (in model order); a pattern that matches none is an error."""
    return match_linears(model, config.include, QuantError)


def _check(model: nn.Module, config: QuantConfig, names: list[str]) -> None:
    """Every layer `config` would quantize fits its scheme; one error naming each that does not."""
    problems = [width_problem(n, model.get_submodule(n).in_features, config.scheme, config.group_size) for n in names]
    if config.lm_head:
        if not _has(model, HEAD):
            problems.append(f"lm_head=true: the model has no LM head ({HEAD})")
        else:
            problems.append(width_problem(HEAD, model.get_submodule(HEAD).in_features, config.scheme,
                                          config.group_size))
    if config.embedding:
        if not _has(model, EMBEDDING):
            problems.append(f"embedding=true: the model has no token embedding ({EMBEDDING})")
        else:
            problems.append(width_problem(EMBEDDING, model.get_submodule(EMBEDDING).embedding_dim,
                                          config.rows_scheme, Q8_BLOCK))
    problems = [p for p in problems if p]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise QuantError(f"cannot quantize to {config.scheme}: " + "; ".join(problems[:4]) + more)


def _refuse_adapted(model: nn.Module, names: list[str]) -> None:
    """No layer of `names` is, or lies inside, a fine-tuning wrapper (its class sets `adapted = True`)."""
    hits = adapted_layers(model, names)
    if hits:
        raise QuantError(f"cannot quantize adapted layers ({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''}): "
                         "merge the adapter first (lmforge.adapt.lora.merge_and_unload), or train LoRA on a "
                         "quantized base with method qlora")


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _untie(model: nn.Module) -> None:
    """The config says the head and embedding are separate from now on (the module docstring says why)."""
    if getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
        cfg = model.cfg.replace(tie_embeddings=False)
        if getattr(model.body, "cfg", None) is model.cfg:
            model.body.cfg = cfg
        model.cfg = cfg


def _is_tied(model: nn.Module, config: QuantConfig) -> bool:
    return bool(getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings
                and (config.lm_head or config.embedding) and _has(model, HEAD))


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig) -> QuantSummary:
    """Swap the Linear modules `config` chooses (and the head / embedding) for quantized ones, in place.

    Works on fused (`fuse_projections`) and unfused models. The config is kept as `model.quantization`
    (what `save_model` writes). Every problem (a pattern matching nothing, a group size that does not
    divide a layer's width) is raised before anything changes.
    """
    config.validate()
    if is_quantized(model):
        raise QuantError("the model is already quantized; quantize a float model (once)")
    names = select(model, config)
    _refuse_adapted(model, names + ([HEAD] if config.lm_head and _has(model, HEAD) else []))
    _check(model, config, names)
    summary = QuantSummary(config.scheme, model_bytes_before=state_bytes(model))
    tied = _is_tied(model, config)
    replaced: list[tuple[str, nn.Module, nn.Module]] = []
    for name in names:
        linear = model.get_submodule(name)
        replaced.append((name, linear, QuantLinear.from_linear(linear, config.scheme, config.group_size,
                                                               config.symmetric, name)))
    embedding = None
    if config.embedding:
        tokens = model.get_submodule(EMBEDDING)
        embedding = QuantEmbedding.from_embedding(tokens, config.rows_scheme, EMBEDDING)
        replaced.append((EMBEDDING, tokens, embedding))
    if config.lm_head:
        head = model.get_submodule(HEAD)
        if tied and embedding is not None:  # the same rows, packed the same way: share them
            quantized = QuantLinear(head.in_features, head.out_features, head.bias is not None, config.rows_scheme,
                                    device="meta")
            quantized.set_packed(embedding.packed(), HEAD)
            if head.bias is not None:
                quantized.bias = head.bias.detach().float().clone()
        else:
            quantized = QuantLinear.from_linear(head, config.scheme, config.group_size, config.symmetric, HEAD)
        replaced.append((HEAD, head, quantized))
    before = [t for _, old, _ in replaced for t in old.state_dict(keep_vars=True).values()]
    summary.bytes_before = _bytes(before)
    summary.bytes_after = _bytes(t for _, _, new in replaced for t in new.state_dict(keep_vars=True).values())
    for name, _, new in replaced:
        model.set_submodule(name, new)
    if tied:
        _untie(model)
    model.quantization = config
    summary.modules = [name for name, _, _ in replaced]
    summary.model_bytes_after = state_bytes(model)
    return summary


def _fused(model: nn.Module) -> bool:
    return any(getattr(m, "qkv_proj", None) is not None or getattr(m, "gate_up_proj", None) is not None
               for m in model.modules())


def _head_shares_embedding(model: nn.Module) -> bool:
    if not (_has(model, HEAD) and _has(model, EMBEDDING)):
        return False
    head, tokens = model.get_submodule(HEAD), model.get_submodule(EMBEDDING)
    return (isinstance(head, QuantLinear) and isinstance(tokens, QuantEmbedding)
            and all(head.packed()[n] is t for n, t in tokens.packed().items()))


def checkpoint_entry(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """lmforge.json's `quantization` entry for a quantized model, and `tensors` to write (a shared head left out)."""
    tied = _head_shares_embedding(model)
    entry = {"version": FORMAT_VERSION, "config": model.quantization.to_dict(), "fused": _fused(model),
             "tied_head": tied}
    if tied:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(HEAD + ".") or k == f"{HEAD}.bias"}
    return entry, tensors


def restore_quantized(model: nn.Module, entry: dict, tensors: dict[str, torch.Tensor],
                      source: str = "lmforge.json") -> dict[str, torch.Tensor]:
    """Swap empty quantized modules into `model` (built on the meta device) as lmforge.json's `entry` says.

    Returns `tensors` with a shared head's entries pointing at the embedding's. Packed tensors of the
    wrong dtype are an error naming them; shapes are `load_model`'s to check. Nothing is quantized here.
    """
    where = f"{source}: quantization"
    if not isinstance(entry, dict) or "config" not in entry:
        raise QuantError(f"{where}: expected a mapping with a 'config' (a QuantConfig)")
    if entry.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise QuantError(f"{where}: version {entry.get('version')!r}; this lmforge reads version {FORMAT_VERSION}")
    config = QuantConfig.from_dict(entry["config"], f"{where}.config")
    if entry.get("fused"):
        model.fuse_projections()
    names = select(model, config)
    _check(model, config, names)
    for name in names:
        linear = model.get_submodule(name)
        model.set_submodule(name, QuantLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                              config.scheme, config.group_size, config.symmetric, device="meta"))
    if config.embedding:
        tokens = model.get_submodule(EMBEDDING)
        model.set_submodule(EMBEDDING, QuantEmbedding(tokens.num_embeddings, tokens.embedding_dim,
                                                      config.rows_scheme, device="meta"))
    if config.lm_head:
        head = model.get_submodule(HEAD)
        scheme = config.rows_scheme if entry.get("tied_head") else config.scheme  # a shared head is the rows'
        model.set_submodule(HEAD, QuantLinear(head.in_features, head.out_features, head.bias is not None,
                                              scheme, config.group_size, config.symmetric, device="meta"))
    if entry.get("tied_head"):
        if not (config.lm_head and config.embedding):
            raise QuantError(f"{where}: tied_head=true needs lm_head and embedding quantized")
        tensors = {**tensors, **{f"{HEAD}.{n}": tensors[f"{EMBEDDING}.{n}"]
                                 for n in model.get_submodule(EMBEDDING).packed() if f"{EMBEDDING}.{n}" in tensors}}
    wrong = []
    for name, module in model.named_modules():
        if isinstance(module, _Packed):
            for buffer, (_, dtype) in module._layout().items():
                key = f"{name}.{buffer}"
                if key in tensors and tensors[key].dtype != dtype:
                    wrong.append(f"{key}: dtype {str(tensors[key].dtype).removeprefix('torch.')} != "
                                 f"{str(dtype).removeprefix('torch.')}")
    if wrong:
        raise QuantError(f"{source}: packed tensors of the wrong type for {config.scheme}: " + "; ".join(wrong[:8]))
    model.quantization = config
    return tensors
