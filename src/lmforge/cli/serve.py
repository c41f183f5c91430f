"""`lmforge serve`: an OpenAI-compatible HTTP server (completions, chat, models, health, metrics).

Only typing is imported here; the server is imported inside the function, so `lmforge --help` stays fast.
"""

from __future__ import annotations

from typing import Literal


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    api_key: str | None = None,
    request_timeout: float = 600.0,
    dtype: Literal["float32", "bfloat16"] = "float32",
    model_name: str | None = None,
    max_len: int | None = 2048,
    threads: int | None = None,
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info",
    quantize: Literal["int8", "q8_0", "int4"] | None = None,
    compile: bool = False,
) -> None:
    """Serve a model over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models.

    Concurrent requests share decode steps (continuous batching). Ctrl-C or SIGTERM stops accepting
    requests, finishes the open ones, then exits.

    Args:
        model: A named model (smollm2-135m-instruct), a Hugging Face folder or an lmforge folder, with its
            tokenizer (whose chat template writes the conversations; ChatML when it has none).
        host: The address to listen on; 0.0.0.0 for every interface.
        port: The TCP port.
        max_batch: Requests decoded together (rows of the KV cache).
        max_queue: Requests waiting for a row at most; more are answered 429 with Retry-After.
        api_key: Clients must send `Authorization: Bearer KEY` to /v1/...; default: $LMFORGE_API_KEY, else none.
        request_timeout: Seconds a request may take, queueing included; then it is aborted (504).
        dtype: The weights' precision.
        model_name: The name clients pass as `model`; default: the model argument.
        max_len: Tokens of context per request (prompt and completion); none: the model's full context.
            The KV cache holds max_batch times max_len tokens.
        threads: CPU threads for torch; default: torch's own choice.
        log_level: uvicorn's and the server's log level.
        quantize: Quantize the weights after loading (int8, q8_0, int4; see `lmforge generate --help`); a folder
            written by `lmforge quantize` needs no flag.
        compile: Decode with the forward under torch.compile (about a minute before the server listens).
    """
    from lmforge.serve.server import run_server

    run_server(model, host=host, port=port, max_batch=max_batch, max_queue=max_queue, api_key=api_key,
               request_timeout=request_timeout, dtype=dtype, model_name=model_name, max_len=max_len,
               threads=threads, log_level=log_level, quantize=quantize, compile=compile)
