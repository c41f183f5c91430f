"""The official `openai` client against a live `lmforge serve` (uvicorn on 127.0.0.1) with a tiny random model.

The reference for every text is an independent greedy loop over the model (`generate`, the batch-tensor
path, not the engine) and, for logprobs, the log-softmax of one full forward pass without a cache.
"""

from __future__ import annotations

import re

import openai
import pytest

try:
    import httpx
except ImportError:  # httpx's successor, where it is installed under its own name
    import httpx2 as httpx
import torch
from _serve_helpers import MODEL_NAME, live_server, make_app, tiny_model_and_tokenizer

from lmforge.generate.chat import apply_chat_template
from lmforge.generate.engine import generate

STOP_IDS = {0, 2}  # <|endoftext|> and <|im_end|>: end-of-turn tokens of the chat preset


@pytest.fixture(scope="module")
def server():
    with live_server(make_app(max_batch=4)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def greedy_ids(prompt_ids: list[int], max_tokens: int, stop_ids=()) -> list[int]:
    model, _ = tiny_model_and_tokenizer()
    out = generate(model, torch.tensor([prompt_ids]), max_tokens)[0].tolist()
    for i, token in enumerate(out):
        if token in stop_ids:
            return out[:i]
    return out


def chat_prompt(messages) -> list[int]:
    _, tokenizer = tiny_model_and_tokenizer()
    return tokenizer.encode(apply_chat_template(tokenizer, messages), add_special_tokens=False)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat sat on"}]


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].object == "model"
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"


def test_chat_greedy_matches_reference(client):
    _, tokenizer = tiny_model_and_tokenizer()
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == MODEL_NAME
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.logprobs is None
    expected = greedy_ids(chat_prompt(MESSAGES), 12, STOP_IDS)
    assert choice.message.content == tokenizer.decode(expected)
    assert choice.finish_reason == ("length" if len(expected) == 12 else "stop")
    prompt_tokens = len(chat_prompt(MESSAGES))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.completion_tokens == min(12, len(expected) + 1)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_equals_non_stream(client):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_greedy_and_stream(client):
    _, tokenizer = tiny_model_and_tokenizer()
    prompt = "the dog ran far"
    kwargs = dict(model=MODEL_NAME, prompt=prompt, max_tokens=9, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    expected = tokenizer.decode(greedy_ids(tokenizer.encode(prompt), 9))
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 9 and whole.usage.prompt_tokens == len(tokenizer.encode(prompt))
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    echoed = client.completions.create(**kwargs, echo=True)
    assert echoed.choices[0].text == prompt + expected


def test_completion_batch_of_prompts_and_token_ids(client):
    _, tokenizer = tiny_model_and_tokenizer()
    prompts = ["the cat", "we went home"]
    reply = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=5, temperature=0, n=2,
                                      extra_body={"ignore_eos": True})
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for c in reply.choices:
        assert c.text == tokenizer.decode(greedy_ids(tokenizer.encode(prompts[c.index // 2]), 5))
    by_ids = client.completions.create(model=MODEL_NAME, prompt=tokenizer.encode(prompts[1]), max_tokens=5,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == reply.choices[2].text


def test_seed_reproducible_and_n(client):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=1.0)
    first = client.chat.completions.create(**kwargs, n=2, seed=7)
    again = client.chat.completions.create(**kwargs, n=2, seed=7)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]  # choice i samples with seed + i
    shifted = client.chat.completions.create(**kwargs, seed=8)
    assert shifted.choices[0].message.content == texts[1]
    streamed = client.chat.completions.create(**kwargs, n=2, seed=7, stream=True)
    parts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
    assert parts == texts
    assert first.usage.completion_tokens <= 24 and first.usage.prompt_tokens == len(chat_prompt(MESSAGES))


def test_stop_strings(client):
    kwargs = dict(model=MODEL_NAME, prompt="the cat sat", max_tokens=40, temperature=0,
                  extra_body={"ignore_eos": True})
    text = client.completions.create(**kwargs).choices[0].text
    runs = [m for m in re.finditer(r"[A-Za-z ]{2,}", text) if m.start() > 0]
    assert runs, f"no ASCII run to stop at in {text!r}"
    stop = runs[0].group()[:2]
    stopped = client.completions.create(**kwargs, stop=[stop, "never-appears"])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_logprobs_match_a_full_forward_pass(client):
    model, tokenizer = tiny_model_and_tokenizer()
    prompt = tokenizer.encode("Paris is the capital")
    ids = greedy_ids(prompt, 6)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + ids]))[0, len(prompt) - 1: -1]
    reference = torch.log_softmax(logits.float(), -1)  # (6, V)

    reply = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True})
    lp = reply.choices[0].logprobs
    assert lp.tokens == [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    assert lp.token_logprobs == pytest.approx([reference[t, i].item() for t, i in enumerate(ids)], abs=1e-4)
    for t, top in enumerate(lp.top_logprobs):
        best = reference[t].topk(3).values.tolist()  # tokens spelled alike ("\ufffd") share one key of the dict
        assert max(top.values()) == pytest.approx(best[0], abs=1e-4)
        assert all(min(abs(v - b) for b in best + [lp.token_logprobs[t]]) < 1e-4 for v in top.values())
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)

    chat = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens - (chat.choices[0].finish_reason == "stop")
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in content)
    assert all(entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5) for entry in content)  # greedy
    raw = b"".join(bytes(entry.bytes) for entry in content)
    assert raw.decode("utf-8", errors="replace") == chat.choices[0].message.content
    streamed = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=2, stream=True)
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in entries] == [e.token for e in content][: len(entries)]
    assert len(entries) >= len(content)


def test_errors_come_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    assert err.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_NAME, prompt="hi", temperature=3)
    assert err.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_NAME, prompt="the " * 200, max_tokens=100)
    assert "maximum context length is 256 tokens" in err.value.message
    assert err.value.code == "context_length_exceeded"


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france():
    from _assets import require_asset

    from lmforge.generate.engine import Engine
    from lmforge.interop.native import load_any
    from lmforge.serve.app import create_app
    from lmforge.tokenizers import Tokenizer

    name = "smollm2-135m-instruct"
    model = require_asset(lambda: load_any(name, task="causal-lm"))
    tokenizer = Tokenizer.from_pretrained(name)
    engine = Engine(model, tokenizer, max_batch=2, max_len=512)
    with live_server(create_app(engine, tokenizer, name)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model=name, messages=question, max_tokens=24, temperature=0)
        assert "Paris" in reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop"  # the answer ends at <|im_end|>
        streamed = client.chat.completions.create(model=name, messages=question, max_tokens=24, temperature=0,
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
            reply.choices[0].message.content
