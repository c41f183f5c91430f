"""The engine: continuous batching equals serving each request alone; stops, lengths, aborts and bad requests."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from lmforge.generate import SamplingParams
from lmforge.generate.engine import Engine, generate, stream
from lmforge.models import build_model, get_preset
from lmforge.tokenizers import Tokenizer

VOCAB = 97
TINY = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128, init_std=0.2)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A word-level tokenizer over ids 0..96: token i is the word `w{i}`, id 96 is the eos."""
    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"</s>": VOCAB - 1}
    backend = Backend(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["</s>"])
    return Tokenizer(backend, {"eos": "</s>"})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_preset("llama-tiny", **TINY)).eval()


def _alone(model, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation of one prompt by the batch-tensor loop without a cache (the reference)."""
    out = generate(model, torch.tensor([prompt]), n, use_cache=False)
    return out[0].tolist()


def _continuation(tokenizer, prompt: list[int], ids: list[int]) -> str:
    """The text `ids` add after the prompt (a word-level decode puts a space between prompt and answer)."""
    return tokenizer.decode(prompt + ids)[len(tokenizer.decode(prompt)):]


def _run(engine: Engine) -> dict[str, list]:
    """Drive the engine to the end; every request's events."""
    events: dict[str, list] = {}
    while engine.has_unfinished():
        for out in engine.step():
            events.setdefault(out.request_id, []).extend(out.events)
    return events


def test_continuous_batching_equals_each_request_alone(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch=3, max_len=64)
    prompts = {f"r{i}": torch.randint(0, 90, (3 + 2 * i,), generator=torch.Generator().manual_seed(i)).tolist()
               for i in range(5)}
    lengths = {"r0": 9, "r1": 3, "r2": 12, "r3": 5, "r4": 7}  # rows free up at different steps and are reused
    params = {rid: SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for rid, n in lengths.items()}
    for rid in ["r0", "r1", "r2"]:
        engine.add_request(rid, prompts[rid], params[rid])
    events = {}
    for _ in range(4):  # two more requests arrive while the first three decode
        for out in engine.step():
            events.setdefault(out.request_id, []).extend(out.events)
    engine.add_request("r3", prompts["r3"], params["r3"])
    engine.add_request("r4", prompts["r4"], params["r4"])
    assert engine.num_waiting == 2
    for rid, evs in _run(engine).items():
        events.setdefault(rid, []).extend(evs)
    for rid, prompt in prompts.items():
        ids = [e.token_id for e in events[rid]]
        assert ids == _alone(model, prompt, lengths[rid]), rid
        assert [e.finish_reason for e in events[rid]] == [None] * (lengths[rid] - 1) + ["length"]
    assert engine.steps < sum(lengths.values())  # decode steps were shared
    assert engine.num_running == 0 and all(r is None for r in engine.rows)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(model, tokenizer):
    def sample(seed: int, company: int) -> list[int]:
        engine = Engine(model, tokenizer, max_batch=4, max_len=64)
        for j in range(company):  # other requests in the same batch, sampling with their own seeds
            engine.add_request(f"other{j}", [5, 6, 7, j], SamplingParams(max_tokens=10, temperature=1.0, seed=j))
        engine.add_request("me", [1, 2, 3], SamplingParams(max_tokens=10, temperature=1.0, seed=seed, ignore_eos=True))
        return [e.token_id for e in _run(engine)["me"]]

    assert sample(7, 0) == sample(7, 0) == sample(7, 3)
    assert sample(7, 0) != sample(8, 0)


def test_eos_stop_ids_and_stop_strings_end_a_request(model, tokenizer):
    prompt = [4, 5, 6]
    ref = _alone(model, prompt, 12)
    engine = Engine(model, tokenizer, max_batch=3, max_len=64)
    engine.add_request("id", prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(ref[4],),
                                                    ignore_eos=True))
    full = _continuation(tokenizer, prompt, ref)
    stop = tokenizer.decode(ref[2:4])  # spans two tokens
    engine.add_request("str", prompt, SamplingParams(max_tokens=12, temperature=0, stop=(stop,), ignore_eos=True))
    events = _run(engine)
    assert [e.token_id for e in events["id"]] == ref[:ref.index(ref[4]) + 1]
    assert events["id"][-1].finish_reason == "stop"
    assert events["str"][-1].finish_reason == "stop"
    assert "".join(e.text for e in events["str"]) == full[:full.index(stop)]  # without the stop string
    assert engine.stop_ids == {VOCAB - 1, model.cfg.eos_token_id}  # eos of the tokenizer and of the model


def test_stream_yields_the_text_of_generate(model, tokenizer):
    prompt = [10, 11, 12, 13]
    events = list(stream(model, tokenizer, prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                                                                  logprobs=2)))
    ids = [e.token_id for e in events]
    assert ids == _alone(model, prompt, 8)
    assert "".join(e.text for e in events) == _continuation(tokenizer, prompt, ids)
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt]))[0, -1], -1)
    assert events[0].logprob == pytest.approx(float(first[ids[0]]), abs=1e-5)
    assert [i for i, _ in events[0].top_logprobs] == first.topk(2).indices.tolist()


def test_abort_frees_the_row(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch=1, max_len=64)
    engine.add_request("a", [1, 2], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    engine.add_request("b", [3, 4], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    engine.step()
    assert engine.num_running == 1 and engine.num_waiting == 1
    engine.abort("a")
    events = _run(engine)
    assert "a" not in events and [e.token_id for e in events["b"]] == _alone(model, [3, 4], 3)


def test_bad_requests_are_refused_with_the_reason(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch=1, max_len=32)
    with pytest.raises(ValueError, match="maximum context length is 32 tokens"):
        engine.add_request("x", list(range(30)), SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("x", [], SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        engine.add_request("x", [1, 500], SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request("x", [1], SamplingParams(temperature=-1))
    assert not engine.has_unfinished()


@pytest.mark.slow
def test_the_compiled_decode_step_gives_the_same_tokens(model, tokenizer):
    """`compile=True` runs the forward under torch.compile while the cache plans its writes outside it."""
    prompt = [7, 8, 9]
    assert torch.equal(generate(model, torch.tensor([prompt]), 10, compile=True), torch.tensor([_alone(model, prompt, 10)]))
    engine = Engine(model, tokenizer, max_batch=3, max_len=64, compile=True)
    lengths = {"a": 6, "b": 9, "c": 4, "d": 7}  # rows of different lengths, one joining late: the shapes change
    prompts = {rid: [3 + i, 5, 11 + 2 * i][: 2 + i % 2] for i, rid in enumerate(lengths)}
    for rid in "abc":
        engine.add_request(rid, prompts[rid], SamplingParams(max_tokens=lengths[rid], temperature=0, ignore_eos=True))
    events = {}
    for _ in range(3):
        for out in engine.step():
            events.setdefault(out.request_id, []).extend(out.events)
    engine.add_request("d", prompts["d"], SamplingParams(max_tokens=lengths["d"], temperature=0, ignore_eos=True))
    for rid, evs in _run(engine).items():
        events.setdefault(rid, []).extend(evs)
    for rid, n in lengths.items():
        assert [e.token_id for e in events[rid]] == _alone(model, prompts[rid], n), rid
