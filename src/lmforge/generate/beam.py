"""Beam search for `CausalLM` and `Seq2SeqLM`, equal to transformers' `generate(num_beams=N, do_sample=False)`.

The rules are transformers' (`GenerationMixin._beam_search`), step by step:

- Each step scores every continuation of every running beam (the sum of token log-probs) and keeps
  the best 2 * num_beams candidates of each prompt.
- A candidate ending in `eos_token_id` (or reaching `max_new_tokens`) is a finished hypothesis, scored
  `sum_logprobs / length ** length_penalty` (length = new tokens, eos included), but only if it is
  among the best num_beams candidates; the best num_beams finished hypotheses are kept.
- The best num_beams candidates that did not end keep running (the KV cache follows them).
- A prompt is done when it holds num_beams finished hypotheses and the best running beam cannot beat
  the worst of them: with `early_stopping=False` judged at the current length, with `"never"` at the
  longest possible length when length_penalty > 0; `early_stopping=True` stops adding hypotheses
  once a prompt holds num_beams. The search ends when every prompt is done (with True: when every
  prompt holds num_beams) or at `max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.models.model import CausalLM, Seq2SeqLM


@dataclass
class BeamOutput:
    """The best hypotheses of each prompt, best first."""

    sequences: torch.Tensor
    """(B * num_return_sequences, <= max_new_tokens) new ids (prompt and decoder start excluded); rows of one
    prompt are consecutive; a hypothesis that ended early is padded with `pad_token_id` after its eos."""
    scores: torch.Tensor
    """(B * num_return_sequences,) float32 `sum of log-probs / length ** length_penalty` (transformers'
    `sequences_scores`)."""


@torch.inference_mode()
def beam_search(
    model: CausalLM | Seq2SeqLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 20,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    num_return_sequences: int = 1,
) -> BeamOutput:
    """Beam search over `input_ids` (B, T) (decoder prompts may be left-padded, marked by `attention_mask`).

    `eos_token_id` None: hypotheses end only at `max_new_tokens`. `pad_token_id` (default: the eos id,
    else 0) fills the ends of hypotheses shorter than the longest one returned.
    """
    problems = []
    if num_beams < 1:
        problems.append(f"num_beams={num_beams} must be >= 1")
    if not 1 <= num_return_sequences <= num_beams:
        problems.append(f"num_return_sequences={num_return_sequences} must be in [1, num_beams={num_beams}]")
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens={max_new_tokens} must be >= 1")
    if early_stopping not in (True, False, "never"):
        problems.append(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    if problems:
        raise ValueError("; ".join(problems))
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0

    device = input_ids.device
    b, nb, n_cand = input_ids.shape[0], num_beams, 2 * num_beams
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    flat = b * nb

    seq2seq = isinstance(model, Seq2SeqLM)
    if seq2seq:
        encoder_out = model.encode(input_ids, attention_mask).repeat_interleave(nb, dim=0)
        encoder_mask = attention_mask.repeat_interleave(nb, dim=0)
        start = model.cfg.decoder_start_token_id
        step_input = torch.full((flat, 1), start if start is not None else 0, dtype=torch.long, device=device)
        cache = model.make_cache(flat, 1 + max_new_tokens)
    else:
        mask = attention_mask.repeat_interleave(nb, dim=0)  # (B * nb, T): the beams of a prompt share it
        step_input = input_ids.repeat_interleave(nb, dim=0)
        cache = model.make_cache(flat, input_ids.shape[1] + max_new_tokens)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        """Last-position logits (B * nb, 1, V) of `tokens` appended to the cached ones."""
        if seq2seq:
            return model(None, encoder_mask, decoder_input_ids=tokens, encoder_out=encoder_out, cache=cache,
                         last_only=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1]:]  # real tokens only: left padding
        return model(tokens, mask, positions, cache=cache, last_only=True)

    neg_inf = float("-inf")
    running_scores = torch.zeros(b, nb, device=device)  # sum of log-probs of each running beam
    running_scores[:, 1:] = neg_inf  # all beams start equal: let only the first one expand at step 1
    running = torch.empty(b, nb, 0, dtype=torch.long, device=device)  # (B, nb, step) new ids
    finished = torch.full((b, nb, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished_scores = torch.full((b, nb), neg_inf, device=device)  # -inf: slot still empty
    finished_len = torch.zeros(b, nb, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)  # no running beam can improve the finished ones
    top_beams = torch.arange(n_cand, device=device) < nb  # only the best nb candidates may finish
    row_offset = torch.arange(b, device=device)[:, None] * nb

    for step in range(max_new_tokens):
        logits = forward(step_input)[:, -1].float()  # (B * nb, V)
        vocab = logits.shape[-1]
        scores = logits.log_softmax(-1).view(b, nb, vocab) + running_scores[..., None]
        cand_scores, cand_index = scores.view(b, nb * vocab).topk(n_cand, dim=-1)  # (B, 2nb), best first
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        history = running.gather(1, cand_beam[..., None].expand(-1, -1, step))
        candidates = torch.cat([history, cand_token[..., None]], dim=-1)  # (B, 2nb, step + 1)
        length = step + 1
        last = length == max_new_tokens
        ends = torch.full_like(cand_token, last, dtype=torch.bool)
        if eos_token_id is not None:
            ends |= cand_token == eos_token_id

        # Finished hypotheses: merge the candidates that end with those kept so far, keep the best nb.
        full = torch.isfinite(finished_scores).all(-1)
        may_finish = ends & top_beams & ~done[:, None]
        if early_stopping is True:
            may_finish &= ~full[:, None]
        new_scores = torch.where(may_finish, cand_scores / length**length_penalty, neg_inf)
        keep = torch.cat([finished_scores, new_scores], dim=1).topk(nb, dim=-1).indices  # (B, nb)
        padded = torch.nn.functional.pad(candidates, (0, max_new_tokens - length), value=pad_token_id)
        finished = torch.cat([finished, padded], dim=1).gather(1, keep[..., None].expand(-1, -1, max_new_tokens))
        finished_scores = torch.cat([finished_scores, new_scores], dim=1).gather(1, keep)
        finished_len = torch.cat([finished_len, torch.full_like(cand_token, length)], dim=1).gather(1, keep)
        if last:
            break

        # Running beams: the best nb candidates that did not end.
        open_scores = cand_scores.masked_fill(ends, neg_inf)
        chosen = open_scores.topk(nb, dim=-1).indices
        running_scores = open_scores.gather(1, chosen)
        running = candidates.gather(1, chosen[..., None].expand(-1, -1, length))
        origin = cand_beam.gather(1, chosen) + row_offset  # (B, nb) the flat beam each new beam extends

        # Can a running beam still beat the worst finished hypothesis? (transformers' heuristic)
        best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
        best_possible = running_scores[:, 0] / best_length**length_penalty
        done |= ~(best_possible > finished_scores.min(-1).values)
        if bool(done.all()) or (early_stopping is True and bool(torch.isfinite(finished_scores).all())):
            break
        cache.reorder(origin.flatten())
        step_input = running[:, :, -1].reshape(flat, 1)
        if not seq2seq:
            mask = torch.cat([mask, mask.new_ones(flat, 1)], dim=1)

    n = num_return_sequences
    lengths = finished_len[:, :n].reshape(-1)
    sequences = finished[:, :n].reshape(b * n, max_new_tokens)[:, : int(lengths.max())]
    return BeamOutput(sequences, finished_scores[:, :n].reshape(-1))
