"""The serving KV cache: rows at their own positions, idle rows, a bounded sliding-window ring, no device reads."""

from __future__ import annotations

import pytest
import torch

from lmforge.generate.engine import decode_step, prefill
from lmforge.models import build_model, get_preset

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=96, init_std=0.2)


def _model(preset: str, **overrides):
    torch.manual_seed(0)
    return build_model(get_preset(preset, **{**TINY, **overrides})).eval()


def _full_logits(model, ids: list[int]) -> torch.Tensor:
    """Last-position logits of the whole sequence, no cache (the reference)."""
    with torch.no_grad():
        return model(torch.tensor([ids]))[0, -1]


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_rows_of_different_lengths_decode_together_as_each_alone(preset):
    model = _model(preset)
    prompts = [[5, 9, 11, 3, 7, 1, 2], [8, 4], [6, 6, 6, 13, 2]]
    cache = model.make_cache(4, 40)  # row 3 stays idle throughout
    cache.active[:] = False
    seqs = [list(p) for p in prompts]
    last = []
    for row, p in enumerate(prompts):  # each prompt prefilled alone into its own row
        logits = prefill(model, cache, torch.tensor([p]), row=row)
        assert torch.allclose(logits[0], _full_logits(model, p), atol=1e-5)
        last.append(int(logits[0].argmax()))
    for step in range(6):
        for row, tok in enumerate(last):
            seqs[row].append(tok)
        cache.active[:] = [True, True, True, False]
        logits = decode_step(model, cache, torch.tensor(last + [0]))
        for row in range(3):
            assert torch.allclose(logits[row], _full_logits(model, seqs[row]), atol=1e-5), (step, row)
        last = [int(x) for x in logits[:3].argmax(-1)]
    assert cache.fill.tolist() == [len(s) for s in seqs] + [0]  # the idle row wrote into the scratch slot only


def test_a_freed_row_serves_a_new_request_while_others_continue():
    model = _model("llama-tiny")
    cache = model.make_cache(2, 40)
    cache.active[:] = False
    a, b, c = [3, 4, 5, 6, 7, 8], [9, 10, 11], [12, 13]
    prefill(model, cache, torch.tensor([a]), row=0)
    prefill(model, cache, torch.tensor([b]), row=1)
    cache.active[:] = True
    decode_step(model, cache, torch.tensor([1, 2]))
    a, b = a + [1], b + [2]
    cache.reset_rows([1])  # b finished; c takes its row
    prefill(model, cache, torch.tensor([c]), row=1)
    logits = decode_step(model, cache, torch.tensor([14, 15]))
    assert torch.allclose(logits[0], _full_logits(model, a + [14]), atol=1e-5)
    assert torch.allclose(logits[1], _full_logits(model, c + [15]), atol=1e-5)


def test_sliding_window_cache_is_a_bounded_ring_equal_to_the_full_forward():
    model = _model("llama-tiny", sliding_window=6)
    cache = model.make_cache(1, 90, max_chunk=4)
    assert cache.max_len == 6 + 4 and cache.ring  # bounded: not 90 slots
    seq = torch.randint(0, 97, (1, 11)).tolist()[0]
    logits = prefill(model, cache, torch.tensor([seq]), chunk=4)  # 11 tokens in chunks of 4
    assert torch.allclose(logits[0], _full_logits(model, seq), atol=1e-5)
    for _ in range(30):  # far past the ring's 10 slots
        tok = int(logits[0].argmax())
        seq.append(tok)
        logits = decode_step(model, cache, torch.tensor([tok]))
        assert torch.allclose(logits[0], _full_logits(model, seq), atol=1e-5)
    with pytest.raises(ValueError, match="sliding-window cache"):
        model(torch.zeros(1, 8, dtype=torch.long), cache=cache)


def test_cache_overflow_names_the_sizes():
    model = _model("llama-tiny")
    cache = model.make_cache(1, 5)
    prefill(model, cache, torch.tensor([[1, 2, 3, 4]]))
    decode_step(model, cache, torch.tensor([5]))
    with pytest.raises(ValueError, match="KV cache full: 6 positions requested, 5 allocated"):
        decode_step(model, cache, torch.tensor([6]))


def test_decode_step_never_reads_the_device(monkeypatch):
    """Per-step host synchronisation would stall a GPU; on the CPU it shows as these calls."""
    model = _model("llama-tiny")
    cache = model.make_cache(3, 32)
    cache.active[:] = False
    for row, p in enumerate([[1, 2, 3], [4, 5], [6, 7, 8, 9]]):
        prefill(model, cache, torch.tensor([p]), row=row)
    cache.active[:] = True

    def forbidden(*args, **kwargs):
        raise AssertionError("a device read inside decode_step")

    tokens = torch.tensor([1, 2, 3])
    for name in ("__bool__", "item", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    decode_step(model, cache, tokens)
    decode_step(model, cache, tokens)
