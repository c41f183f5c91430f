"""Continuous batching through the server: concurrent requests share engine steps and answer as if alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
from _serve_helpers import MODEL_NAME, live_server, make_app

PROMPTS = ["the cat", "a dog ran", "we went home", "Paris is", "the mat", "far away and", "on a", "France"]
MAX_TOKENS = 16


def _complete(client: openai.OpenAI, prompt: str, max_tokens: int = MAX_TOKENS, stream: bool = False) -> str:
    kwargs = dict(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0,
                  extra_body={"ignore_eos": True})
    if stream:
        return "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True))
    reply = client.completions.create(**kwargs)
    assert reply.usage.completion_tokens == max_tokens
    return reply.choices[0].text


def test_concurrent_requests_share_steps_and_equal_sequential_ones():
    # A slightly slowed engine, so that requests sent together are in flight together. Different lengths
    # too: short requests leave the batch while long ones go on.
    app = make_app(max_batch=8, max_queue=32, slow=0.01)
    jobs = [(p, MAX_TOKENS if i % 2 else MAX_TOKENS // 2) for i, p in enumerate(PROMPTS)]
    with live_server(app) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        alone = [_complete(client, *job) for job in jobs]
        steps_alone = srv.runner.steps
        assert steps_alone == sum(n - 1 for _, n in jobs)  # a step per token; the admitting one samples two

        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: _complete(client, *job), jobs))
            steps_together = srv.runner.steps - steps_alone
            streamed = list(pool.map(lambda job: _complete(client, *job, stream=True), jobs))
        assert together == alone
        assert streamed == alone
        # Alone: 88 steps; together: about the longest request's 16 (arrivals spread over a few steps).
        assert steps_together <= 2 * MAX_TOKENS, (steps_together, steps_alone)
