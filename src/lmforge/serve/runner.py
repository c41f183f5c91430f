"""The thread that drives the `Engine`, and the bridge between it and the asyncio event loop.

The engine is not thread-safe, so one thread owns it. Handlers on the event loop never touch it:
they put new requests and aborts into an inbox (a list under a condition variable) that the thread
drains between steps, and the thread hands every `RequestOutput` back to the request's sink with
`loop.call_soon_threadsafe`. Waiting requests are counted here, so a full queue is refused at
once (`QueueFull`) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("lmforge.serve")

Sink = Callable[[str, Any], None]  # (request id, RequestOutput or an exception), called on the event loop


class QueueFull(Exception):
    """More requests are waiting than the server holds."""


class EngineRejected(Exception):
    """The engine refused a request (`add_request` raised ValueError)."""


class EngineFailed(Exception):
    """The engine raised while running a request (a bug: the request fails with a 500)."""


@dataclass
class _Add:
    request_id: str
    prompt_ids: Sequence[int]
    params: Any
    sink: Sink


@dataclass
class _Abort:
    request_id: str


class EngineRunner:
    """Owns an `Engine` in a background thread; thread-safe `submit` and `abort` for the event loop.

    `max_queue` bounds the engine requests that are submitted but not yet running (they have
    produced no output yet); `on_step` is called after every engine step (metrics).
    """

    def __init__(self, engine: Any, max_queue: int = 64, on_step: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.on_step = on_step
        self._cond = threading.Condition()
        self._inbox: list[_Add | _Abort] = []
        self._waiting: set[str] = set()  # submitted, no output yet (in the inbox or the engine's queue)
        self._sinks: dict[str, Sink] = {}  # the engine thread's own: requests added and not finished
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.num_running = 0  # published by the engine thread after each step
        self.steps = 0

    # ------------------------------------------------------------------ called from the event loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the engine thread; outputs go to sinks on `loop`."""
        self._loop = loop
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()

    @property
    def num_waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, requests: Sequence[tuple[str, Sequence[int], Any]], sink: Sink) -> None:
        """Queue engine requests `(request_id, prompt_ids, params)`, all or none; `QueueFull` when they do not fit."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (at most {self.max_queue})")
            for request_id, prompt_ids, params in requests:
                self._waiting.add(request_id)
                self._inbox.append(_Add(request_id, prompt_ids, params, sink))
            self._cond.notify()

    def abort(self, request_ids: Sequence[str]) -> None:
        """Stop engine requests (finished or unknown ids are ignored); their rows free before the next step."""
        with self._cond:
            for request_id in request_ids:
                self._waiting.discard(request_id)
                self._inbox.append(_Abort(request_id))
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what the engine holds (up to `timeout` seconds, then abort it) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("engine still busy after %.0f s of draining: aborting what is left", timeout or 0)
                with self._cond:
                    self._inbox += [_Abort(request_id) for request_id in list(self._sinks)]
                    self._cond.notify()
                self._thread.join(10)

    # ---------------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        with torch.inference_mode():  # thread-local: the engine thread must enter it itself
            while True:
                with self._cond:
                    while not self._inbox and not self._sinks and not self._stopping:
                        self._cond.wait()
                    inbox, self._inbox = self._inbox, []
                    if self._stopping and not inbox and not self._sinks:
                        return
                for item in inbox:
                    self._apply(item)
                self.num_running = self.engine.num_running
                if self._sinks:
                    self._step()

    def _apply(self, item: _Add | _Abort) -> None:
        if isinstance(item, _Abort):
            if self._sinks.pop(item.request_id, None) is not None:
                try:
                    self.engine.abort(item.request_id)
                except Exception:
                    log.exception("engine.abort(%r) failed", item.request_id)
            return
        try:
            self.engine.add_request(item.request_id, item.prompt_ids, item.params)
        except ValueError as err:
            self._deliver(item.sink, item.request_id, EngineRejected(str(err)))
        except Exception as err:
            log.exception("engine.add_request(%r) failed", item.request_id)
            self._deliver(item.sink, item.request_id, EngineFailed(repr(err)))
        else:
            self._sinks[item.request_id] = item.sink

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as err:  # a bug in the engine: fail what it holds, keep serving
            log.exception("engine.step() failed; failing its %d requests", len(self._sinks))
            for request_id, sink in list(self._sinks.items()):
                try:
                    self.engine.abort(request_id)
                except Exception:
                    log.exception("engine.abort(%r) failed", request_id)
                self._deliver(sink, request_id, EngineFailed(repr(err)))
            self._sinks.clear()
            time.sleep(0.01)
            return
        self.steps += 1
        self.num_running = self.engine.num_running
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if sink is None:  # aborted meanwhile
                continue
            if output.finished:
                del self._sinks[output.request_id]
            self._deliver(sink, output.request_id, output)
        if self.on_step is not None:
            self.on_step()

    def _deliver(self, sink: Sink, request_id: str, item: Any) -> None:
        with self._cond:
            self._waiting.discard(request_id)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(sink, request_id, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass
