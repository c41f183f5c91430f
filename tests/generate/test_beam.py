"""Beam search against transformers' `generate(num_beams=N, do_sample=False)`: tokens and `sequences_scores`.

Tiny random lmforge models (LLaMA, GPT-2, BART) are exported with `save_pretrained` and loaded by
transformers, so both sides run the same weights in float32. The eos id is a token the model emits
often, so hypotheses finish at different steps; prompts are a batch of two of different lengths
(left-padded for the decoders, right-padded for BART's encoder).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import transformers as T

from lmforge.generate.beam import beam_search
from lmforge.interop import save_pretrained
from lmforge.models import build_model, get_preset

SHAPE = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64, init_std=0.2)
PRESETS = {"llama": ("llama-tiny", dict(n_kv_heads=2)), "gpt2": ("gpt2-tiny", dict(bos_token_id=0, eos_token_id=0)),
           "bart": ("bart-tiny", {})}
PAD = 3
NEW = 10
SETTINGS = [  # (num_beams, length_penalty, early_stopping, num_return_sequences)
    (4, 1.0, False, 1),
    (4, 0.5, True, 2),
    (3, 2.0, "never", 3),
    (4, -0.5, False, 4),
    (5, 0.0, "never", 2),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than several contending for a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(PRESETS))
def pair(request, tmp_path_factory):
    """(kind, lmforge model, the same model in transformers, prompts, mask, an eos id the model emits often)."""
    kind = request.param
    preset, extra = PRESETS[kind]
    torch.manual_seed(0)
    model = build_model(get_preset(preset, **SHAPE, **extra)).eval()
    folder = tmp_path_factory.mktemp(kind)
    save_pretrained(model, folder)
    auto = T.AutoModelForSeq2SeqLM if kind == "bart" else T.AutoModelForCausalLM
    hf = auto.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(4, SHAPE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if kind == "bart":
        mask[1, 4:] = 0  # right padding of the encoder input
        ids[1, 4:] = PAD
    else:
        mask[1, :3] = 0  # left padding of the decoder prompt
        ids[1, :3] = PAD
    greedy = _new_ids(kind, hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                        eos_token_id=None, pad_token_id=PAD, forced_eos_token_id=None), ids)
    eos = Counter(greedy[:, 2:].flatten().tolist()).most_common(1)[0][0]  # frequent, but not at the very start
    return kind, model, hf, ids, mask, eos


def _new_ids(kind, sequences, ids):
    return sequences[:, 1:] if kind == "bart" else sequences[:, ids.shape[1]:]  # drop decoder start / prompt


def _reference(pair, num_beams, length_penalty, early_stopping, num_return_sequences):
    kind, _, hf, ids, mask, eos = pair
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, num_beams=num_beams,
                      length_penalty=length_penalty, early_stopping=early_stopping,
                      num_return_sequences=num_return_sequences, eos_token_id=eos, pad_token_id=PAD,
                      forced_eos_token_id=None, return_dict_in_generate=True, output_scores=True)
    return _new_ids(kind, out.sequences, ids), out.sequences_scores


def _ours(pair, num_beams, length_penalty, early_stopping, num_return_sequences):
    _, model, _, ids, mask, eos = pair
    return beam_search(model, ids, mask, num_beams=num_beams, max_new_tokens=NEW, length_penalty=length_penalty,
                       early_stopping=early_stopping, eos_token_id=eos, pad_token_id=PAD,
                       num_return_sequences=num_return_sequences)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "beams{}-lp{}-es{}-ret{}".format(*s))
def test_matches_transformers(pair, settings):
    ref_ids, ref_scores = _reference(pair, *settings)
    ours = _ours(pair, *settings)
    assert ours.sequences.shape == ref_ids.shape
    assert torch.equal(ours.sequences, ref_ids)
    assert torch.allclose(ours.scores, ref_scores, atol=1e-4, rtol=0)


def _lengths(sequences: torch.Tensor, eos: int) -> list[int]:
    """New tokens of each hypothesis, eos included."""
    out = []
    for row in sequences.tolist():
        out.append(row.index(eos) + 1 if eos in row else len(row))
    return out


def test_hypotheses_finish_at_different_steps(pair):
    """The eos choice really exercises finishing: returned hypotheses of one prompt have different lengths,
    and the padding after an eos is the pad id."""
    eos = pair[-1]
    ours = _ours(pair, 4, -0.5, False, 4)
    lengths = _lengths(ours.sequences, eos)
    assert len(set(lengths)) > 1, lengths
    for row, length in zip(ours.sequences.tolist(), lengths):
        assert all(t == PAD for t in row[length:])
    assert torch.all(ours.scores.view(2, 4)[:, :-1] >= ours.scores.view(2, 4)[:, 1:])  # best first


def test_a_padded_batch_equals_each_prompt_alone(pair):
    kind, model, _, ids, mask, eos = pair
    both = beam_search(model, ids, mask, num_beams=3, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD,
                       num_return_sequences=2)
    for i in range(2):
        real = mask[i].bool()
        alone = beam_search(model, ids[i:i + 1, real], None, num_beams=3, max_new_tokens=NEW, eos_token_id=eos,
                            pad_token_id=PAD, num_return_sequences=2)
        width = alone.sequences.shape[1]
        assert torch.equal(both.sequences[2 * i:2 * i + 2, :width], alone.sequences)
        assert torch.all(both.sequences[2 * i:2 * i + 2, width:] == PAD)
        assert torch.allclose(both.scores[2 * i:2 * i + 2], alone.scores, atol=1e-5)


def test_bad_arguments_are_errors():
    model = build_model(get_preset("llama-tiny", **SHAPE, n_kv_heads=2))
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="num_return_sequences=5.*early_stopping='sometimes'"):
        beam_search(model, ids, num_beams=4, num_return_sequences=5, early_stopping="sometimes")
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        beam_search(model, ids, max_new_tokens=0)
