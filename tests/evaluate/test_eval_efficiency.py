"""Efficiency: parameter counts against transformers, size on disk, latency percentiles, peak memory, measure()."""

from __future__ import annotations

import random
import resource
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from lmforge.evaluate import efficiency
from lmforge.evaluate.efficiency import (
    count_parameters,
    latency,
    measure,
    peak_memory_mib,
    size_on_disk,
    throughput,
)
from lmforge.evaluate.errors import EvaluationError
from lmforge.interop.native import load_any

VOCAB = 96


def _hf(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        return T.BertForSequenceClassification(T.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            num_labels=3, max_position_embeddings=40, type_vocab_size=2))
    return T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=kind == "llama-tied"))


TASKS = {"bert": "sequence-classification", "llama": "causal-lm", "llama-tied": "causal-lm"}


@pytest.mark.parametrize("kind", ["bert", "llama", "llama-tied"])
def test_parameter_counts_equal_transformers(kind, tmp_path):
    hf = _hf(kind)
    hf.save_pretrained(tmp_path)
    model = load_any(tmp_path, dtype=torch.float32, task=TASKS[kind])
    counts = count_parameters(model)
    assert counts["parameters"] == hf.num_parameters() == model.num_parameters()
    assert counts["parameters"] - counts["embedding"] == hf.num_parameters(exclude_embeddings=True)
    assert counts["trainable"] == counts["parameters"]
    if kind == "llama-tied":  # the tied LM head is the token table: counted once
        assert counts["parameters"] == count_parameters(load_any(tmp_path, task="causal-lm"))["parameters"]
        assert counts["parameters"] + VOCAB * 32 == count_parameters(_hf("llama"))["parameters"]
    assert counts["weight_bytes"] == 4 * counts["parameters"]  # float32; nothing else in these state dicts
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("body.tokens"))
    for name, p in hf.named_parameters():
        p.requires_grad_("embed_tokens" in name or "word_embeddings" in name)
    assert count_parameters(model)["trainable"] == hf.num_parameters(only_trainable=True) == VOCAB * 32


def test_quantized_model_counts_the_weights_it_stands_for(tmp_path):
    from lmforge.compress.quantize import QuantConfig, quantize_model

    _hf("llama").save_pretrained(tmp_path)
    model = load_any(tmp_path, dtype=torch.float32, task="causal-lm")
    before = count_parameters(model)
    quantize_model(model, QuantConfig("int8"))
    after = count_parameters(model)
    assert after["parameters"] == before["parameters"] and after["embedding"] == before["embedding"]
    assert after["trainable"] < before["trainable"]
    assert after["weight_bytes"] < before["weight_bytes"]


def test_size_on_disk(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "x.bin").write_bytes(b"\0" * 1000)
    (tmp_path / "a" / "y.txt").write_bytes(b"hello")
    (tmp_path / "a" / "b" / "z").write_bytes(b"1" * 12345)
    (tmp_path / "a" / "empty").write_bytes(b"")
    assert size_on_disk(tmp_path) == 1000 + 5 + 12345
    assert size_on_disk(tmp_path / "a" / "b" / "z") == 12345
    assert size_on_disk(str(tmp_path / "a")) == 5 + 12345
    with pytest.raises(EvaluationError, match="neither a file nor a folder"):
        size_on_disk(tmp_path / "missing")


def test_size_on_disk_of_a_named_checkpoint(minilm_dir):
    files = [p for p in Path(minilm_dir).rglob("*") if p.is_file() and not p.is_symlink()]
    assert size_on_disk("all-minilm-l6-v2") == sum(p.stat().st_size for p in files) > 80_000_000


