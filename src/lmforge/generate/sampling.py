"""Choosing the next token: penalties, temperature, top-k / top-p / min-p, seeded sampling, logprobs.

Everything is a small function of tensors (`apply_penalties`, `filter_logits`, `sampling_probs`,
`sample_next`) with the semantics of the references, applied in the order vLLM and Hugging Face apply
them:

1. penalties on the raw logits: the repetition penalty (CTRL, Keskar et al. 2019; transformers'
   `RepetitionPenaltyLogitsProcessor`) over every id seen in the prompt or the output, then the
   presence and frequency penalties (OpenAI's formula, as vLLM) over the output's counts only;
2. temperature, 3. top-k, 4. top-p (Holtzman et al. 2020), 5. min-p (Nguyen et al. 2024), each as
   transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`
   (every filter keeps at least one id).

Greedy rows (temperature 0) take the argmax of the penalised logits. `BatchSampler` holds the state
of a running batch (each row's own parameters as per-row tensors, its token counts and generator), so
one step costs a few tensor ops for the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

MAX_LOGPROBS = 20  # OpenAI's limit on `top_logprobs`
MAX_STOP_STRINGS = 16  # OpenAI allows 4; more cost only a few string compares per token
MAX_STOP_LENGTH = 256  # characters; bounds the text held back while a stop string may be starting
MAX_PENALTY = 2.0  # OpenAI's range for presence and frequency penalties: [-2, 2]
REPETITION_RANGE = (0.01, 100.0)  # beyond it logits overflow (1e300 / 5e-324 = inf) and sampling breaks


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens (OpenAI / vLLM names; every default switches a feature off)."""

    max_tokens: int = 16
    """New tokens at most (>= 1)."""
    temperature: float = 1.0
    """Logits are divided by it; 0 is greedy (argmax)."""
    top_k: int = 0
    """Keep the k most likely ids (and ids tied with the k-th); 0 is off."""
    top_p: float = 1.0
    """Keep the smallest set of most likely ids whose mass reaches top_p, in (0, 1]; 1 is off."""
    min_p: float = 0.0
    """Keep ids with p >= min_p * p_max, in [0, 1]; 0 is off."""
    repetition_penalty: float = 1.0
    """For ids seen in the prompt or the output: logit > 0 -> logit / r, else logit * r (> 0; 1 is off)."""
    presence_penalty: float = 0.0
    """logit -= presence_penalty for ids generated at least once, in [-2, 2]."""
    frequency_penalty: float = 0.0
    """logit -= frequency_penalty * (times generated), in [-2, 2]."""
    stop: tuple[str, ...] = ()
    """Stop strings, matched across token boundaries and left out of the text."""
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end the sequence (besides the tokenizer's eos)."""
    ignore_eos: bool = False
    """Keep generating after eos (stop_token_ids still stop)."""
    seed: int | None = None
    """Same seed, same tokens: the request samples from its own `torch.Generator`."""
    logprobs: int | None = None
    """None: no logprobs; 0: the chosen token's; k > 0: plus the k most likely alternatives (k <= 20)."""

    def validate(self) -> None:
        """Raise one ValueError naming every bad field, its value and its allowed range."""
        problems = []

        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r} (allowed: {allowed})")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_real(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        check("max_tokens", is_int(self.max_tokens) and self.max_tokens >= 1, "an integer >= 1")
        check("temperature", is_real(self.temperature) and self.temperature >= 0, ">= 0, 0 is greedy")
        check("top_k", is_int(self.top_k) and self.top_k >= 0, "an integer >= 0, 0 is off")
        check("top_p", is_real(self.top_p) and 0 < self.top_p <= 1, "0 < top_p <= 1, 1 is off")
        check("min_p", is_real(self.min_p) and 0 <= self.min_p <= 1, "0 <= min_p <= 1, 0 is off")
        low, high = REPETITION_RANGE
        check("repetition_penalty", is_real(self.repetition_penalty) and low <= self.repetition_penalty <= high,
              f"{low:g} to {high:g}, 1 is off")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            check(name, is_real(value) and -MAX_PENALTY <= value <= MAX_PENALTY, f"-{MAX_PENALTY:g} to {MAX_PENALTY:g}")
        stop_ok = isinstance(self.stop, (tuple, list)) and len(self.stop) <= MAX_STOP_STRINGS and all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in self.stop)
        check("stop", stop_ok, f"at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_LENGTH} characters")
        ids_ok = isinstance(self.stop_token_ids, (tuple, list)) and all(is_int(i) and i >= 0 for i in self.stop_token_ids)
        check("stop_token_ids", ids_ok, "integers >= 0")
        check("ignore_eos", isinstance(self.ignore_eos, bool), "true or false")
        check("seed", self.seed is None or (is_int(self.seed) and 0 <= self.seed < 2**63), "None or 0 <= seed < 2**63")
        check("logprobs", self.logprobs is None or (is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
              f"None or an integer from 0 to {MAX_LOGPROBS}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))


@dataclass
class SampleOutput:
    """The tokens chosen for N rows, with their log-probabilities under the raw model logits."""

    token_ids: torch.Tensor
    """(N,) long."""
    logprobs: torch.Tensor | None
    """(N,) float32 log-softmax of the raw logits at the chosen id (vLLM's default); None if no row asked."""
    top_ids: torch.Tensor | None
    """(N, k) the k most likely ids under the raw logits, k = the largest `logprobs` of the rows; None if k = 0."""
    top_logprobs: torch.Tensor | None
    """(N, k) their log-probabilities."""


def _column(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A per-row tensor as an (N, 1) column on `like`'s device (float32); a Python number stays one."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float32).reshape(-1, 1)
    return value


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor,
                    repetition_penalty: float | torch.Tensor = 1.0, presence_penalty: float | torch.Tensor = 0.0,
                    frequency_penalty: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Penalised logits (N, V) float32: the repetition penalty over `seen`, then presence and frequency.

    `seen` (N, V) bool marks ids in the prompt or the output, `counts` (N, V) how often each id was
    generated. Each penalty is a number or a per-row tensor (N,). The repetition penalty is CTRL's as
    transformers applies it (a logit < 0 is multiplied by r, else divided by r); presence and frequency
    are OpenAI's: `logit -= frequency * count + presence * (count > 0)`.
    """
    logits = logits.float()
    if isinstance(repetition_penalty, torch.Tensor) or repetition_penalty != 1:  # a plain 1 is off: skip the pass
        r = _column(repetition_penalty, logits)
        logits = torch.where(seen, torch.where(logits < 0, logits * r, logits / r), logits)
    if isinstance(frequency_penalty, torch.Tensor) or frequency_penalty:
        logits = logits - _column(frequency_penalty, logits) * counts.to(logits.dtype)
    if isinstance(presence_penalty, torch.Tensor) or presence_penalty:
        logits = logits - _column(presence_penalty, logits) * (counts > 0)
    return logits


def filter_logits(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, top_k: int | torch.Tensor = 0,
                  top_p: float | torch.Tensor = 1.0, min_p: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Logits (N, V) float32 divided by the temperature, with the ids that top-k, top-p, min-p remove at -inf.

    The filters run in that order, each exactly as its transformers warper: top-k keeps ids >= the
    k-th largest logit (ties with it included; 0 is off); top-p sorts ascending and removes ids whose
    cumulative mass is <= 1 - top_p, keeping the most likely; min-p removes ids with p < min_p * p_max of
    the distribution left so far. Each parameter is a number or a per-row tensor (N,); pass `top_p` as
    float64 for thresholds bit-equal to transformers' (it computes 1 - top_p in double). Temperatures
    must be > 0: greedy decoding is the caller's argmax.
    """
    x = logits.float() / _column(temperature, logits)
    vocab = x.shape[-1]
    neg_inf = float("-inf")
    if isinstance(top_k, torch.Tensor):
        k = top_k.to(device=x.device, dtype=torch.long).reshape(-1)
        if bool((k > 0).any()):
            k_row = k.clamp(min=1, max=vocab)
            values = torch.topk(x, int(k_row.max()), dim=-1).values  # (N, k_max), sorted descending
            kth = values.gather(1, k_row[:, None] - 1)
            x = x.masked_fill((x < kth) & (k[:, None] > 0), neg_inf)
    elif top_k:
        kth = torch.topk(x, min(top_k, vocab), dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, neg_inf)
    p_on = bool((top_p < 1).any()) if isinstance(top_p, torch.Tensor) else top_p < 1
    if p_on:
        if isinstance(top_p, torch.Tensor):  # 1 - top_p in double, then float32: as a Python scalar would be
            rest = (1.0 - top_p.to(device=x.device, dtype=torch.float64)).float().reshape(-1, 1)
        else:
            rest = 1.0 - top_p
        x = x.masked_fill(_top_p_drop(x, rest), neg_inf)
    m_on = bool((min_p > 0).any()) if isinstance(min_p, torch.Tensor) else min_p > 0
    if m_on:
        probs = x.softmax(-1)
        drop = probs < _column(min_p, x) * probs.amax(-1, keepdim=True)
        drop.scatter_(-1, probs.argmax(-1, keepdim=True), False)
        x = x.masked_fill(drop, neg_inf)
    return x


# Top-p first looks among this many most likely ids: when they hold the mass top_p asks for (nearly always,
# for a language model), no full sort of the vocabulary is needed (a sort of 8 x 49k logits is ~40 ms).
TOP_P_CANDIDATES = 1024


def _top_p_drop(x: torch.Tensor, rest: float | torch.Tensor) -> torch.Tensor:
    """The ids (N, V) top-p removes: those whose ascending cumulative mass is <= rest = 1 - top_p (never the argmax)."""
    vocab = x.shape[-1]
    if vocab > TOP_P_CANDIDATES:
        values, order = torch.topk(x, TOP_P_CANDIDATES, dim=-1)  # descending
        probs = (values - x.logsumexp(-1, keepdim=True)).exp()
        tail = 1.0 - probs.sum(-1, keepdim=True)  # mass of every id outside the candidates
        if bool((tail <= rest).all()):  # then all of those go, and the cut lies among the candidates
            mass = tail + probs.flip(-1).cumsum(-1).flip(-1)  # ascending cumulative mass at each candidate
            keep = mass > rest
            keep[..., 0] = True
            return torch.ones_like(x, dtype=torch.bool).scatter(-1, order, ~keep)
    sorted_logits, order = torch.sort(x, descending=False, dim=-1)
    mass = sorted_logits.softmax(-1).cumsum(-1)  # (N, V): mass of the least likely ids up to each
    drop = mass <= rest
    drop[..., -1:] = False  # keep at least the most likely id
    return drop.scatter(-1, order, drop)


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
    return filter_logits(logits, temperature, top_k or 0, 1.0 if top_p is None else top_p).softmax(-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax at temperature 0, else sampled."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class BatchSampler:
    """Sampling state of up to `max_batch` rows: each row has its own params, token counts and generator.

    Parameters live in per-row tensors, so a step over the whole batch is a few tensor ops; only the
    draw itself loops over the seeded rows, each with its own `torch.Generator`, which makes a seeded
    row's tokens independent of which other rows share the batch. Unseeded rows draw together from
    torch's global generator.
    """

    def __init__(self, max_batch: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.max_batch, self.vocab_size = max_batch, vocab_size
        self.device = torch.device(device)
        self.params: list[SamplingParams | None] = [None] * max_batch
        self.generators: list[torch.Generator | None] = [None] * max_batch

        def per_row(value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((max_batch,), value, dtype=dtype, device=self.device)

        self.temperature = per_row(1.0, torch.float32)
        self.top_k = per_row(0, torch.long)
        self.top_p = per_row(1.0, torch.float64)  # float64: see `filter_logits`
        self.min_p = per_row(0.0, torch.float32)
        self.repetition_penalty = per_row(1.0, torch.float32)
        self.presence_penalty = per_row(0.0, torch.float32)
        self.frequency_penalty = per_row(0.0, torch.float32)
        self.counts = torch.zeros(max_batch, vocab_size, dtype=torch.int32, device=self.device)  # output counts
        self.seen = torch.zeros(max_batch, vocab_size, dtype=torch.bool, device=self.device)  # prompt or output

    def set_row(self, row: int, params: SamplingParams, prompt_ids: Sequence[int]) -> None:
        """Start a request in `row`: its parameters, its prompt (for the repetition penalty), a fresh generator."""
        params.validate()
        prompt = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=self.device)
        if prompt.numel() and not bool(((prompt >= 0) & (prompt < self.vocab_size)).all()):
            raise ValueError(f"prompt ids must be in [0, {self.vocab_size})")
        self.clear_row(row)
        self.params[row] = params
        self.temperature[row] = params.temperature if params.temperature > 0 else 1.0  # greedy rows use argmax
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.repetition_penalty[row] = params.repetition_penalty
        self.presence_penalty[row] = params.presence_penalty
        self.frequency_penalty[row] = params.frequency_penalty
        self.seen[row, prompt] = True
        if params.seed is not None:
            self.generators[row] = torch.Generator(device=self.device).manual_seed(params.seed)

    def clear_row(self, row: int) -> None:
        """Forget the request in `row`."""
        self.params[row] = None
        self.generators[row] = None
        for tensor, neutral in ((self.temperature, 1.0), (self.top_k, 0), (self.top_p, 1.0), (self.min_p, 0.0),
                                (self.repetition_penalty, 1.0), (self.presence_penalty, 0.0),
                                (self.frequency_penalty, 0.0)):
            tensor[row] = neutral
        self.counts[row] = 0
        self.seen[row] = False

    def __call__(self, logits: torch.Tensor, rows: Sequence[int]) -> SampleOutput:
        """Choose a token for each of `rows` from its logits (len(rows), V); count it in the row's state."""
        rows = list(rows)
        params = [self.params[r] for r in rows]
        if any(p is None for p in params):
            raise ValueError(f"rows {[r for r, p in zip(rows, params) if p is None]} have no request (set_row first)")
        if logits.shape != (len(rows), self.vocab_size):
            raise ValueError(f"logits of shape {tuple(logits.shape)}, expected ({len(rows)}, {self.vocab_size})")
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        raw = logits.to(device=self.device, dtype=torch.float32)
        x = raw
        repetition, presence, frequency = (any(getattr(p, name) != off for p in params) for name, off in (
            ("repetition_penalty", 1), ("presence_penalty", 0), ("frequency_penalty", 0)))
        if repetition or presence or frequency:  # each penalty only where some row uses it
            x = apply_penalties(x, self.seen[index], self.counts[index],
                                self.repetition_penalty[index] if repetition else 1.0,
                                self.presence_penalty[index] if presence else 0.0,
                                self.frequency_penalty[index] if frequency else 0.0)
        token_ids = x.argmax(-1)  # greedy rows keep this
        sampled = [i for i, p in enumerate(params) if p.temperature > 0]
        if sampled:
            at = index[sampled]
            probs = filter_logits(x[sampled], self.temperature[at], self.top_k[at], self.top_p[at],
                                  self.min_p[at]).softmax(-1)
            chosen = torch.empty(len(sampled), dtype=torch.long, device=self.device)
            shared = [j for j, i in enumerate(sampled) if self.generators[rows[i]] is None]
            if shared:
                chosen[shared] = torch.multinomial(probs[shared], 1).squeeze(-1)
            for j, i in enumerate(sampled):
                generator = self.generators[rows[i]]
                if generator is not None:
                    chosen[j] = torch.multinomial(probs[j:j + 1], 1, generator=generator)[0, 0]
            token_ids[sampled] = chosen
        self.counts[index, token_ids] += 1
        self.seen[index, token_ids] = True

        logprobs = top_ids = top_logprobs = None
        if any(p.logprobs is not None for p in params):
            log_softmax = raw.log_softmax(-1)
            logprobs = log_softmax.gather(1, token_ids[:, None]).squeeze(1)
            k = max(p.logprobs or 0 for p in params)
            if k:
                top_logprobs, top_ids = torch.topk(log_softmax, min(k, self.vocab_size), dim=-1)
        return SampleOutput(token_ids, logprobs, top_ids, top_logprobs)
