"""One attention module for self-, cross- and cached attention, plus the masks it needs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.positions import apply_rotary

# `enable_gqa` lets SDPA broadcast key/value heads without copying them (torch >= 2.5).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass
class CacheWrite:
    """Where one forward's T new keys/values go: slots `start:start+T` of every row, or per-row `slots` (B, T).

    `kv_len` is how many leading slots attention reads afterwards; `mask` (B, 1, T, kv_len) says which of
    them each query sees (None: all, causally, as SDPA's `is_causal`)."""

    start: int | None
    slots: torch.Tensor | None
    kv_len: int
    mask: torch.Tensor | None


class KVCache:
    """Keys and values of one attention layer, preallocated: (B, H_kv, max_len, D).

    Alone it appends (`length` grows by T per call). Inside a `Cache` (see `transformer.Cache`) each row
    fills its own slots: the `Cache` decides the write once per forward and hands it to every layer.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.write: CacheWrite | None = None  # set by the owning `Cache` before each forward

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, T, D) new keys and values; return the (B, H_kv, kv_len, D) slots attention reads."""
        write = self.write
        if write is None:  # standalone: append
            start, end = self.length, self.length + k.shape[2]
            if end > self.max_len:
                raise ValueError(f"KV cache full: {end} positions requested, {self.max_len} allocated")
            write = CacheWrite(start, None, end, None)
            self.length = end
        if write.slots is None:
            self.k[:, :, write.start:write.start + k.shape[2]] = k
            self.v[:, :, write.start:write.start + k.shape[2]] = v
        else:
            index = write.slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.k.scatter_(2, index, k)
            self.v.scatter_(2, index, v)
        return self.k[:, :, :write.kv_len], self.v[:, :, :write.kv_len]

    def set(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store fixed keys and values (cross-attention over the encoder output)."""
        self.k, self.v, self.length = k, v, k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` (beam search)."""
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention with grouped/multi-query heads, via `scaled_dot_product_attention`.

    Self-attention when `kv_input` is None, cross-attention otherwise; with a `cache`, new keys
    and values are appended (self) or computed once and reused (cross).
    """

    _record: list[torch.Tensor] | None = None
    """Set to a list (by `record_attention`) to compute attention explicitly and
    append each forward's probabilities to it; None (the default) keeps the fused SDPA path."""
    _record_grad: bool = False
    """With `_record` set: append the probabilities with their autograd graph instead of detached, so a loss
    on them trains the attention (attention-map distillation, `lmforge.compress.distill`)."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.cross = cross
        self.scale = cfg.attn_scale
        self.dropout = cfg.attn_dropout
        d_inner = cfg.n_heads * cfg.head_dim
        d_kv = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, d_inner, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, d_kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, d_kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.out_bias)
        self.qkv_proj: nn.Linear | None = None  # q, k and v in one, after `fuse_projections` (inference)

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Replace q/k/v by one Linear for inference: one GEMM and one weight read instead of three.

        The separate projections are gone afterwards (no LoRA, no export): a model to serve, not to train.
        Parts that are not `nn.Linear` (quantized ones) fuse through their class's `concat(parts)`. Parts
        that are adapted (a LoRA or adapter wrapper, whose class sets `adapted = True`) stay apart, all
        three: fusing would drop the adapter.
        """
        if self.cross or self.qkv_proj is not None:
            return
        parts = [self.q_proj, self.k_proj, self.v_proj]
        if any(is_adapted(p) for p in parts):
            return
        if not all(isinstance(p, nn.Linear) for p in parts):  # packed parts (lmforge.compress): rows concatenated
            if len({type(p) for p in parts}) > 1:
                return  # some quantized, some not: they stay apart
            fused = type(parts[0]).concat(parts)
        else:
            fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                              device=parts[0].weight.device, dtype=parts[0].weight.dtype)
            fused.weight.copy_(torch.cat([p.weight for p in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
        self.split = [p.out_features for p in parts]
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # The head count follows from the width, so a projection split across tensor-parallel ranks
        # (each rank holding some of the heads) needs no other change here.
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_input: torch.Tensor | None = None,
        cache: KVCache | None = None,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). `mask` is boolean (True = attend), broadcastable to (B, H, T, S).

        `prefix_kv`: extra keys and values (B or 1, H_kv, P, D) that every query sees, put before this
        forward's keys after the cache update (never cached) and without RoPE (prefix-tuning's virtual
        tokens have no position: they are keys as the layer would have rotated them).
        """
        b, t, _ = x.shape
        if prefix_kv is not None and self.cross:
            raise ValueError("prefix_kv is for self-attention; cross-attention attends to the encoder output only")
        if self.qkv_proj is not None:
            q, k, v = (self._heads(p) for p in self.qkv_proj(x).split(self.split, dim=-1))
        else:
            q = self._heads(self.q_proj(x))
        if self.cross and cache is not None and cache.length:
            k, v = cache.k, cache.v  # encoder keys/values, computed on the first step
        else:
            if self.qkv_proj is None:
                src = x if kv_input is None else kv_input
                k = self._heads(self.k_proj(src))
                v = self._heads(self.v_proj(src))
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                if self.cross:
                    cache.set(k, v)
                else:
                    k, v = cache.update(k, v)
        if prefix_kv is not None and prefix_kv[0].shape[2]:
            k, v, mask = _with_prefix(k, v, mask, is_causal, t, *prefix_kv)
        extra = {}
        if k.shape[1] != q.shape[1]:  # grouped-query / multi-query
            if _SDPA_GQA:
                extra["enable_gqa"] = True
            else:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self._record is not None:
            y = self._recorded_attention(q, k, v, mask, is_causal and mask is None)
        else:
            y = sdpa(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                     dropout_p=self.dropout if self.training else 0.0, scale=self.scale, **extra)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))

    def _recorded_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            is_causal: bool) -> torch.Tensor:
        """softmax(q k^T * scale + mask) v written out, as SDPA computes it, with the probabilities (B, H, T, S)
        appended in float32 to `self._record` (`record_attention`): detached, or with
        their graph when `self._record_grad`."""
        if k.shape[1] != q.shape[1]:  # grouped-query heads: each key/value head serves `rep` query heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, S)
        if is_causal:  # SDPA's `is_causal`: the top-left triangle
            mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(dim=-1)
        self._record.append(probs if self._record_grad else probs.detach())
        if self.training and self.dropout:
            probs = F.dropout(probs, self.dropout)
        return (probs @ v.float()).to(v.dtype)  # (B, H, T, D)


def is_adapted(layer: nn.Module) -> bool:
    """Whether `layer` is wrapped by a fine-tuning method (its class sets `adapted = True`): never fuse it."""
    return bool(getattr(type(layer), "adapted", False))


def _with_prefix(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, t: int,
                 prefix_k: torch.Tensor, prefix_v: torch.Tensor):
    """Keys/values (B, H_kv, S, D) with the prefix (B or 1, H_kv, P, D) before them, and the mask over P + S.

    The prefix columns are visible to every query (padding and causality concern real tokens only); a
    causal forward without a mask gets its causal mask written out, since SDPA's `is_causal` would align
    it to the wrong corner once keys outnumber queries.
    """
    b, s, p = k.shape[0], k.shape[2], prefix_k.shape[2]
    prefix_k = prefix_k.to(k.dtype).expand(b, -1, -1, -1)
    prefix_v = prefix_v.to(v.dtype).expand(b, -1, -1, -1)
    k, v = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)  # (B, H_kv, P + S, D)
    if mask is None:
        if not is_causal:
            return k, v, None
        q_pos = torch.arange(s - t, s, device=k.device)[:, None]  # the queries are the last t of s positions
        mask = (torch.arange(s, device=k.device)[None, :] <= q_pos)[None, None]  # (1, 1, T, S)
    seen = torch.ones(*mask.shape[:-1], p, dtype=torch.bool, device=mask.device)
    return k, v, torch.cat([seen, mask.bool()], dim=-1)  # (.., T, P + S)


_SDPA_MATH_ONLY = False  # set once the fused CPU kernels refused this machine's half-precision inputs


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """`scaled_dot_product_attention`, falling back to its math kernel where the fused one refuses to run.

    torch's CPU flash kernel picks its bf16 path from the CPU it sees (AMX) but packs with the kernels of
    the capability it dispatches to: under `ATEN_CPU_CAPABILITY=avx2` on an AMX machine it raises
    "pack_vnni2 is only supported when avx512 is supported". The math kernel computes the same thing.
    """
    global _SDPA_MATH_ONLY
    if not _SDPA_MATH_ONLY:
        try:
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        except RuntimeError as err:
            if "is only supported when" not in str(err) or q.device.type != "cpu":
                raise
            _SDPA_MATH_ONLY = True
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    key_padding: torch.Tensor | None = None,
    sliding_window: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, q_len, kv_len), True = may attend; None when nothing is masked.

    The queries are the last `q_len` of `kv_len` positions (earlier ones are cached). Keys where
    `key_padding` (B, kv_len) is 0/False are hidden. A query row with no visible key (a padding
    query) is opened fully so softmax stays finite; its output is ignored anyway.
    """
    mask = None
    if causal or sliding_window is not None:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        if causal:
            allowed &= k_pos <= q_pos
        if sliding_window is not None:
            allowed &= (q_pos - k_pos) < sliding_window
        mask = allowed[None, None]
    if key_padding is not None:
        keys = key_padding[:, None, None, :].bool()
        mask = keys if mask is None else mask & keys
    if mask is None:
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)


@contextmanager
def record_attention(modules: Sequence[Attention], grad: bool = False) -> Iterator[list[list[torch.Tensor]]]:
    """Record the attention probabilities of `modules` while the block runs: one list per module, in order.

    Each forward of a module appends its probabilities (B, H, T, S) in float32, detached (or, with `grad`,
    with their autograd graph: a loss on them trains the attention, as attention-map distillation does); S
    counts a prefix's virtual keys first, then cached and new keys. Inside, those modules compute attention
    explicitly (same outputs, slower); outside, the fused SDPA path is back.
    """
    records: list[list[torch.Tensor]] = [[] for _ in modules]
    for module, record in zip(modules, records):
        if not isinstance(module, Attention):
            raise TypeError(f"record_attention takes lmforge Attention modules, not {type(module).__name__}")
        module._record, module._record_grad = record, grad
    try:
        yield records
    finally:
        for module in modules:
            module._record, module._record_grad = None, False
