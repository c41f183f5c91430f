"""Load and failure handling on a live server: a full queue (429), API keys (401), clients that leave,
timeouts (504) and a graceful shutdown, all against the real engine (slowed per step, to act mid-request)."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
from _serve_helpers import MODEL_NAME, LiveServer, live_server, make_app, wait_until

try:
    import httpx
except ImportError:  # httpx's successor, where it is installed under its own name
    import httpx2 as httpx

LONG = {"model": MODEL_NAME, "prompt": "the cat", "max_tokens": 200, "temperature": 0, "ignore_eos": True}


def _client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def _raw_request(server, body: dict) -> socket.socket:
    """Send a POST /v1/completions by hand and return the open socket (closing it is a disconnect)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_full_queue_answers_429_with_retry_after():
    with live_server(make_app(max_batch=1, max_queue=1, slow=0.05)) as srv:  # the first request: 10 s
        runner = srv.runner
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running:
                lines = running.iter_lines()  # (kept: a dropped iterator closes the response)
                next(lines)  # the first request holds the only row
                assert wait_until(lambda: runner.num_running == 1)
                waiting = _raw_request(srv, {**LONG, "max_tokens": 5})  # the second fills the queue
                assert wait_until(lambda: runner.num_waiting == 1)
                refused = http.post("/v1/completions", json={**LONG, "max_tokens": 5})
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
                with pytest.raises(openai.RateLimitError):
                    _client(srv).chat.completions.create(model=MODEL_NAME, max_tokens=2,
                                                         messages=[{"role": "user", "content": "x"}])
            # The stream was closed: its row goes to the waiting request, which finishes.
            waiting.settimeout(20)
            answer = b""
            while b"finish_reason" not in answer:
                answer += waiting.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            waiting.close()
            assert wait_until(lambda: runner.num_running == 0 and runner.num_waiting == 0)
            assert http.post("/v1/completions", json={**LONG, "max_tokens": 3}).status_code == 200


def test_api_key():
    with live_server(make_app(api_key="s3cret")) as srv:
        with pytest.raises(openai.AuthenticationError) as err:
            _client(srv, "wrong").models.list()
        assert err.value.code == "invalid_api_key"
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401  # no header at all
        assert httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert [m.id for m in _client(srv, "s3cret").models.list().data] == [MODEL_NAME]
        assert httpx.get(f"{srv.url}/health").status_code == 200  # health and metrics stay open
        assert httpx.get(f"{srv.url}/metrics").status_code == 200


def test_client_disconnect_aborts_the_request():
    with live_server(make_app(max_batch=2, slow=0.05)) as srv:  # 10 s per request unless aborted
        runner, engine = srv.runner, srv.runner.engine
        # Streaming: read one event, then hang up.
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
                lines = response.iter_lines()
                next(lines)
                assert wait_until(lambda: engine.num_running == 1)
        assert wait_until(lambda: engine.num_running == 0 and runner.num_running == 0, timeout=2)
        # Not streaming: nothing is sent until the end, so the server must notice the hang-up by itself.
        sock = _raw_request(srv, LONG)
        assert wait_until(lambda: engine.num_running == 1)
        sock.close()
        assert wait_until(lambda: engine.num_running == 0, timeout=2)
        assert not engine.has_unfinished()
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'lmforge_requests_total{endpoint="/v1/completions",status="499"} 1' in metrics


def test_request_timeout_aborts_with_504():
    with live_server(make_app(slow=0.01, request_timeout=0.3)) as srv:
        engine = srv.runner.engine
        started = time.monotonic()
        response = httpx.post(f"{srv.url}/v1/completions", json=LONG, timeout=30)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < 3
        assert wait_until(lambda: not engine.has_unfinished(), timeout=5)
        streamed = httpx.post(f"{srv.url}/v1/completions", json={**LONG, "stream": True}, timeout=30)
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
        assert wait_until(lambda: not engine.has_unfinished(), timeout=5)


def test_graceful_shutdown_finishes_the_request_in_flight():
    server = LiveServer(make_app(slow=0.01)).start()
    result = {}

    def ask():
        result["reply"] = _client(server).completions.create(**{k: v for k, v in LONG.items() if k != "ignore_eos"},
                                                             extra_body={"ignore_eos": True}, n=2)

    asking = threading.Thread(target=ask)
    asking.start()
    assert wait_until(lambda: server.runner.num_running == 2)
    server.stop()  # uvicorn stops accepting, waits for the open request, then the lifespan drains the engine
    asking.join(30)
    reply = result["reply"]
    assert [c.finish_reason for c in reply.choices] == ["length", "length"]
    assert reply.usage.completion_tokens == 2 * LONG["max_tokens"]
    assert not server.thread.is_alive() and not server.runner.alive
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)