class FakeClock:
    """A `time.perf_counter` that moves only when `run_one` says how long its call took."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now, self.durations, self.calls = 100.0, durations_s, []

    def perf_counter(self) -> float:
        return self.now

    def run_one(self, i: int) -> None:
        self.calls.append(i)
        self.now += self.durations[len(self.calls) - 1]


def test_latency_percentiles_are_linear_interpolation(monkeypatch):
    rng = random.Random(3)
    warm = [5.0, 4.0]  # slow warm-up calls that must not count
    timed = [rng.uniform(0.001, 0.050) for _ in range(37)]
    clock = FakeClock(warm + timed)
    monkeypatch.setattr(efficiency.time, "perf_counter", clock.perf_counter)
    out = latency(clock.run_one, n=37, warmup=2)
    assert clock.calls == [0, 1] + list(range(37))
    ms = [d * 1000 for d in timed]
    cuts = statistics.quantiles(ms, n=100, method="inclusive")  # linear interpolation between order statistics
    assert out["p50_ms"] == pytest.approx(statistics.median(ms), rel=1e-9)
    assert out["p50_ms"] == pytest.approx(cuts[49], rel=1e-9)
    assert out["p90_ms"] == pytest.approx(cuts[89], rel=1e-9)
    assert out["p99_ms"] == pytest.approx(cuts[98], rel=1e-9)
    assert out["mean_ms"] == pytest.approx(statistics.fmean(ms), rel=1e-9)
    assert out["total_s"] == pytest.approx(sum(timed), rel=1e-9) and out["n"] == 37


def test_latency_by_hand_on_four_calls(monkeypatch):
    clock = FakeClock([0.010, 0.040, 0.020, 0.030])  # sorted 10 20 30 40 ms
    monkeypatch.setattr(efficiency.time, "perf_counter", clock.perf_counter)
    out = latency(clock.run_one, n=4, warmup=0)
    # rank p/100 * 3: p50 -> 1.5 (between 20 and 30), p90 -> 2.7 (30 + 0.7 * 10), p99 -> 2.97
    assert out["p50_ms"] == pytest.approx(25.0)
    assert out["p90_ms"] == pytest.approx(37.0)
    assert out["p99_ms"] == pytest.approx(39.7)
    clock = FakeClock([0.5, 0.010, 0.040, 0.020, 0.030])
    monkeypatch.setattr(efficiency.time, "perf_counter", clock.perf_counter)
    assert throughput(clock.run_one, n=4, items_per_call=8, warmup=1) == pytest.approx(32 / 0.1)


def test_latency_rejects_bad_counts():
    with pytest.raises(EvaluationError, match="n=0"):
        latency(lambda i: None, 0)
    with pytest.raises(EvaluationError, match="warmup=-1"):
        latency(lambda i: None, 3, warmup=-1)


def _statm_rss_mib() -> float:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


def test_peak_memory_is_the_high_water_mark():
    block = np.ones(48 * 2**20 // 8)  # 48 MiB, touched
    now = _statm_rss_mib()
    peak = peak_memory_mib()
    assert now - 1 <= peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1
    del block
    assert peak_memory_mib() >= peak - 1  # a high-water mark does not go down (the kernel's counts are approximate)


def test_reset_peak_memory_starts_a_new_high_water_mark():
    from lmforge.evaluate.efficiency import reset_peak_memory

    block = np.ones(96 * 2**20 // 8)  # 96 MiB, touched, then freed
    del block
    before = peak_memory_mib()
    if not reset_peak_memory():
        pytest.skip("no /proc/self/clear_refs here")
    after = peak_memory_mib()
    assert after < before - 48 and after >= _statm_rss_mib() - 1


def test_measure_smoke(tmp_path):
    from lmforge.tokenizers import train_tokenizer

    corpus = tmp_path / "c.txt"
    words = "the cat sat on a mat while dog ran far away".split()
    rng = random.Random(0)
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(20)) for _ in range(100)))
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=VOCAB, min_frequency=1, show_progress=False)
    _hf("bert").save_pretrained(tmp_path / "hf")
    model = load_any(tmp_path / "hf", dtype=torch.float32, task="sequence-classification")
    model.train()
    texts = ["the cat sat on a mat", "a dog ran far away while the cat sat", "the mat"]
    out = measure(model, tok, texts, batch_size=2, n=4, warmup=1)
    assert model.training  # mode restored
    assert out["parameters"] == count_parameters(model)["parameters"]
    assert out["batch_size"] == 2 and out["calls"] == 4
    assert 0 < out["p50_ms"] <= out["p90_ms"] <= out["p99_ms"]
    # 4 calls cycle over two batches: texts 0+1, then text 2 with text 0 filling the batch
    lengths = [len(tok.encode(t)) for t in texts]
    tokens = 2 * (lengths[0] + lengths[1]) + 2 * (lengths[2] + lengths[0])
    assert out["tokens_per_s"] / out["examples_per_s"] == pytest.approx(tokens / 8)
    assert out["peak_rss_mib"] > 0 and out["device"] == "cpu" and out["dtype"] == "float32"
    with pytest.raises(EvaluationError, match="batch_size=0"):
        measure(model, tok, texts, batch_size=0)
    with pytest.raises(EvaluationError, match="texts"):
        measure(model, tok, [])


@pytest.mark.parametrize("kind", ["llama", "bart"])
def test_measure_runs_decoders_and_seq2seq(kind, tmp_path):
    from lmforge.tokenizers import train_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(["the cat sat on a mat while the dog ran far away"] * 50))
    tok = train_tokenizer([corpus], kind="bpe", vocab_size=300, special_tokens="llama", show_progress=False)
    del tok.special_tokens["pad"]  # like many decoders' tokenizers: batching pads with the eos token
    assert tok.pad_id is None
    torch.manual_seed(0)
    if kind == "llama":
        hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=48, max_position_embeddings=64))
    else:
        hf = T.BartForConditionalGeneration(T.BartConfig(
            vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64))
    hf.save_pretrained(tmp_path / "hf")
    model = load_any(tmp_path / "hf", dtype=torch.float32)
    texts = ["the cat sat", "a dog ran far away while the cat sat on a mat"]
    out = measure(model, tok, texts, batch_size=2, n=3)
    lengths = sum(len(tok.encode(t)) for t in texts)
    assert out["tokens_per_s"] / out["examples_per_s"] == pytest.approx(lengths / 2)
    # transformers keeps BART's output bias as a buffer (final_logits_bias), lmforge as the LM head's parameter
    extra = hf.final_logits_bias.numel() if kind == "bart" else 0
    assert out["parameters"] == hf.num_parameters() + extra
    assert tok.pad_id is None  # the caller's tokenizer is left as it was
