"""The generation engine: named steps outside the model that see token ids only.

`prefill` runs a prompt through the model into the KV cache, `decode_step` feeds one token per row,
and sampling (`lmforge.generate.sampling`) picks the next ids. `generate` is the batch-tensor loop over
them; `stream` yields the tokens of one request as they come; `Engine` serves many requests at once with
continuous batching: requests join a running batch between decode steps and leave it when done, each
row of the KV cache at its own position (gpt-fast's `prefill`/`decode_one_token`, vLLM's
`LLMEngine.add_request`/`step`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.generate.sampling import BatchSampler, SamplingParams, sample_next
from lmforge.generate.stops import TextStream
from lmforge.models.model import CausalLM, Seq2SeqLM
from lmforge.models.transformer import Cache

# End-of-turn tokens of common chat formats: generation stops at any of them that the vocabulary holds as a
# special token, besides the eos token (llama.cpp's end-of-generation set does the same).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@torch.inference_mode()
def prefill(model: CausalLM, cache: Cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            row: int | None = None, chunk: int = 512) -> torch.Tensor:
    """Run prompts (B, T) into the cache (or one prompt (1, T) into cache row `row`); last-position logits (B, V).

    Long prompts go through in chunks of `chunk` tokens (a sliding-window cache takes no more at once).
    `attention_mask` (B, T) marks left padding.
    """
    target = cache if row is None else cache.rows(row, row + 1)
    if row is not None:
        target.active[:] = True
    logits = None
    for start in range(0, input_ids.shape[1], chunk):
        piece = slice(start, start + chunk)
        mask = attention_mask[:, piece] if attention_mask is not None else None
        logits = model(input_ids[:, piece], mask, cache=target, last_only=True)
    return logits[:, -1]


@torch.inference_mode()
def decode_step(model: CausalLM, cache: Cache, token_ids: torch.Tensor, forward=None) -> torch.Tensor:
    """Feed one token per cache row (B,) at each row's own position; next-token logits (B, V).

    `forward` is a `compile_decode(model)` step: the cache plans its write on the host first, then the
    compiled forward runs without it.
    """
    if forward is None:
        return model(token_ids[:, None], cache=cache, last_only=True)[:, -1]
    cache.prepared = cache.prepare(1, None, None)
    try:
        return forward(token_ids[:, None], cache)
    finally:
        cache.prepared = None  # never reused by a later forward, even when this one raised


def compile_decode(model: CausalLM):
    """The model's decode forward under `torch.compile` (dynamic shapes: the attended length grows each step).

    On a 2-core CPU it took about a minute to compile SmolLM2-135M and then decoded 1.34x [1.17-1.44] faster
    than eager at batch 1 in fp32, with the same tokens: it removes the per-op dispatch of several hundred
    small ops per step. Pass it to `decode_step`, or use `Engine(compile=True)` / `generate(compile=True)`.
    """
    from lmforge.kernels import compile_options

    def forward(ids: torch.Tensor, cache: Cache) -> torch.Tensor:
        return model(ids, cache=cache, last_only=True)[:, -1]

    return torch.compile(forward, dynamic=True, options=compile_options())  # options: see compile_options


def stop_ids(tokenizer, model: CausalLM | None = None) -> set[int]:
    """The ids that end a generation: eos (tokenizer's and model's) and the chat end-of-turn tokens it knows."""
    ids = {tokenizer.eos_id} if tokenizer is not None else set()
    if model is not None:
        ids.add(model.cfg.eos_token_id)
    if tokenizer is not None:
        special = set(tokenizer.special_ids)
        ids.update(i for i in map(tokenizer.token_to_id, END_OF_TURN_TOKENS) if i in special)
    ids.discard(None)
    return ids


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
    compile: bool = False,
) -> torch.Tensor:
    """New token ids (B, <= max_new_tokens) after each prompt, greedy or sampled.

    Decoder prompts may be left-padded (`attention_mask` 0 on the left); each row counts positions
    over its real tokens only, so a padded row decodes exactly as it would alone. Rows that emit
    `eos_token_id` keep emitting it; the loop ends when all have. `compile` decodes with `compile_decode`
    (decoders; worth it for long generations: compiling takes about a minute).
    """
    b = input_ids.shape[0]
    if isinstance(model, Seq2SeqLM):
        return _generate_seq2seq(model, input_ids, max_new_tokens, attention_mask, temperature, top_k, top_p,
                                 eos_token_id, generator)
    if not use_cache:  # the reference path: the whole sequence every step
        tokens, mask, out = input_ids, attention_mask, []
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
            nxt = sample_next(model(tokens, mask, positions)[:, -1], temperature, top_k, top_p, generator)
            out.append(nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            mask = None if mask is None else torch.cat([mask, mask.new_ones(b, 1)], 1)
            if _all_done(done, nxt, eos_token_id):
                break
        return _finish(out, eos_token_id)
    cache = model.make_cache(b, input_ids.shape[1] + max_new_tokens)
    forward = _compiled(model) if compile else None
    logits = prefill(model, cache, input_ids, attention_mask)
    out, done = [], torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        out.append(nxt)
        if len(out) == max_new_tokens or _all_done(done, nxt, eos_token_id):
            break
        logits = decode_step(model, cache, nxt, forward)
    return _finish(out, eos_token_id)


_COMPILED: dict[int, tuple] = {}


def _compiled(model: CausalLM):
    """One compiled decode forward per model, kept while the model lives (compiling takes a minute)."""
    entry = _COMPILED.get(id(model))
    if entry is None or entry[0]() is not model:
        import weakref

        entry = _COMPILED[id(model)] = (weakref.ref(model), compile_decode(model))
    return entry[1]


def _generate_seq2seq(model, input_ids, max_new_tokens, attention_mask, temperature, top_k, top_p, eos_token_id,
                      generator) -> torch.Tensor:
    """Encoder-decoder: encode once, then decode from `decoder_start_token_id` with a cache."""
    b = input_ids.shape[0]
    encoder_out = model.encode(input_ids, attention_mask)
    start = model.cfg.decoder_start_token_id
    step = torch.full((b, 1), start if start is not None else 0, dtype=torch.long, device=input_ids.device)
    cache = model.make_cache(b, max_new_tokens + 1)
    out, done = [], torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(None, attention_mask, decoder_input_ids=step, encoder_out=encoder_out, cache=cache,
                       last_only=True)
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        out.append(nxt)
        if _all_done(done, nxt, eos_token_id):
            break
        step = nxt[:, None]
    return _finish(out, eos_token_id)


def _all_done(done: torch.Tensor, nxt: torch.Tensor, eos_token_id: int | None) -> bool:
    """Mark the rows (B,) that emitted eos in `done`, in place; True once every row has.

    One device read per step, only when an eos can end the loop early."""
    if eos_token_id is None:
        return False
    done |= nxt == eos_token_id
    return bool(done.all())


def _finish(out: list[torch.Tensor], eos_token_id: int | None) -> torch.Tensor:
    ids = torch.stack(out, dim=1)
    if eos_token_id is not None:  # after a row's first eos, eos
        ended = (ids == eos_token_id).long().cumsum(1) > 0
        ids = ids.masked_fill(ended, eos_token_id)
    return ids


@dataclass
class TokenEvent:
    """One generated token of one request."""

    token_id: int
    text: str  # the text this token makes final ("" while it may still be part of a stop string)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # None, "stop" (eos, a stop id or a stop string) or "length"


@dataclass
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    events: list[TokenEvent]
    finished: bool
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    stops: set[int]
    text: TextStream
    row: int = -1
    generated: int = 0
    last: int = 0
    events: list[TokenEvent] = field(default_factory=list)
    finished: bool = False


class Engine:
    """Continuous batching over one model: requests join and leave a running batch between decode steps.

    Each running request owns one row of a preallocated KV cache, at its own position; a decode step feeds
    the last token of every running row at once, so concurrent requests share the weight reads that bound
    decoding on a CPU. Waiting requests are admitted (prefilled, one at a time) into free rows at the start
    of a step. Not thread-safe: one thread drives it (`lmforge.serve` does, behind an inbox).
    """

    def __init__(self, model: CausalLM, tokenizer, max_batch: int = 8, max_len: int | None = None,
                 compile: bool = False) -> None:
        if not isinstance(model, CausalLM):
            raise TypeError(f"the engine serves decoder models (CausalLM), not {type(model).__name__}")
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        # A prompt-tuned model's soft prompt takes the first positions of every row (lmforge.adapt.prompt).
        limit = model.cfg.max_seq_len - getattr(model.body, "virtual_tokens", 0)
        self.max_len = min(max_len or limit, limit)
        self.max_batch = max_batch
        self.cache = model.make_cache(max_batch, self.max_len)
        self.cache.active[:] = False
        self.sampler = BatchSampler(max_batch, model.cfg.vocab_size, device=model.device)
        self.stop_ids = stop_ids(tokenizer, model)
        self.rows: list[_Request | None] = [None] * max_batch
        self.waiting: deque[_Request] = deque()
        self.forward = _compiled(model) if compile else None  # `compile_decode`: faster steps, a minute to compile
        self.steps = 0  # decode steps run (batching shares them between requests)
        self._ids = itertools.count()

    @property
    def num_running(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def add_request(self, request_id: str | None, prompt_ids: Sequence[int], params: SamplingParams) -> str:
        """Queue a request; raises ValueError for an empty prompt, bad params, or one that cannot fit the context."""
        params.validate()
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty: it needs at least one token")
        vocab = self.model.cfg.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if len(prompt) + params.max_tokens > self.max_len:
            raise ValueError(f"this model's maximum context length is {self.max_len} tokens; the request asks for "
                             f"{len(prompt) + params.max_tokens} ({len(prompt)} in the prompt, {params.max_tokens} "
                             f"in max_tokens)")
        request_id = request_id or f"req-{next(self._ids)}"
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else self.stop_ids)
        self.waiting.append(_Request(request_id, prompt, params, stops, TextStream(self.tokenizer, params.stop, prompt)))
        return request_id

    def abort(self, request_id: str) -> None:
        """Drop a request, waiting or running; its row is free for the next one."""
        self.waiting = deque(r for r in self.waiting if r.id != request_id)
        for req in self.rows:
            if req is not None and req.id == request_id:
                self._free(req)

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Admit waiting requests into free rows (prefill), then one decode step for every running row."""
        touched: list[_Request] = []
        while self.waiting and None in self.rows:
            req = self.waiting.popleft()
            req.row = self.rows.index(None)
            self.rows[req.row] = req
            self.cache.reset_rows([req.row])
            self.sampler.set_row(req.row, req.params, req.prompt)
            ids = torch.tensor([req.prompt], device=self.model.device)
            logits = prefill(self.model, self.cache, ids, row=req.row)
            self._sample(logits, [req])
            touched.append(req)
        running = [r for r in self.rows if r is not None]
        if running:
            n = max(r.row for r in running) + 1  # decode the first n rows; idle ones among them write nowhere
            view = self.cache.rows(0, n)
            view.active[:] = [self.rows[i] is not None for i in range(n)]
            tokens = torch.zeros(n, dtype=torch.long)
            tokens[[r.row for r in running]] = torch.tensor([r.last for r in running])
            logits = decode_step(self.model, view, tokens.to(self.model.device), self.forward)
            self.steps += 1
            self._sample(logits[[r.row for r in running]], running)
            touched += [r for r in running if r not in touched]
        outputs = []
        for req in touched:
            outputs.append(RequestOutput(req.id, req.events, req.finished, len(req.prompt), req.generated))
            req.events = []
        return outputs

    def _sample(self, logits: torch.Tensor, reqs: list[_Request]) -> None:
        out = self.sampler(logits, [r.row for r in reqs])
        ids = out.token_ids.tolist()
        logprobs = out.logprobs.tolist() if out.logprobs is not None else None
        top_ids = out.top_ids.tolist() if out.top_ids is not None else None
        top_lp = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for i, req in enumerate(reqs):
            want = req.params.logprobs
            event = TokenEvent(ids[i], "")
            if want is not None and logprobs is not None:
                event.logprob = logprobs[i]
                if want > 0 and top_ids is not None:
                    event.top_logprobs = list(zip(top_ids[i][:want], top_lp[i][:want]))
            self._advance(req, event)

    def _advance(self, req: _Request, event: TokenEvent) -> None:
        """Account one sampled token: its text, and whether the request ends with it."""
        req.generated += 1
        req.last = event.token_id
        if event.token_id in req.stops:
            event.text, event.finish_reason = req.text.flush(), "stop"
        else:
            event.text, stopped = req.text.push(event.token_id)
            if stopped:
                event.finish_reason = "stop"
            elif req.generated >= req.params.max_tokens or len(req.prompt) + req.generated >= self.max_len:
                event.text += req.text.flush()
                event.finish_reason = "length"
        req.events.append(event)
        if event.finish_reason is not None:
            req.finished = True
            self._free(req)

    def _free(self, req: _Request) -> None:
        if req.row >= 0 and self.rows[req.row] is req:
            self.rows[req.row] = None
            self.cache.active[req.row] = False
            self.sampler.clear_row(req.row)


def stream(model: CausalLM, tokenizer, prompt_ids: Sequence[int], params: SamplingParams,
           compile: bool = False) -> Iterator[TokenEvent]:
    """The tokens of one completion as they are generated; the last event has a `finish_reason`.

    Stopping early (closing the iterator) frees everything. `compile`: see `compile_decode`.
    """
    engine = Engine(model, tokenizer, max_batch=1,
                    max_len=min(len(prompt_ids) + params.max_tokens, model.cfg.max_seq_len), compile=compile)
    engine.add_request("stream", prompt_ids, params)
    while engine.has_unfinished():
        for out in engine.step():
            yield from out.events
