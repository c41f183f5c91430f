"""Precision `auto` follows the CPU probe both ways; runs say which precision ran; MFU uses that dtype's peak."""

from __future__ import annotations

import pytest
import torch
from _tiny import TINY_MODEL

from lmforge.data import TokenDataset
from lmforge.models import build_model, get_preset
from lmforge.train import TrainConfig, precision, train
from lmforge.train import loop as loop_module
from lmforge.train.distributed import DistEnv
from lmforge.train.metrics import read_metrics
from lmforge.train.objective import CausalLMObjective

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_probe(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", CPU) == expected
    assert precision.describe_precision("auto", CPU).startswith(f"{expected} (auto: ")
    for explicit in ("fp32", "bf16"):  # an explicit choice is never changed by the probe
        assert precision.resolve_precision(explicit, CPU) == explicit


def test_explicit_bf16_without_native_support_is_flagged(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert "emulated" in precision.describe_precision("bf16", CPU)
    assert "emulated" not in precision.describe_precision("fp32", CPU)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_a_run_logs_the_precision_that_ran_and_its_mfu_against_that_peak(tiny_data, tmp_path, monkeypatch,
                                                                          capsys, native, expected):
    data, _ = tiny_data
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    peaks = {"fp32": 1e11, "bf16": 4e11}  # distinct fake peaks: which one divided the FLOP rate shows in the MFU
    asked = []
    monkeypatch.setattr(loop_module, "matmul_peak_flops", lambda device, prec: asked.append(prec) or peaks[prec])
    ds, val = TokenDataset(data, "train"), TokenDataset(data, "val")
    model = build_model(get_preset("llama-tiny", vocab_size=ds.vocab_size, **TINY_MODEL))
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=16, progress=False, eval_every=2, checkpoint_every=2,
                      log_every=1, warmup_steps=0)
    result = train(model, CausalLMObjective(), ds, val, cfg, tmp_path, DistEnv())
    assert asked == [expected] and result["precision"] == expected
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    flops = model.flops_per_token(16, training=True)
    for r in records:
        assert r["precision"] == expected
        assert r["mfu"] == pytest.approx(r["tok_per_s"] * flops / peaks[expected], rel=1e-2, abs=1e-4)
    printed = capsys.readouterr().out
    assert f"precision {expected} (auto: " in printed  # the start line says which precision and why
    assert "step 2: val_loss" in printed and "done: step 2" in printed  # even with progress off
