"""Prompt-tuning (Lester et al. 2021): trained embeddings put before every input sequence.

`model.soft_prompt` holds `num_virtual_tokens` vectors of width d_model, initialised from the
embeddings of the tokens of `prompt_init_text` (the tokenizer comes from `model.adapt_tokenizer`) or
from random rows of the vocabulary embedding. Hooks on the first stack of the body (the encoder of an
encoder-decoder, else the decoder) prepend them to the stack's input embeddings, (B, T, d) -> (B, P+T, d),
with the attention mask, position ids and token types extended to match, and strip the P leading outputs
again, so every head sees (B, T, d) aligned with its inputs and every task model, the trainer and the
generation engine run unchanged. The real tokens take positions P..P+T-1, as when PEFT prepends the
prompt to `inputs_embeds`.

With a KV cache, the prompt goes in on the forward that starts an empty cache (the prefill) and later
steps see it through the cache, whose rows keep P more slots (`Transformer.virtual_tokens`).
In an encoder-decoder the decoder's cross-attention sees the encoder outputs of the real tokens only
(the prompt acts through the encoder's self-attention).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.adapt.base import AdaptConfig, AdaptError, register


class SoftPrompt(nn.Module):
    """P trainable input embeddings (P, d) and the stack hooks that put them in front of every sequence."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (P, d)
        self.handles: list = []  # the stack's hooks (remove them to run the base model)
        self._prepended: list[bool] = []  # per running forward (a stack of them), whether the hook prepended

    @property
    def num_virtual_tokens(self) -> int:
        return self.weight.shape[0]

    def prepend(self, stack: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: x (B, T, d) -> (B, P+T, d), mask, positions and token types extended to match.

        Given position ids count the caller's tokens; the model sees them shifted by P, on every forward.
        """
        kwargs = dict(kwargs)
        p = self.num_virtual_tokens
        positions = kwargs.get("position_ids")  # the caller's, over its real tokens: they follow the prompt
        cache = kwargs.get("cache")
        if cache is not None and cache.fill.any():  # the prompt is in the cache already (decoding)
            if positions is not None:
                kwargs["position_ids"] = positions + p
            self._prepended.append(False)
            return args, kwargs
        x = args[0] if args else kwargs.pop("x")  # (B, T, d)
        b = x.shape[0]
        x = torch.cat([self.weight.to(x.dtype).expand(b, -1, -1), x], dim=1)  # (B, P+T, d)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], p), mask], dim=1)  # (B, P+S)
        if positions is not None:  # the prompt takes positions 0..P-1
            first = torch.arange(p, device=positions.device, dtype=positions.dtype).expand(positions.shape[0], -1)
            kwargs["position_ids"] = torch.cat([first, positions + p], dim=1)
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], p), types], dim=1)
        self._prepended.append(True)
        return (x, *args[1:]), kwargs

    def strip(self, stack: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: hidden states (B, P+T, d) -> (B, T, d), aligned with the caller's tokens again."""
        if not self._prepended.pop():
            return output
        return output[:, self.num_virtual_tokens:]


def _initial_prompt(model: nn.Module, cfg: AdaptConfig) -> torch.Tensor:
    """(P, d): the embeddings (as the stack receives them, scaled) of the init text's tokens, or random tokens'."""
    body, p = model.body, cfg.num_virtual_tokens
    weight = body.tokens.weight
    if weight.is_meta:  # being built to load a checkpoint: its tensors replace whatever we would compute
        return torch.empty(p, weight.shape[1], device="meta", dtype=weight.dtype)
    if cfg.prompt_init_text is not None:
        tokenizer = getattr(model, "adapt_tokenizer", None)
        if tokenizer is None:
            raise AdaptError("prompt_init_text needs a tokenizer: set model.adapt_tokenizer (an "
                             "lmforge.tokenizers.Tokenizer) before adapting, or leave prompt_init_text unset")
        ids = tokenizer.encode(cfg.prompt_init_text, add_special_tokens=False)
        if not ids:
            raise AdaptError(f"prompt_init_text={cfg.prompt_init_text!r} has no tokens")
        if max(ids) >= weight.shape[0]:
            raise AdaptError(f"prompt_init_text: the tokenizer gives id {max(ids)}, beyond this model's "
                             f"vocabulary of {weight.shape[0]}: use the model's own tokenizer")
        ids = (ids * -(-p // len(ids)))[:p]  # repeated to length, as PEFT does
        ids = torch.tensor(ids, device=weight.device)
    else:  # Lester et al.'s sampled-vocabulary init: random rows of the embedding (torch's global RNG)
        ids = torch.randint(0, weight.shape[0], (p,)).to(weight.device)
    with torch.no_grad():
        return body.embed(ids).detach().clone()  # (P, d)


@register("prompt")
def apply(model: nn.Module, cfg: AdaptConfig) -> None:
    """Attach a trainable `SoftPrompt` and hook it into the first stack of the body."""
    if cfg.num_virtual_tokens < 1:
        raise AdaptError(f"num_virtual_tokens={cfg.num_virtual_tokens}: prompt-tuning needs at least one")
    body = getattr(model, "body", None)
    stack = getattr(body, "encoder", None) or getattr(body, "decoder", None)
    if stack is None:
        raise AdaptError(f"method prompt needs an lmforge Transformer model, not a {type(model).__name__}")
    prompt = SoftPrompt(_initial_prompt(model, cfg))
    model.soft_prompt = prompt
    # Bound methods: `copy.deepcopy(model)` rebinds them to the copy's prompt.
    prompt.handles.append(stack.register_forward_pre_hook(prompt.prepend, with_kwargs=True))
    prompt.handles.append(stack.register_forward_hook(prompt.strip, with_kwargs=True))
    if stack is body.decoder:  # the decoder's KV cache holds the prompt too
        body.virtual_tokens = cfg.num_virtual_tokens
