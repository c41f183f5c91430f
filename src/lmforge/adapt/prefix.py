"""Prefix-tuning (Li & Liang 2021): trained keys and values that every self-attention layer sees first.

Each stack of the model (the encoder and the decoder of an encoder-decoder each) gets a `PrefixEncoder`:
`num_virtual_tokens` virtual-token embeddings and, with `prefix_hidden > 0`, the paper's
reparameterisation MLP (d_model -> hidden -> n_layers * 2 * H_kv * D, tanh between; it trains more
stably than the prefixes themselves), as PEFT's `PrefixEncoder` does; with `prefix_hidden = 0` the
keys and values are the parameters. A forward pre-hook on the stack hands its blocks their
`(keys, values)` (B, H_kv, P, D) on every forward, so every task model, the trainer and the
generation engine run unchanged: the prefix is never written into a KV cache, has no position, and is
visible to every query (padding and causality concern real tokens only).

The new modules are `model.prefix_encoder` (the first stack: the encoder, or a decoder-only model's
decoder) and `model.decoder_prefix_encoder` (the decoder of an encoder-decoder); base names do not change.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.base import AdaptConfig, AdaptError, register


class PrefixEncoder(nn.Module):
    """The key/value prefixes of one stack: (P, d) embeddings through an MLP, or (P, L * 2 * H_kv * D) directly."""

    def __init__(self, num_virtual_tokens: int, n_layers: int, n_kv_heads: int, head_dim: int, d_model: int,
                 hidden: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_virtual_tokens, self.n_layers = num_virtual_tokens, n_layers
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        width = n_layers * 2 * n_kv_heads * head_dim
        kw = dict(device=device, dtype=dtype)
        # PEFT's layout and initialisation: nn.Embedding's N(0, 1), nn.Linear's Kaiming-uniform.
        if hidden > 0:
            self.embedding = nn.Embedding(num_virtual_tokens, d_model, **kw)
            self.transform = nn.Sequential(nn.Linear(d_model, hidden, **kw), nn.Tanh(), nn.Linear(hidden, width, **kw))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, width, **kw)
            self.transform = None
        self.handles: list = []  # the stack's hook (remove them to run the base model)

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One (keys, values) pair per block, each (batch_size, H_kv, P, D) (a broadcast view of one row)."""
        flat = self.embedding.weight  # (P, d) or (P, L * 2 * H_kv * D)
        if self.transform is not None:
            flat = self.transform(flat)  # (P, L * 2 * H_kv * D)
        p = self.num_virtual_tokens
        kv = flat.view(p, self.n_layers, 2, self.n_kv_heads, self.head_dim).permute(1, 2, 3, 0, 4)  # (L, 2, H_kv, P, D)
        kv = kv[:, :, None].expand(-1, -1, batch_size, -1, -1, -1)  # (L, 2, B, H_kv, P, D)
        return [(layer[0], layer[1]) for layer in kv]

    def supply(self, stack: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the stack: pass the prefixes for this batch, unless the caller passed its own."""
        if kwargs.get("prefix_kv") is not None:
            return args, kwargs
        x = args[0] if args else kwargs["x"]  # (B, T, d)
        return args, {**kwargs, "prefix_kv": self(x.shape[0])}


def prefix_stacks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(attribute name, stack) for every stack of the model's body: `prefix_encoder` first, then the decoder's."""
    body = getattr(model, "body", None)
    stacks = [s for s in (getattr(body, "encoder", None), getattr(body, "decoder", None)) if s is not None]
    if not stacks:
        raise AdaptError(f"method prefix needs an lmforge Transformer model, not a {type(model).__name__}")
    names = ["prefix_encoder", "decoder_prefix_encoder"]
    return list(zip(names, stacks))


@register("prefix")
def apply(model: nn.Module, cfg: AdaptConfig) -> None:
    """Attach a trainable `PrefixEncoder` to every stack of `model` and hook it into the stack's forward."""
    if cfg.num_virtual_tokens < 1:
        raise AdaptError(f"num_virtual_tokens={cfg.num_virtual_tokens}: prefix-tuning needs at least one")
    if cfg.prefix_hidden < 0:
        raise AdaptError(f"prefix_hidden={cfg.prefix_hidden}: use 0 (no MLP) or a positive width")
    mcfg = model.cfg
    kv_heads = {mcfg.for_layer(i).n_kv_heads for i in range(mcfg.n_layers)}
    if len(kv_heads) > 1:  # one PrefixEncoder holds one (H_kv, D) shape for all its layers
        raise AdaptError(f"prefix-tuning needs uniform layer widths: this model's layers have {sorted(kv_heads)} "
                         "key/value heads (layer_n_kv_heads, after structured pruning); use LoRA or prompt-tuning")
    n_kv_heads = kv_heads.pop()
    weight = model.body.tokens.weight  # new parameters live where the base's do (meta when loading)
    for name, stack in prefix_stacks(model):
        encoder = PrefixEncoder(cfg.num_virtual_tokens, len(stack.blocks), n_kv_heads, mcfg.head_dim,
                                mcfg.d_model, cfg.prefix_hidden, device=weight.device, dtype=weight.dtype)
        setattr(model, name, encoder)
        # A bound method: `copy.deepcopy(model)` rebinds it to the copy's encoder.
        encoder.handles.append(stack.register_forward_pre_hook(encoder.supply, with_kwargs=True))
