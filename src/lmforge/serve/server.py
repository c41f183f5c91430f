"""`run_server`: load a model, build the engine and the app, and serve it with uvicorn until Ctrl-C / SIGTERM.

uvicorn's shutdown is graceful: it stops accepting connections, waits for the open requests to
finish, then runs the app's lifespan shutdown, which drains the engine and ends its thread.
"""

from __future__ import annotations

import logging
import os

from lmforge.generate.console import OptionError, load

API_KEY_ENV = "LMFORGE_API_KEY"


def check_options(host: str, port: int, max_batch: int, max_queue: int, request_timeout: float,
                  max_len: int | None) -> None:
    """Raise one `OptionError` naming every bad serving option."""
    problems = []
    if not host:
        problems.append("host must not be empty")
    if not 0 <= port <= 65535:
        problems.append(f"port={port} (allowed: 0 to 65535)")
    if max_batch < 1:
        problems.append(f"max_batch={max_batch} (allowed: an integer >= 1)")
    if max_queue < 1:
        problems.append(f"max_queue={max_queue} (allowed: an integer >= 1)")
    if not request_timeout > 0:
        problems.append(f"request_timeout={request_timeout} (allowed: seconds > 0)")
    if max_len is not None and max_len < 2:
        problems.append(f"max_len={max_len} (allowed: an integer >= 2, or none for the model's context)")
    if problems:
        raise OptionError("; ".join(problems))


def run_server(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8, max_queue: int = 64,
               api_key: str | None = None, request_timeout: float = 600.0, dtype: str = "float32",
               model_name: str | None = None, max_len: int | None = 2048, threads: int | None = None,
               log_level: str = "info", quantize: str | None = None,
               compile: bool = False) -> None:
    """Serve `model` over HTTP (see `lmforge.cli.serve.serve` for the options)."""
    import uvicorn

    from lmforge.generate.engine import Engine
    from lmforge.serve.app import create_app

    check_options(host, port, max_batch, max_queue, request_timeout, max_len)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lm, tokenizer = load(model, dtype, threads, quantize)
    engine = Engine(lm, tokenizer, max_batch=max_batch, max_len=max_len, compile=compile)
    name = model_name or model
    app = create_app(engine, tokenizer, name, max_queue=max_queue, api_key=api_key,
                     request_timeout=request_timeout)
    print(f"serving {name} ({lm.num_parameters():,} parameters, {dtype}, context {engine.max_len}, "
          f"{max_batch} rows) on http://{host}:{port}/v1" + (" with an API key" if api_key else ""), flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
