"""Greedy and sampled decoding for `CausalLM` and `Seq2SeqLM`, with a preallocated KV cache."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.model import CausalLM, Seq2SeqLM


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution (B, V) that `sample_next` draws from, with Hugging Face's semantics.

    Logits are divided by `temperature`; `top_k` keeps the k largest (and every id tied with the
    k-th); `top_p` then keeps the smallest prefix of the sorted, renormalised distribution whose mass
    is >= top_p (at least one id; Holtzman et al. 2020). `top_k` of 0 or None and `top_p` of None
    or 1 switch a filter off. At temperature 0 the distribution is one-hot at the argmax.
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 or None: no top-k filter)")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in [0, 1]")
    if temperature <= 0:
        return nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        mass = sorted_logits.softmax(-1).cumsum(-1)  # (B, V): mass of each sorted prefix
        drop = torch.zeros_like(mass, dtype=torch.bool)
        drop[..., 1:] = mass[..., :-1] >= top_p  # the prefix before this id already holds top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax at temperature 0, else sampled."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: CausalLM | Seq2SeqLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """New token ids (B, <= max_new_tokens) after each prompt.

    Decoder prompts may be left-padded (`attention_mask` 0 on the left); positions then count
    real tokens only, so a padded row decodes exactly as it would alone. Rows that emit
    `eos_token_id` keep emitting it.
    """
    b = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    seq2seq = isinstance(model, Seq2SeqLM)
    if seq2seq:
        encoder_out = model.encode(input_ids, attention_mask)
        start = model.cfg.decoder_start_token_id
        tokens = torch.full((b, 1), start if start is not None else 0, dtype=torch.long, device=input_ids.device)
        mask = None
    else:
        tokens, mask = input_ids, attention_mask
    cache = model.make_cache(b, tokens.shape[1] + max_new_tokens) if use_cache else None
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    out, step_input = [], tokens
    for _ in range(max_new_tokens):
        if seq2seq:
            logits = model(None, attention_mask, decoder_input_ids=step_input, encoder_out=encoder_out,
                           cache=cache, last_only=True)
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            positions = positions[:, -step_input.shape[1]:]
            logits = model(step_input, mask, positions, cache=cache, last_only=True)
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if not seq2seq:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        step_input = nxt[:, None] if use_cache else tokens
        if eos_token_id is not None and bool(done.all()):
            break
    return torch.stack(out, dim=1)
