"""The fine-tuning job end to end on a tiny "pretrained" BERT: training with LoRA through the real trainer,
keep-best and early stopping on the task metric, the written folders, exact resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from _sentiment import sentiment_rows as _rows
from _sentiment import write_jsonl as _jsonl

TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}


@pytest.fixture(scope="module")
def random_base(tmp_path_factory) -> Path:
    """A tiny BERT in Hugging Face format with its WordPiece tokenizer: the "pretrained" checkpoint."""
    from lmforge.interop import save_pretrained
    from lmforge.models import build_model, get_preset
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("ft")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in _rows(400, 99)), encoding="utf-8")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    model = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **TINY),
                        task="encoder")
    folder = root / "bert"
    save_pretrained(model, folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(random_base, tmp_path_factory) -> Path:
    """The tiny BERT after full fine-tuning on other rows of the task, saved as a bare encoder (no head): a body
    whose features carry the signal, as a pretrained one's would (a random body's do not, for a frozen-body method)."""
    from lmforge.interop import save_pretrained
    from lmforge.interop.native import load_model
    from lmforge.models import EncoderModel
    from lmforge.tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("ft-pre")
    other = {"train": _jsonl(root / "train.jsonl", _rows(192, 11)), "val": _jsonl(root / "val.jsonl", _rows(64, 12)),
             "test": _jsonl(root / "test.jsonl", _rows(32, 13))}
    _run(random_base, other, root / "run", method="full", train=_train_cfg(lr=3e-3))
    tuned = load_model(root / "run" / "model")
    encoder = EncoderModel(tuned.cfg)
    encoder.load_state_dict({k: v for k, v in tuned.state_dict().items() if not k.startswith("head.")})
    save_pretrained(encoder, root / "bert")
    Tokenizer.from_pretrained(random_base).save(root / "bert")
    return root / "bert"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft-data")
    return {"train": _jsonl(root / "train.jsonl", _rows(192, 1)), "val": _jsonl(root / "val.jsonl", _rows(64, 2)),
            "test": _jsonl(root / "test.jsonl", _rows(64, 3))}


def _train_cfg(**changes):
    from lmforge.train.config import TrainConfig

    cfg = TrainConfig(lr=3e-3, batch_size=16, warmup_steps=2, weight_decay=0.0, schedule="constant",
                      best_metric="auto", keep_last=1, log_every=1, progress=False, precision="fp32")
    return replace(cfg, **changes)


def _run(base, files, out, method="lora", epochs=3.0, train=None, **adapt):
    from lmforge.adapt import AdaptConfig
    from lmforge.tasks import TaskSpec
    from lmforge.train.config import ModelSpec, TaskData
    from lmforge.train.finetune import run_finetuning

    data = TaskData(train=str(files["train"]), val=str(files["val"]), test=str(files["test"]))
    return run_finetuning(data, ModelSpec(checkpoint=str(base)), TaskSpec(name="classification", max_length=32),
                          AdaptConfig(method=method, **adapt), train or _train_cfg(), str(out), epochs=epochs,
                          device="cpu")


def test_full_finetuning_learns_from_a_random_body(random_base, files, tmp_path):
    result = _run(random_base, files, tmp_path / "run", method="full")
    assert result["best_val"]["val_accuracy"] >= 0.9 and result["test"]["test_accuracy"] >= 0.85, result
    assert result["trainable_parameters"] == result["total_parameters"]


def test_lora_learns_and_writes_its_folders(pretrained, files, tmp_path):
    base = pretrained
    from lmforge.adapt import load_adapter, read_adapter_meta
    from lmforge.interop import load_any
    from lmforge.interop.native import load_model

    out = tmp_path / "run"
    result = _run(base, files, out, r=4, alpha=8, target_modules=["*q_proj", "*v_proj", "*ffn.*_proj"])
    assert result["best_val"]["val_accuracy"] >= 0.9, result
    assert result["test"]["test_accuracy"] >= 0.85, result
    assert 0 < result["trainable_parameters"] < result["total_parameters"] / 2
    # The model folder is the best checkpoint's adapted model; the adapter folder applies to the base.
    model = load_model(out / "model")
    assert model.adaptation.method == "lora" and model.cfg.labels == ["neg", "pos"]
    fresh = load_any(base, task="sequence-classification", overrides={"num_labels": 2})
    load_adapter(fresh, out / "adapter")
    ids = torch.randint(5, 100, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids), model.eval()(ids), rtol=0, atol=0)
    meta = read_adapter_meta(out / "adapter")
    assert meta["method"]["method"] == "lora" and meta["id2label"] == ["neg", "pos"]
    # LoRA is also written in PEFT's layout, and merged into a Hugging Face folder.
    assert (out / "peft" / "adapter_config.json").is_file() and (out / "hf" / "config.json").is_file()
    # Checkpoints hold the trainable tensors only, against the base's digest.
    ckpt = json.loads((out / result["best_checkpoint"] / "model" / "lmforge.json").read_text())
    assert ckpt["tensors"] == "trainable" and ckpt["adaptation"]["method"] == "lora"


def test_a_qlora_checkpoint_holds_the_adapter_only_and_loads_back(pretrained, files, tmp_path):
    from lmforge.compress.quantize import QuantLinear
    from lmforge.interop.native import load_model

    out = tmp_path / "run"
    result = _run(pretrained, files, out, method="qlora", epochs=1.0, quantize="int8", r=4)
    ckpt = out / result["best_checkpoint"] / "model"
    meta = json.loads((ckpt / "lmforge.json").read_text())
    assert meta["tensors"] == "trainable" and meta["adaptation"]["method"] == "qlora" and "quantization" in meta
    # The delta's base is quantized again on loading (deterministically): the same model as the full save.
    delta, whole = load_model(ckpt), load_model(out / "model")
    assert isinstance(delta.body.encoder.blocks[0].attn.q_proj, QuantLinear)
    ids = torch.randint(5, 100, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(delta(ids), whole(ids), rtol=0, atol=0)


def test_parameters_the_base_lacks_train_and_are_checkpointed(random_base, files, tmp_path):
    """A masked-LM export has no pooler: the classifier's pooler is new, so it trains (and is stored) with every
    method, and a trainable-only checkpoint reloads to the very model that was evaluated."""
    from lmforge.interop import load_any, save_pretrained
    from lmforge.interop.native import load_model
    from lmforge.tokenizers import Tokenizer

    masked = tmp_path / "mlm"
    save_pretrained(load_any(random_base, task="masked-lm", overrides={"pooler": False}), masked)  # as MLM pretraining
    Tokenizer.from_pretrained(random_base).save(masked)
    assert "pooler.dense.weight" in load_any(masked, task="sequence-classification").newly_initialised
    out = tmp_path / "run"
    result = _run(masked, files, out, method="head", epochs=1.0)
    delta = load_model(out / result["best_checkpoint"] / "model")
    assert {"pooler.dense.weight", "head.proj.weight"} <= {n for n, p in delta.named_parameters() if p.requires_grad}
    ids = torch.randint(5, 100, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(delta(ids), load_model(out / "model")(ids), rtol=0, atol=0)


def test_early_stopping_keeps_the_best_checkpoint(pretrained, files, tmp_path):
    base = pretrained
    out = tmp_path / "run"
    # A learning rate too small to change any prediction: the metric never improves after the first evaluation.
    result = _run(base, files, out, method="head", epochs=6.0,
                  train=_train_cfg(lr=1e-12, early_stopping_patience=2, keep_last=1))
    per_epoch = 192 // 16
    assert result["step"] == 3 * per_epoch  # evaluations at epochs 1, 2, 3: two without improvement
    assert result["best_checkpoint"] == f"step-{per_epoch:07d}"
    kept = sorted(p.name for p in out.glob("step-*"))
    assert kept == [f"step-{per_epoch:07d}", f"step-{3 * per_epoch:07d}"]  # the best and the last


def test_bad_input_is_a_clear_error(pretrained, files, tmp_path):
    base = pretrained
    from lmforge.adapt import AdaptError
    from lmforge.data.errors import DataError

    with pytest.raises(AdaptError, match="'\\*nope' match no Linear"):
        _run(base, files, tmp_path / "a", target_modules=["*nope"])
    with pytest.raises(AdaptError, match="unknown adaptation method 'lorax'"):
        _run(base, files, tmp_path / "b", method="lorax")
    val = tmp_path / "val.jsonl"
    _jsonl(val, [{"text": "good film", "label": "pos"}, {"text": "odd film", "label": "meh"}])
    with pytest.raises(DataError, match=f"{val}:2.*'meh' was not seen in the training data"):
        _run(base, {**files, "val": val}, tmp_path / "c")
    missing = tmp_path / "train.jsonl"
    _jsonl(missing, [{"text": "good film", "label": "pos"}, {"sentence": "bad film", "label": "neg"}])
    with pytest.raises(DataError, match=f"{missing}:2, column 'text': missing"):
        _run(base, {**files, "train": missing}, tmp_path / "d")


def test_an_adapter_refuses_another_base(pretrained, files, tmp_path):
    base = pretrained
    from lmforge.adapt import AdaptError, load_adapter
    from lmforge.interop import load_any

    out = tmp_path / "run"
    _run(base, files, out, method="bitfit", epochs=1.0)
    other = load_any(base, task="sequence-classification", overrides={"num_labels": 2})
    with torch.no_grad():
        other.body.encoder.blocks[0].attn.q_proj.weight.add_(1e-3)
    with pytest.raises(AdaptError, match="trained on another base model"):
        load_adapter(other, out / "adapter")


def test_cli_rejects_an_unknown_method(pretrained, files, tmp_path):
    base = pretrained
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "finetune", "--model", str(base), "--method", "lorax",
                           "--data.train", str(files["train"]), "--data.val", str(files["val"])],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "lorax" in proc.stderr and "lora" in proc.stderr and "Traceback" not in proc.stderr


def _losses(run: Path) -> dict[int, float]:
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses[rec["step"]] = rec["loss"]
    return losses


@pytest.mark.slow
def test_a_lora_run_killed_with_sigkill_resumes_exactly(pretrained, files, tmp_path):
    base = pretrained
    def config(run: Path) -> Path:
        cfg = {"model": str(base), "task": "classification", "method": "lora",
               "data": {"train": str(files["train"]), "val": str(files["val"])},
               "task_options": {"max_length": 32}, "adapt": {"r": 4, "dropout": 0.1},  # dropout: RNG matters
               "train": {"lr": 3e-3, "batch_size": 8, "warmup_steps": 2, "log_every": 1, "progress": False,
                         "precision": "fp32", "keep_last": 2},
               "epochs": 2.0, "evals_per_epoch": 4, "model_overrides": {"dropout": 0.1}, "out_dir": str(run)}
        path = tmp_path / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lmforge.cli", "finetune", "--config"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(cmd + [str(config(whole))], check=True, env=env, capture_output=True)
    steps = max(_losses(whole))
    assert steps == 2 * (192 // 8)
    proc = subprocess.Popen(cmd + [str(config(broken))], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "step-0000012").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(broken)) < steps, "the run finished before the kill"
    subprocess.run(cmd[:-1] + ["--out_dir", str(broken), "--resume", "true"], check=True, env=env,
                   capture_output=True)
    expected, got = _losses(whole), _losses(broken)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(12, steps + 1):
        assert got[step] == expected[step], f"step {step}: {got[step]} != {expected[step]}"
