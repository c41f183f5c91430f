"""What the server tests share: a tiny random chat model, a live uvicorn server on 127.0.0.1, a slowed engine.

A module of its own (not conftest.py), imported by name from the test files.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import uvicorn

from lmforge.generate.engine import Engine
from lmforge.models import build_model, get_preset
from lmforge.serve.app import create_app

MODEL_NAME = "tiny-chat"
TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 128, "max_seq_len": 256}
WORDS = "the cat sat on a mat while dog ran far away and we went home Paris is the capital of France".split()


@functools.cache
def tiny_model_and_tokenizer():
    """A random llama-tiny CausalLM (2 layers, d 64) and a byte-level BPE (vocab 300, ChatML markers) trained here."""
    import tempfile

    from lmforge.tokenizers import train_tokenizer

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.txt"
        docs = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) for _ in range(200))
        corpus.write_text("\n\n".join(docs), encoding="utf-8")
        tokenizer = train_tokenizer([corpus], kind="bpe", vocab_size=300, special_tokens="chat", show_progress=False)
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tokenizer.vocab_size, **TINY), task="causal-lm").eval()
    return model, tokenizer


class SlowEngine(Engine):
    """The real engine, each step `delay` seconds slower: requests stay in flight long enough to act on them."""

    delay = 0.02

    def step(self):
        time.sleep(self.delay)
        return super().step()


def make_app(max_batch: int = 4, max_queue: int = 16, slow: float = 0.0, max_len: int = 256, **kwargs):
    """A fresh app over its own engine (a `SlowEngine` when `slow` > 0) and the shared tiny model."""
    model, tokenizer = tiny_model_and_tokenizer()
    engine_class = Engine
    if slow:
        engine_class = type("Slow", (SlowEngine,), {"delay": slow})
    engine = engine_class(model, tokenizer, max_batch=max_batch, max_len=max_len)
    return create_app(engine, tokenizer, MODEL_NAME, max_queue=max_queue, **kwargs)


class LiveServer:
    """uvicorn serving an app on a free 127.0.0.1 port in a thread; `stop()` is its graceful shutdown."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 20) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    @property
    def runner(self):
        return self.app.state.serve.runner


@contextlib.contextmanager
def live_server(app) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition, timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
