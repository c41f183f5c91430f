"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters and histograms are updated from the event loop and the engine thread, so every update
takes one lock; `render()` reads a consistent snapshot.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; time to first token is short, a whole request can take minutes on a CPU.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Histogram:
    """Cumulative buckets, a sum and a count: Prometheus' histogram."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        out += [f"{name}_sum {_number(self.total)}", f"{name}_count {running}"]
        return out


class Metrics:
    """What `/metrics` reports: requests by endpoint and status, tokens, latencies, queue and batch gauges."""

    def __init__(self, gauges: Callable[[], dict[str, int]] | None = None) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.engine_steps = 0
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.request_latency = Histogram(LATENCY_BUCKETS)
        self.gauges = gauges or (lambda: {"waiting": 0, "running": 0})

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def count_step(self) -> None:
        with self._lock:
            self.engine_steps += 1

    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self.time_to_first_token.observe(seconds)

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.request_latency.observe(seconds)

    def render(self) -> str:
        """The exposition text."""
        gauges = self.gauges()
        with self._lock:
            lines = [
                "# HELP lmforge_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE lmforge_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'lmforge_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {count}')
            lines += _scalar("lmforge_prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens)
            lines += _scalar("lmforge_completion_tokens_total", "counter", "Completion tokens generated.",
                             self.completion_tokens)
            lines += _scalar("lmforge_engine_steps_total", "counter",
                             "Engine steps (admission and one decode step for all running requests).",
                             self.engine_steps)
            lines += ["# HELP lmforge_time_to_first_token_seconds From a request's arrival to its first token.",
                      "# TYPE lmforge_time_to_first_token_seconds histogram",
                      *self.time_to_first_token.lines("lmforge_time_to_first_token_seconds"),
                      "# HELP lmforge_request_duration_seconds From a request's arrival to its last token.",
                      "# TYPE lmforge_request_duration_seconds histogram",
                      *self.request_latency.lines("lmforge_request_duration_seconds")]
        lines += _scalar("lmforge_requests_waiting", "gauge", "Engine requests waiting for a batch row.",
                         gauges["waiting"])
        lines += _scalar("lmforge_requests_running", "gauge", "Engine requests in the running batch.",
                         gauges["running"])
        return "\n".join(lines) + "\n"


def _scalar(name: str, kind: str, help: str, value: float) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
