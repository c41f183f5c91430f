"""Error responses in OpenAI's shape, the catch-all 500, the CLI function's options, and /metrics as Prometheus text."""

from __future__ import annotations

import inspect
import math
import re

import pytest
from _serve_helpers import MODEL_NAME, make_app, tiny_model_and_tokenizer
from fastapi.testclient import TestClient

from lmforge.generate.console import OptionError
from lmforge.generate.engine import Engine
from lmforge.serve.app import create_app
from lmforge.serve.errors import validation_error
from lmforge.serve.server import check_options

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(max_len=64), raise_server_exceptions=False) as client:
        yield client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("path, body, param, code", [
    (CHAT, {"model": MODEL_NAME}, "messages", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": []}, "messages", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": [{"role": "user", "content": 3}]}, "messages[0].content",
     "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "temperature": 2.5}, "temperature", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "top_p": 0}, "top_p", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "top_logprobs": 3}, "top_logprobs", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs",
     "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "n": 17}, "n", "invalid_value"),  # more than max_queue
    (CHAT, {"model": MODEL_NAME, "messages": USER, "stop": ""}, "stop", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "presence_penalty": -3}, "presence_penalty", "invalid_value"),
    (CHAT, {"model": MODEL_NAME, "messages": USER, "max_tokens": 60}, "messages", "context_length_exceeded"),
    (CHAT, {"model": MODEL_NAME, "messages": [{"role": "user", "content": "the " * 70}]}, "messages",
     "context_length_exceeded"),
    (COMPLETIONS, {"model": MODEL_NAME}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": ""}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": {"a": 1}}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": [5, 100000]}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": "x", "logprobs": 21}, "logprobs", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": "x", "seed": 2**64}, "seed", "invalid_value"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": "x", "suffix": "y"}, "suffix", "unsupported_parameter"),
    (COMPLETIONS, {"model": MODEL_NAME, "prompt": "x", "logit_bias": {"5": 1}}, "logit_bias",
     "unsupported_parameter"),
    (COMPLETIONS, {"model": 7, "prompt": "x"}, "model", "invalid_value"),
])
def test_bad_requests_are_400_naming_the_field(client, path, body, param, code):
    error = error_of(client.post(path, json=body), 400)
    assert error["param"] == param, error
    assert error["code"] == code and error["type"] == "invalid_request_error"
    if param in ("temperature", "messages[0].role", "max_tokens"):
        assert param in error["message"]


def test_context_length_message_is_vllms(client):
    error = error_of(client.post(COMPLETIONS, json={"model": MODEL_NAME, "prompt": "the " * 40, "max_tokens": 30}),
                     400)
    assert re.fullmatch(r"This model's maximum context length is 64 tokens\. However, you requested \d+ tokens "
                        r"\(\d+ in the prompt, 30 in the completion\)\. Please reduce the length of the prompt or "
                        r"completion\.", error["message"]), error["message"]


