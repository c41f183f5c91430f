"""Interpretability for one input: attention maps per layer and head, and gradient x input saliency over tokens.

Both take any lmforge task model and its tokenizer, and encode the text as the model was trained on it: with
the tokenizer's template (`[CLS] ... [SEP]` for BERT, a BOS for LLaMA), cut to `max_len` tokens with the
template's special tokens kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.evaluate.errors import EvaluationError
from lmforge.models.attention import record_attention

__all__ = ["attention_maps", "record_attention", "saliency"]


def attention_maps(model: nn.Module, tokenizer, text: str, max_len: int = 512) -> dict[str, Any]:
    """The self-attention probabilities of every layer and head for `text`.

    Returns {"tokens": [str] (T), "layers": L, "heads": H, "attention": float32 array (L, H, T, T)}, row i
    being how query token i spreads its attention over the tokens (rows sum to 1; a decoder's maps are
    lower-triangular). An encoder-decoder gives its encoder's self-attention over the text. A model with
    virtual tokens (prefix- or prompt-tuning) adds "virtual": (L, H, T, P), the attention the real tokens
    pay to the P virtual positions, so that `attention` and `virtual` rows together sum to 1; queries of
    virtual positions are left out.
    """
    body = _body(model)
    stack = body.encoder if body.encoder is not None else body.decoder
    ids, types, tokens = _encode(model, tokenizer, text, max_len)
    t = ids.shape[1]
    modes = _eval_mode(model)
    try:
        with torch.no_grad(), record_attention([block.attn for block in stack.blocks]) as records:
            if body.encoder is not None:
                body.encode(ids, token_type_ids=types)
            else:
                body.decode(ids)
    finally:
        _restore_mode(model, modes)
    probs = torch.stack([r[-1][0] for r in records])  # (L, H, T', S): the one forward's, batch row 0
    out: dict[str, Any] = {"tokens": tokens, "layers": probs.shape[0], "heads": probs.shape[1],
                           "attention": probs[:, :, -t:, -t:].cpu().numpy().astype(np.float32)}
    if probs.shape[-1] > t:  # virtual keys come first (a prefix's, or a soft prompt's positions)
        out["virtual"] = probs[:, :, -t:, :-t].cpu().numpy().astype(np.float32)
    return out


def saliency(model: nn.Module, tokenizer, text: str, target: int | None = None, max_len: int = 512) -> dict[str, Any]:
    """Gradient x input saliency of each token of `text` for one output of `model`.

    The gradient is taken with respect to the output of the token-embedding layer (`body.tokens`, what
    transformers calls `inputs_embeds`: before any embedding scale, position or token-type embedding and
    norm). `scores` (T,) is sum over the hidden size of gradient * embedding; `grad_norm` (T,) is the L2
    norm of the gradient. The output scored:
    - a `SequenceClassifier`: the logit of class `target` (default: the predicted class), named by the
      config's labels (else transformers' LABEL_i);
    - a `CausalLM`: the log-probability of the next token after the text, token id `target` (default:
      the most likely one).
    Returns {"tokens", "scores", "grad_norm", "target", "target_name", "value"} (`value`: the scored logit
    or log-probability). Parameters' `.grad` and `requires_grad` are left untouched and the model's
    train/eval modes restored; dropout is off while scoring.
    """
    from lmforge.interop.hf import label_names
    from lmforge.models.model import CausalLM, SequenceClassifier

    if not isinstance(model, (SequenceClassifier, CausalLM)):
        raise EvaluationError(f"saliency needs a SequenceClassifier or CausalLM, not a {type(model).__name__} "
                              "(token-level and span heads have no single output to explain)")
    body = _body(model)
    ids, types, tokens = _encode(model, tokenizer, text, max_len)
    captured: list[torch.Tensor] = []

    def leaf(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # The embeddings become a leaf of their own: the gradient stops here (none reaches the table).
        embedded = output.detach().requires_grad_(True)
        captured.append(embedded)
        return embedded

    modes = _eval_mode(model)
    handle = body.tokens.register_forward_hook(leaf)
    try:
        with torch.enable_grad():
            if isinstance(model, SequenceClassifier):
                logits = model(ids, token_type_ids=types)[0]  # (num_labels,)
                target = _check_target(target, logits, "class index")
                value = logits[target]
                name = label_names(model.cfg)[target]
            else:
                log_probs = model(ids)[0, -1].float().log_softmax(-1)  # (V,)
                target = _check_target(target, log_probs, "token id")
                value = log_probs[target]
                name = tokenizer.id_to_token(target) or str(target)
            embedded = captured[-1]
            (grad,) = torch.autograd.grad(value, embedded)  # only this gradient: parameters' .grad stay as they are
    finally:
        handle.remove()
        _restore_mode(model, modes)
    grad, embedded = grad[0].float(), embedded[0].detach().float()  # (T, d)
    return {"tokens": tokens, "scores": (grad * embedded).sum(-1).cpu().numpy(),
            "grad_norm": grad.norm(dim=-1).cpu().numpy(), "target": target, "target_name": name,
            "value": float(value.detach())}


def _body(model: nn.Module):
    from lmforge.models.transformer import Transformer

    body = getattr(model, "body", None)
    if not isinstance(body, Transformer):
        raise EvaluationError(f"model: a {type(model).__name__} is not an lmforge model (no Transformer body)")
    return body


def _encode(model: nn.Module, tokenizer, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """(1, T) ids and token types (or None) of `text` with the tokenizer's template, at most `max_len` tokens
    (and no more than the model's positions allow), and the T token strings."""
    if not isinstance(text, str):
        raise EvaluationError(f"text must be a string, not {type(text).__name__}")
    if not isinstance(max_len, int) or max_len < 1:
        raise EvaluationError(f"max_len={max_len!r} must be a positive integer")
    body = model.body
    limit = min(max_len, body.cfg.max_seq_len - body.virtual_tokens)
    batch = tokenizer([text], padding=False, truncation=True, max_length=limit)
    ids = batch["input_ids"].to(model.device)
    if ids.shape[1] == 0:
        raise EvaluationError(f"text {text[:40]!r} has no tokens")
    if int(ids.max()) >= body.cfg.vocab_size:
        raise EvaluationError(f"the tokenizer gives id {int(ids.max())}, beyond the model's vocab_size "
                              f"{body.cfg.vocab_size}: not this model's tokenizer")
    types = batch.get("token_type_ids")
    if types is not None and body.encoder is not None and body.encoder.token_types is not None:
        types = types.to(model.device)
    else:
        types = None
    tokens = [tokenizer.id_to_token(i) or "" for i in ids[0].tolist()]
    return ids, types, tokens


def _check_target(target: int | None, scores: torch.Tensor, what: str) -> int:
    """`target`, checked against the (N,) scores it indexes; the highest-scoring index when None."""
    if target is None:
        return int(scores.argmax())
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < scores.shape[0]:
        raise EvaluationError(f"target={target!r} must be a {what} in [0, {scores.shape[0]})")
    return int(target)


def _eval_mode(model: nn.Module) -> dict[nn.Module, bool]:
    """Switch dropout off; return each module's mode to restore."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    return modes


def _restore_mode(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training
