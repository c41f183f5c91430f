"""Optimizer groups, schedules, precision choice, NaN handling, checkpoints and configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny import TINY_MODEL

from lmforge.data import TokenDataset
from lmforge.models import build_model, get_preset
from lmforge.train import DataSpec, ModelSpec, TrainConfig, TrainingError, run_pretraining, train
from lmforge.train import checkpoint as ckpt
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import CausalLMObjective
from lmforge.train.optim import lr_factor, param_groups
from lmforge.train.precision import resolve_precision


def test_weight_decay_skips_norms_biases_embeddings():
    model = build_model(get_preset("gpt2-tiny", vocab_size=50, **TINY_MODEL))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("proj.weight") for n in decayed)
    assert "body.tokens.weight" in {names[id(p)] for p in no_decay["params"]}  # tied head counted once
    assert not any("norm" in n or n.endswith(".bias") for n in decayed)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_parameters()


def test_lr_schedules_by_hand():
    kw = dict(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, **kw) == pytest.approx(0.1)
    assert lr_factor(60, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(60, schedule="constant", **kw) == 1.0


def test_precision_defaults_to_fp32_without_native_bf16(monkeypatch):
    from lmforge.train import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


class NaNObjective(CausalLMObjective):
    """A task whose loss turns NaN from the 4th call on."""

    calls = 0

    def loss(self, model, batch, device):
        loss, extra = super().loss(model, batch, device)
        self.calls += 1
        return (loss * float("nan") if self.calls > 3 else loss), extra


def test_nan_steps_are_skipped_then_stop_with_a_clear_error(tiny_data, tmp_path):
    data, tok = tiny_data
    ds, val = TokenDataset(data, "train"), TokenDataset(data, "val")
    model = build_model(get_preset("llama-tiny", vocab_size=ds.vocab_size, **TINY_MODEL))
    before = None
    cfg = TrainConfig(steps=20, batch_size=4, seq_len=16, max_bad_steps=3, progress=False, eval_every=100,
                      checkpoint_every=100, warmup_steps=0)
    with pytest.raises(TrainingError, match="NaN/Inf for 3 steps in a row"):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        train(model, NaNObjective(), ds, val, cfg, tmp_path, DistEnv())
    # The three good steps changed the weights; NaN never reached them.
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_checkpoint_of_another_shape_is_refused(tiny_data, tmp_path):
    data, tok = tiny_data
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=16, progress=False, checkpoint_every=2, eval_every=2)
    run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", TINY_MODEL), "clm", cfg,
                    str(tmp_path), export=False)
    other = {**TINY_MODEL, "n_layers": 3}
    from lmforge.interop import CheckpointError

    with pytest.raises(CheckpointError, match="another model shape.*n_layers"):
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", other), "clm",
                        TrainConfig(steps=4, batch_size=4, seq_len=16, progress=False), str(tmp_path),
                        resume=True, export=False)


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    (tmp_path / ".step-0000040.tmp").mkdir()  # a crash mid-write leaves only this
    (tmp_path / "step-0000030").mkdir()
    (tmp_path / "step-0000030" / "state.json").write_text("{}")
    (tmp_path / "step-0000050").mkdir()  # no state.json: incomplete
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000030"


def test_run_writes_resolved_config_metrics_and_hf_export(tiny_data, tmp_path):
    import transformers as T
    import yaml

    data, tok = tiny_data
    cfg = TrainConfig(steps=6, batch_size=4, seq_len=16, progress=False, eval_every=3, checkpoint_every=3,
                      log_every=2, sample_prompts=["the "])
    result = run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", TINY_MODEL), "clm", cfg,
                             str(tmp_path))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["steps"] == 6 and saved["model"]["overrides"]["n_layers"] == 2
    facts = json.loads((tmp_path / "run.json").read_text())
    assert facts["model_config"]["vocab_size"] == TokenDataset(data, "train").vocab_size
    from lmforge.train.metrics import read_metrics

    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]), rel=1e-3)
    assert (tmp_path / "tensorboard").is_dir()
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    hf_tok = T.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.config.vocab_size == len(hf_tok)
    assert result["samples"]["the "].startswith("the ")


def test_activation_checkpointing_gives_the_same_losses(tiny_data, tmp_path):
    from lmforge.train.metrics import read_metrics

    data, _ = tiny_data
    ds, val = TokenDataset(data, "train"), TokenDataset(data, "val")
    losses = []
    for i, on in enumerate((False, True)):
        torch.manual_seed(0)
        model = build_model(get_preset("llama-tiny", vocab_size=ds.vocab_size, **TINY_MODEL))
        cfg = TrainConfig(steps=3, batch_size=4, seq_len=16, progress=False, eval_every=100, checkpoint_every=100,
                          log_every=1, activation_checkpointing=on, precision="fp32")
        train(model, CausalLMObjective(), ds, val, cfg, tmp_path / str(i), DistEnv())
        losses.append([r["loss"] for r in read_metrics(tmp_path / str(i) / "metrics.jsonl") if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