def test_invalid_json_unknown_model_method_and_path(client):
    error = error_of(client.post(CHAT, content=b'{"model": ', headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json" and "could not parse the JSON body" in error["message"]
    error = error_of(client.post(CHAT, json={"model": "gpt-4o", "messages": USER}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model" and "gpt-4o" in error["message"]
    response = client.get(CHAT)
    assert "POST" in error_of(response, 405)["message"] and response.headers["allow"] == "POST"
    assert "/v2/chat" in error_of(client.get("/v2/chat"), 404)["message"]
    error_of(client.post(COMPLETIONS, content=b"x" * 10, headers={"content-length": str(64 * 2**20)}), 413)


def test_union_errors_name_the_field_once():
    errors = [{"type": "string_type", "loc": ("body", "prompt", "str"), "msg": "Input should be a valid string"},
              {"type": "list_type", "loc": ("body", "prompt", "list[str]"), "msg": "Input should be a valid list"},
              {"type": "int_type", "loc": ("body", "prompt", "list[int]", 1), "msg": "Input should be a valid integer"},
              {"type": "less_than_equal", "loc": ("body", "temperature"), "msg": "Input should be <= 2"}]
    error = validation_error(errors)
    assert error.param == "prompt" and error.status == 400
    assert error.message.startswith("Invalid value for 'prompt': Input should be a valid string or ")
    assert "Invalid value for 'temperature': Input should be <= 2" in error.message  # every problem at once


class BrokenEngine(Engine):
    """An engine with a bug: its step raises."""

    def step(self):
        super().step()
        raise RuntimeError("secret internal detail")


def test_unexpected_errors_are_a_bare_500_and_the_server_goes_on():
    model, tokenizer = tiny_model_and_tokenizer()
    app = create_app(BrokenEngine(model, tokenizer, max_batch=2, max_len=64), tokenizer, MODEL_NAME)
    with TestClient(app, raise_server_exceptions=False) as client:
        for stream in (False, True):
            response = client.post(COMPLETIONS, json={"model": MODEL_NAME, "prompt": "x", "stream": stream})
            assert "secret" not in response.text and "Traceback" not in response.text
            if stream:  # the stream had started: an error event, then [DONE]
                assert '"code": "internal_error"' in response.text and response.text.endswith("data: [DONE]\n\n")
            else:
                assert error_of(response, 500) == {"message": "The server had an error while processing your request.",
                                                   "type": "internal_error", "param": None, "code": "internal_error"}
        assert client.get("/health").status_code == 200
        assert not app.state.serve.runner.engine.has_unfinished()


def test_cli_function_and_options():
    from lmforge.cli.serve import serve

    parameters = inspect.signature(serve).parameters
    assert list(parameters)[:9] == ["model", "host", "port", "max_batch", "max_queue", "api_key", "request_timeout",
                                    "dtype", "model_name"]
    assert parameters["host"].default == "127.0.0.1" and parameters["port"].default == 8000
    check_options("127.0.0.1", 8000, 8, 64, 600, 2048)
    with pytest.raises(OptionError) as err:
        check_options("", 70000, 0, 0, 0, 1)
    for name in ("host", "port=70000", "max_batch=0", "max_queue=0", "request_timeout=0", "max_len=1"):
        assert name in str(err.value)


# ------------------------------------------------------------------------------------------ metrics

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, dict[tuple, float]]:
    """The text exposition format, strictly: HELP/TYPE before a family's samples, valid names, labels, numbers."""
    assert text.endswith("\n")
    families: dict[str, str] = {}
    samples: dict[str, dict[tuple, float]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in families
            families[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert family in families, f"{name} has no TYPE line"
        key = tuple(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', labels))
        samples.setdefault(name, {})[key] = float(value)
    for name, kind in families.items():
        if kind == "histogram":
            buckets = samples[f"{name}_bucket"]
            bounds = sorted(buckets, key=lambda k: float(dict(k)["le"].replace("+Inf", "inf")))
            counts = [buckets[b] for b in bounds]
            assert counts == sorted(counts) and math.isinf(float(dict(bounds[-1])["le"].replace("+Inf", "inf")))
            assert counts[-1] == samples[f"{name}_count"][()]
    return samples


def test_metrics_parse_and_count(client):
    before = parse_prometheus(client.get("/metrics").text)
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    ok = client.post(COMPLETIONS, json={"model": MODEL_NAME, "prompt": "the cat", "max_tokens": 4, "ignore_eos": True})
    assert ok.status_code == 200
    client.post(CHAT, json={"model": MODEL_NAME, "messages": USER, "max_tokens": 3, "stream": True})
    client.post(CHAT, json={"model": "nope", "messages": USER})
    client.get("/nowhere")
    after = parse_prometheus(client.get("/metrics").text)

    def requests(samples, endpoint, status):
        return samples.get("lmforge_requests_total", {}).get((("endpoint", endpoint), ("status", status)), 0)

    assert requests(after, COMPLETIONS, "200") == requests(before, COMPLETIONS, "200") + 1
    assert requests(after, CHAT, "200") == requests(before, CHAT, "200") + 1
    assert requests(after, CHAT, "404") == requests(before, CHAT, "404") + 1
    assert requests(after, "other", "404") == requests(before, "other", "404") + 1  # unknown paths: one label
    tokens = ok.json()["usage"]
    assert after["lmforge_completion_tokens_total"][()] >= before["lmforge_completion_tokens_total"][()] + 4 + 1
    assert after["lmforge_prompt_tokens_total"][()] >= before["lmforge_prompt_tokens_total"][()] + tokens[
        "prompt_tokens"]
    for histogram in ("lmforge_time_to_first_token_seconds", "lmforge_request_duration_seconds"):
        assert after[f"{histogram}_count"][()] == before[f"{histogram}_count"][()] + 2
        assert after[f"{histogram}_sum"][()] > before[f"{histogram}_sum"][()]
    assert after["lmforge_engine_steps_total"][()] > before["lmforge_engine_steps_total"][()]
    assert after["lmforge_requests_running"][()] == 0 and after["lmforge_requests_waiting"][()] == 0
