"""The OpenAI-compatible HTTP API over a continuous-batching `Engine`: `create_app(engine, tokenizer, name)`.

One HTTP request becomes one engine request per choice (`n`, times the prompts of a batched
completion); the engine thread (`runner.py`) batches them with everyone else's. A handler checks
everything it can before queueing (model name, lengths, sampling values), so the engine sees only
requests it accepts, then waits for its outputs, with a deadline, while watching for the client
leaving: a timeout or a disconnect aborts the engine requests, freeing their rows at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import decoders

from lmforge.generate.chat import ChatError, apply_chat_template
from lmforge.generate.console import chat_params
from lmforge.generate.sampling import SamplingParams
from lmforge.serve import schemas as s
from lmforge.serve.errors import APIError, internal_error, sse_error, validation_error
from lmforge.serve.metrics import CONTENT_TYPE, Metrics
from lmforge.serve.runner import EngineRejected, EngineRunner, QueueFull

log = logging.getLogger("lmforge.serve")

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily (as vLLM): dividing by ~0 overflows
MAX_BODY_BYTES = 32 * 2**20
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": s.ErrorResponse} for status in (400, 401, 404, 429, 500, 503, 504)
}


@dataclass
class ServerState:
    """What the handlers share: the engine's runner, the tokenizer, limits and metrics."""

    runner: EngineRunner
    tokenizer: Any
    model_name: str
    max_len: int
    vocab_size: int  # token ids below it are valid in prompts (the model's and the tokenizer's)
    metrics: Metrics
    api_key: str | None = None
    request_timeout: float = 600.0
    drain_timeout: float = 60.0
    created: int = field(default_factory=s.now)
    shutting_down: bool = False
    _tokens: dict[int, tuple[str, list[int]]] = field(default_factory=dict)

    def token(self, token_id: int) -> tuple[str, list[int]]:
        """One token's text and UTF-8 bytes (cached), as logprobs report it."""
        entry = self._tokens.get(token_id)
        if entry is None:
            raw = token_bytes(self.tokenizer, token_id)
            entry = self._tokens[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return entry

    def token_text(self, token_id: int) -> str:
        return self.token(token_id)[0]


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, inverted (byte-level BPE stores tokens in it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes a token stands for; a piece of a multi-byte character is its own bytes, not U+FFFD."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return b""
    if token_id in tokenizer.special_ids:
        return piece.encode()
    alphabet = _byte_level_alphabet()
    if isinstance(tokenizer.backend.decoder, decoders.ByteLevel) and all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
        with contextlib.suppress(ValueError):
            return bytes([int(piece[3:5], 16)])
    return tokenizer.decode([token_id], skip_special_tokens=False).encode()


def create_app(engine: Any, tokenizer: Any, model_name: str, *, max_queue: int = 64, api_key: str | None = None,
               request_timeout: float = 600.0, drain_timeout: float = 60.0) -> FastAPI:
    """The FastAPI app serving `engine` (an `lmforge.generate.Engine`) under the name `model_name`.

    The engine thread starts and stops with the app's lifespan; at shutdown, requests still in the
    engine get `drain_timeout` seconds to finish. `max_queue` bounds the engine requests waiting for
    a row (a full queue answers 429); `request_timeout` (seconds) bounds each request (504).
    """
    metrics = Metrics()
    runner = EngineRunner(engine, max_queue=max_queue, on_step=metrics.count_step)
    metrics.gauges = lambda: {"waiting": runner.num_waiting, "running": runner.num_running}
    state = ServerState(runner=runner, tokenizer=tokenizer, model_name=model_name, max_len=engine.max_len,
                        vocab_size=min(engine.model.cfg.vocab_size, tokenizer.vocab_size), metrics=metrics, api_key=api_key, request_timeout=request_timeout,
                        drain_timeout=drain_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start(asyncio.get_running_loop())
        try:
            yield
        finally:  # uvicorn has stopped accepting and waited for open requests; finish what is left
            state.shutting_down = True
            await asyncio.to_thread(runner.stop, state.drain_timeout)

    app = FastAPI(title="lmforge", summary="OpenAI-compatible completions from an lmforge model",
                  lifespan=lifespan)
    app.state.serve = state
    app.add_middleware(ServeMiddleware, state=state)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.post("/v1/completions", response_model=s.Completion, responses=ERROR_RESPONSES)
    async def completions(body: s.CompletionRequest, request: Request) -> Response:
        """Complete a prompt (or a batch of prompts)."""
        return await complete(state, body, request)

    @app.post("/v1/chat/completions", response_model=s.ChatCompletion, responses=ERROR_RESPONSES)
    async def chat_completions(body: s.ChatCompletionRequest, request: Request) -> Response:
        """Answer a conversation, rendered with the tokenizer's chat template."""
        return await chat(state, body, request)

    @app.get("/v1/models", response_model=s.ModelList, responses=ERROR_RESPONSES)
    async def models() -> Response:
        """The one model this server serves."""
        card = s.ModelCard(id=state.model_name, created=state.created, max_model_len=state.max_len)
        return JSONResponse(s.ModelList(data=[card]).model_dump())

    @app.get("/health", response_model=s.Health, responses={503: {"model": s.Health}})
    async def health() -> Response:
        """200 while serving; 503 once shutting down or if the engine thread died."""
        ok = runner.alive and not state.shutting_down
        body = s.Health(status="ok" if ok else "shutting down", running=runner.num_running,
                        waiting=runner.num_waiting)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app


# ------------------------------------------------------------------------------------------ errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Unknown path {request.url.path!r}; the API serves {', '.join(ENDPOINTS)}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"Method {request.method} is not allowed on {request.url.path!r} (allowed: {allowed})"
    else:
        message = str(exc.detail)
    return APIError(exc.status_code, message, headers=exc.headers).response()


class ServeMiddleware:
    """Outermost layer: the API key on /v1, a body-size limit, per-endpoint status counts, and the catch-all.

    An unexpected exception is logged with its traceback and answered with a bare 500 (or, when
    a stream has already started, the stream just ends): a client never sees the details.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status: int | None = None

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal.response()(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        except ClientDisconnect:
            status = status or 499
        except Exception:
            log.exception("error while serving %s %s", scope.get("method"), path)
            if status is None:
                await internal_error().response()(scope, receive, send_and_record)
        finally:
            self.state.metrics.count_request(endpoint, status or 499)

    def _refusal(self, scope: Scope, path: str) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return APIError(413, f"The request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
        key = self.state.api_key
        if key is not None and path.startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())):
                return APIError(401, "Incorrect API key provided: send it as 'Authorization: Bearer <key>'",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None


# ------------------------------------------------------------------------------ request checking


def _check_common(state: ServerState, body: s.SamplingFields) -> None:
    if state.shutting_down:
        raise APIError(503, "The server is shutting down", code="shutting_down")
    if body.model != state.model_name:
        raise APIError(404, f"The model `{body.model}` does not exist (this server serves "
                            f"`{state.model_name}`)", param="model", code="model_not_found")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if any(stop == "" for stop in stops):
        raise APIError(400, "Invalid value for 'stop': stop strings must not be empty", param="stop",
                       code="invalid_value")
    vocab = state.vocab_size
    if any(token >= vocab for token in body.stop_token_ids or ()):
        raise APIError(400, f"Invalid value for 'stop_token_ids': ids must be below the vocabulary size {vocab}",
                       param="stop_token_ids", code="invalid_value")


def _sampling_params(body: s.SamplingFields, max_tokens: int, logprobs: int | None, n: int,
                     chat_tokenizer: Any = None) -> list[SamplingParams]:
    """The engine's `SamplingParams` for each of `n` choices (seeded ones get seed, seed + 1, ...), checked.

    For a chat, pass the tokenizer: the answer also ends at the template's end-of-turn marker, as in
    `lmforge chat`.
    """
    temperature = 1.0 if body.temperature is None else body.temperature
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    common = dict(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_k=0 if body.top_k in (None, -1) else body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=tuple(stops),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
    )
    # Seeds as OpenAI takes them (any int64), folded into the engine's range [0, 2**63).
    params = [SamplingParams(**common, seed=None if body.seed is None else (body.seed + i) % 2**63)
              for i in range(n)]
    if chat_tokenizer is not None:
        params = [chat_params(p, chat_tokenizer) for p in params]
    try:
        params[0].validate()
    except ValueError as err:
        message = str(err)
        param = next((name for name in common if name in message), None)
        raise APIError(400, message, param=param, code="invalid_value") from None
    return params


def _check_length(state: ServerState, prompt_len: int, max_tokens: int | None, what: str) -> None:
    limit = state.max_len
    if max_tokens is None and prompt_len >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your {what} "
                            f"resulted in {prompt_len} tokens. Please reduce the length of the {what}.",
                       param=what, code="context_length_exceeded")
    if max_tokens is not None and prompt_len + max_tokens > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the "
                            f"completion). Please reduce the length of the {what} or completion.",
                       param=what, code="context_length_exceeded")


def _check_capacity(state: ServerState, count: int) -> None:
    limit = state.runner.max_queue
    if count > limit:
        raise APIError(400, f"This request needs {count} generations (n times the prompts); the server queues "
                            f"at most {limit} at once", param="n", code="invalid_value")


# --------------------------------------------------------------------------------------- the job


@dataclass
class Choice:
    """The outputs of one engine request, gathered."""

    index: int
    prompt_tokens: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


class Job:
    """The engine requests of one HTTP request, their outputs arriving on an asyncio queue."""

    def __init__(self, state: ServerState, endpoint: str, prompts: list[list[int]], params: list[Any],
                 n: int) -> None:
        self.state = state
        self.id = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = s.now()
        self.start = time.monotonic()
        self.deadline = self.start + state.request_timeout
        self.requests = [(f"{self.id}-{i}", prompts[i // n], params[i % n]) for i in range(len(prompts) * n)]
        self.choices = {rid: Choice(i, len(prompt)) for i, (rid, prompt, _) in enumerate(self.requests)}
        self.prompt_tokens = sum(len(prompt) for prompt in prompts)
        self.unfinished = set(self.choices)
        self.first_token_seen = False
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def submit(self) -> None:
        """Queue the engine requests, or refuse with 429 when the queue is full."""
        try:
            self.state.runner.submit(self.requests, lambda rid, item: self.queue.put_nowait((rid, item)))
        except QueueFull as err:
            raise APIError(429, f"The server is busy: {err}. Please retry shortly.", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None

    def abort(self) -> None:
        """Abort the engine requests that have not finished (idempotent)."""
        if self.unfinished:
            self.state.runner.abort(sorted(self.unfinished))
            self.unfinished.clear()

    async def outputs(self) -> AsyncIterator[tuple[Choice, Any]]:
        """Each engine output with its choice (updated), until every choice finished; TimeoutError at the deadline."""
        while self.unfinished:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            rid, item = await asyncio.wait_for(self.queue.get(), remaining)
            if rid not in self.unfinished:
                continue
            if isinstance(item, EngineRejected):
                raise APIError(400, str(item), code="invalid_value")
            if isinstance(item, BaseException):
                raise RuntimeError(f"engine request {rid} failed: {item}")
            choice = self.choices[rid]
            for event in item.events:
                choice.text += event.text
                choice.token_ids.append(event.token_id)
                choice.logprobs.append(event.logprob)
                choice.top_logprobs.append(event.top_logprobs or [])
                if event.finish_reason is not None:
                    choice.finish_reason = event.finish_reason
            choice.completion_tokens = item.completion_tokens
            if item.events and not self.first_token_seen:
                self.first_token_seen = True
                self.state.metrics.observe_first_token(time.monotonic() - self.start)
            if item.finished:
                self.unfinished.discard(rid)
                choice.finish_reason = choice.finish_reason or "stop"
                if not self.unfinished:
                    self.state.metrics.observe_latency(time.monotonic() - self.start)
            yield choice, item

    def usage(self) -> s.Usage:
        completion = sum(c.completion_tokens for c in self.choices.values())
        return s.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                       total_tokens=self.prompt_tokens + completion)

    def count_tokens(self) -> None:
        self.state.metrics.count_tokens(self.prompt_tokens, sum(c.completion_tokens for c in self.choices.values()))


def timeout_error(state: ServerState) -> APIError:
    return APIError(504, f"The request did not finish within {state.request_timeout:g} s and was aborted",
                    code="timeout")


async def run_to_end(job: Job, request: Request) -> APIError | None:
    """Drain a job's outputs while watching the client; None when done, else the error to answer with."""

    async def drain() -> None:
        async for _ in job.outputs():
            pass

    collect = asyncio.ensure_future(drain())
    watch = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # the client left: nobody will read the answer
            return APIError(499, "The client closed the connection", code="client_closed_request")
        try:
            collect.result()
        except TimeoutError:
            return timeout_error(job.state)
        return None
    finally:
        for task in (collect, watch):
            task.cancel()
        job.abort()
        job.count_tokens()


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events that call `on_close` however they end (finished, client gone, error)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


async def _stream(job: Job, chunks: Callable[[], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The stream body: the endpoint's chunks, an error event instead of a traceback, then [DONE]."""
    try:
        async for chunk in chunks():
            yield chunk
    except TimeoutError:
        yield sse_error(timeout_error(job.state))
    except APIError as err:
        yield sse_error(err)
    except Exception:
        log.exception("error while streaming %s", job.id)
        yield sse_error(internal_error())
    finally:
        job.abort()
        job.count_tokens()
    yield DONE


def _stream_response(job: Job, chunks: Callable[[], AsyncIterator[bytes]]) -> Response:
    return EventStream(_stream(job, chunks), on_close=job.abort)


async def _respond(job: Job, request: Request, build: Callable[[], dict]) -> Response:
    error = await run_to_end(job, request)
    if error is not None:
        return error.response()
    return JSONResponse(build())


# --------------------------------------------------------------------------------- completions


async def complete(state: ServerState, body: s.CompletionRequest, request: Request) -> Response:
    """`POST /v1/completions`."""
    _check_common(state, body)
    for name, ok in (("suffix", not body.suffix), ("best_of", body.best_of in (None, body.n)),
                     ("echo", not (body.echo and body.logprobs is not None))):
        if not ok:
            raise APIError(400, f"{name} is not supported" + (" with logprobs" if name == "echo" else ""),
                           param=name, code="unsupported_parameter")
    prompts, texts = _completion_prompts(state, body.prompt)
    for ids in prompts:
        if not ids:
            raise APIError(400, "The prompt is empty (no tokens)", param="prompt", code="invalid_value")
        _check_length(state, len(ids), body.max_tokens, "prompt")
    max_tokens = body.max_tokens if body.max_tokens is not None else state.max_len - max(map(len, prompts))
    _check_capacity(state, len(prompts) * body.n)
    params = _sampling_params(body, max_tokens, body.logprobs, body.n)
    job = Job(state, "completion", prompts, params, body.n)
    echo = [texts[c.index // body.n] if body.echo else "" for c in job.choices.values()]
    job.submit()

    def logprobs(choice: Choice, start: int, offset: int) -> s.CompletionLogprobs | None:
        if body.logprobs is None:
            return None
        tokens = [state.token_text(t) for t in choice.token_ids[start:]]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        tops = []
        for chosen, lp, top in zip(choice.token_ids[start:], choice.logprobs[start:], choice.top_logprobs[start:]):
            alternatives: dict[str, float] = {}
            for t, v in [*top[: body.logprobs], (chosen, lp)]:  # most likely first: tokens spelled alike keep it
                alternatives.setdefault(state.token_text(t), _finite(v))
            tops.append(alternatives)
        return s.CompletionLogprobs(tokens=tokens, token_logprobs=[_finite(lp) for lp in choice.logprobs[start:]],
                                    top_logprobs=tops, text_offset=offsets)

    if not body.stream:
        def build() -> dict:
            choices = [s.CompletionChoice(index=c.index, text=echo[c.index] + c.text, finish_reason=c.finish_reason,
                                          logprobs=logprobs(c, 0, 0))
                       for c in job.choices.values()]
            return s.Completion(id=job.id, created=job.created, model=state.model_name, choices=choices,
                                usage=job.usage()).model_dump()

        return await _respond(job, request, build)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[s.CompletionChoice], usage: s.Usage | None = None) -> bytes:
        data = s.Completion(id=job.id, created=job.created, model=state.model_name, choices=choices, usage=usage)
        return _sse(data.model_dump(exclude=None if include_usage else {"usage"}))

    async def chunks() -> AsyncIterator[bytes]:
        sent = {c.index: (0, len(echo[c.index])) for c in job.choices.values()}  # tokens and chars sent
        for c in job.choices.values():
            if echo[c.index]:
                yield chunk([s.CompletionChoice(index=c.index, text=echo[c.index], finish_reason=None)])
        async for c, output in job.outputs():
            tokens, chars = sent[c.index]
            new_text = c.text[chars - len(echo[c.index]):]
            if new_text or output.finished:  # tokens still held back send their logprobs with the text
                lp = logprobs(c, tokens, chars)
                sent[c.index] = (len(c.token_ids), chars + len(new_text))
                yield chunk([s.CompletionChoice(index=c.index, text=new_text, logprobs=lp,
                                                finish_reason=c.finish_reason if output.finished else None)])
        if include_usage:
            yield chunk([], job.usage())

    return _stream_response(job, chunks)


def _completion_prompts(state: ServerState, prompt: str | list) -> tuple[list[list[int]], list[str]]:
    """(token ids, text) of each prompt: a string, strings, token ids, or lists of token ids."""
    tokenizer = state.tokenizer
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)], [prompt]
    if not prompt:
        raise APIError(400, "The prompt is empty", param="prompt", code="invalid_value")
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p) for p in prompt], list(prompt)
    batches = [prompt] if all(isinstance(p, int) for p in prompt) else prompt
    vocab = state.vocab_size
    for i, ids in enumerate(batches):
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            where = "prompt" if batches is not prompt else f"prompt[{i}]"
            raise APIError(400, f"Invalid value for '{where}': token id {bad} is outside the vocabulary "
                                f"(0 to {vocab - 1})", param=where, code="invalid_value")
    return [list(ids) for ids in batches], [tokenizer.decode(ids, skip_special_tokens=False) for ids in batches]


# -------------------------------------------------------------------------------------------- chat


async def chat(state: ServerState, body: s.ChatCompletionRequest, request: Request) -> Response:
    """`POST /v1/chat/completions`."""
    _check_common(state, body)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs",
                       code="invalid_value")
    prompt = _chat_prompt(state, body.messages)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    _check_length(state, len(prompt), max_tokens, "messages")
    _check_capacity(state, body.n)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    end_of_turn = None if body.ignore_eos else state.tokenizer  # ignore_eos: the end-of-turn marker too
    params = _sampling_params(body, max_tokens or state.max_len - len(prompt), logprobs, body.n, end_of_turn)
    job = Job(state, "chat", [prompt], params, body.n)
    job.submit()

    def token_logprobs(choice: Choice, start: int) -> list[s.TokenLogprob]:
        entries = []
        for token_id, lp, top in zip(choice.token_ids[start:], choice.logprobs[start:], choice.top_logprobs[start:]):
            text, raw = state.token(token_id)
            alternatives = [s.TopLogprob(token=state.token(i)[0], logprob=_finite(v), bytes=state.token(i)[1])
                            for i, v in top[: body.top_logprobs or 0]]
            entries.append(s.TokenLogprob(token=text, logprob=_finite(lp), bytes=raw, top_logprobs=alternatives))
        return entries

    if not body.stream:
        def build() -> dict:
            choices = [s.ChatChoice(index=c.index, message=s.AssistantMessage(content=c.text),
                                    finish_reason=c.finish_reason,
                                    logprobs=s.ChatLogprobs(content=token_logprobs(c, 0)) if body.logprobs else None)
                       for c in job.choices.values()]
            return s.ChatCompletion(id=job.id, created=job.created, model=state.model_name, choices=choices,
                                    usage=job.usage()).model_dump()

        return await _respond(job, request, build)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[s.ChatChunkChoice], usage: s.Usage | None = None) -> bytes:
        data = s.ChatCompletionChunk(id=job.id, created=job.created, model=state.model_name, choices=choices,
                                     usage=usage).model_dump(exclude=None if include_usage else {"usage"})
        for choice in data["choices"]:  # a delta carries only what changed, as OpenAI's
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return _sse(data)

    async def chunks() -> AsyncIterator[bytes]:
        for c in job.choices.values():
            yield chunk([s.ChatChunkChoice(index=c.index, delta=s.Delta(role="assistant", content=""))])
        sent = {c.index: (0, 0) for c in job.choices.values()}  # tokens and characters sent
        async for c, output in job.outputs():
            tokens, chars = sent[c.index]
            new_text = c.text[chars:]
            if new_text:
                lp = s.ChatLogprobs(content=token_logprobs(c, tokens)) if body.logprobs else None
                sent[c.index] = (len(c.token_ids), len(c.text))
                yield chunk([s.ChatChunkChoice(index=c.index, delta=s.Delta(content=new_text), logprobs=lp)])
            if output.finished:
                tokens = sent[c.index][0]
                lp = (s.ChatLogprobs(content=token_logprobs(c, tokens))
                      if body.logprobs and len(c.token_ids) > tokens else None)
                yield chunk([s.ChatChunkChoice(index=c.index, delta=s.Delta(), logprobs=lp,
                                               finish_reason=c.finish_reason)])
        if include_usage:
            yield chunk([], job.usage())

    return _stream_response(job, chunks)


def _chat_prompt(state: ServerState, messages: list[s.ChatMessage]) -> list[int]:
    """The conversation rendered with the chat template, as token ids."""
    conversation = []
    for message in messages:
        entry = {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        conversation.append(entry)
    try:
        text = apply_chat_template(state.tokenizer, conversation, add_generation_prompt=True)
    except ChatError as err:
        raise APIError(400, f"The messages do not fit the model's chat template: {err}", param="messages",
                       code="invalid_value") from None
    ids = state.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise APIError(400, "The messages render to an empty prompt", param="messages", code="invalid_value")
    return ids


def _finite(value: float | None) -> float:
    """A logprob JSON can carry: -inf (a token with zero probability) becomes -9999.0, as OpenAI does."""
    if value is None or value != value or value == float("-inf"):
        return -9999.0
    return float(value)
