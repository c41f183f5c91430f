"""A bounded fuzz of every endpoint (the real engine and tiny model behind it): never a 5xx, errors in OpenAI's shape.

Bodies come from the app's own OpenAPI schemas (valid ones, and valid ones with a field broken), plus
arbitrary JSON, junk bytes, odd headers, methods and paths. About 20 s in all.
"""

from __future__ import annotations

import json
import time

import pytest
from _jsonschema import JSON, broken, from_schema
from _serve_helpers import MODEL_NAME, make_app
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.serve import schemas

ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"]
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
RESPONSES = {"/v1/completions": schemas.Completion, "/v1/chat/completions": schemas.ChatCompletion}


@pytest.fixture(scope="module")
def client():
    # A short context keeps every generation short; a request timeout turns a hang into a (failing) 504.
    app = make_app(max_batch=8, max_queue=16, max_len=48, request_timeout=20)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.app_state = app.state.serve
        yield client
    assert not app.state.serve.runner.engine.has_unfinished()


@pytest.fixture(scope="module")
def bodies(client):
    """endpoint -> a strategy of JSON bodies for it."""
    spec = client.app.openapi()
    components = spec["components"]["schemas"]
    # Mostly the served model and small n, so that most valid bodies reach the engine; `broken` and
    # plain JSON cover the other values.
    overrides = {"model": st.just(MODEL_NAME),
                 "prompt": st.text(max_size=30) | st.lists(st.integers(-2, 400), max_size=6),
                 "n": st.integers(1, 3) | st.integers(1, 3) | st.integers(),
                 "logit_bias": st.none() | st.just({}) | st.dictionaries(st.text(max_size=4), st.floats(-5, 5))}
    out = {}
    for path in ("/v1/completions", "/v1/chat/completions"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        valid = from_schema(schema, components, overrides)
        out[path] = st.one_of(valid, valid, broken(valid), JSON)
    return out


def check(response, path: str, body=None) -> None:
    """No 5xx; an error has OpenAI's shape; a success parses as the endpoint's response (or a clean stream)."""
    assert response.status_code < 500, (path, body, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), error
        assert set(error) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text
    elif path in RESPONSES and response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]", response.text[-300:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), (body, event)
    elif path in RESPONSES:
        RESPONSES[path].model_validate(response.json())


def test_fuzz_generation_endpoints(client, bodies):
    started = time.monotonic()

    @FUZZ
    @given(data=st.data())
    def run(data):
        path = data.draw(st.sampled_from(sorted(bodies)))
        body = data.draw(bodies[path])
        check(client.post(path, json=body), path, body)

    run()
    assert time.monotonic() - started < 30


JUNK_BODIES = st.binary(max_size=64) | st.sampled_from([
    b"", b"{", b"null", b"[]", b'"text"', b"{}", b"\xff\xfe", b'{"model": NaN}',
    b'{"model": "tiny-chat", "prompt": "hi", "temperature": NaN}',
    b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": Infinity}',
    b'{"model": "tiny-chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": 1e400}',
    b'{"model": "tiny-chat", "prompt": [[]]}', b'{"model": "tiny-chat", "prompt": [1, "a"]}',
    b'{"model": "tiny-chat", "prompt": "\\ud800"}',
])
HEADERS = st.dictionaries(
    st.sampled_from(["content-type", "authorization", "accept", "x-junk", "accept-encoding", "transfer-encoding"]),
    st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x", "Bearer x", "*/*",
                     "gzip", "chunked", "", "\t", "application/json; charset=latin-1"]),
    max_size=3,
)


def test_fuzz_junk_requests(client):
    started = time.monotonic()

    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
           path=st.sampled_from(ENDPOINTS) | st.sampled_from(["/", "/v1", "/v1/", "/v2/models", "/v1/completions/x",
                                                              "/%00", "/..", "/v1/models?x=1"]),
           body=JUNK_BODIES, headers=HEADERS)
    def run(method, path, body, headers):
        headers = {k: v for k, v in headers.items() if k != "transfer-encoding" or v == "chunked"}
        response = client.request(method, path, content=body if method not in ("GET", "HEAD") else None,
                                  headers=headers)
        if method == "HEAD":
            assert response.status_code < 500
        else:
            check(response, path.split("?")[0], body)

    run()
    assert time.monotonic() - started < 20
    assert client.get("/health").json()["status"] == "ok"  # still serving
