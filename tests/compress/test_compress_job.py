"""`lmforge prune` end to end on a tiny classifier (the checkpoint it writes, reloaded), recovery through `lmforge
finetune --prune.*` with the masks kept, and bad input answered in one line naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _sentiment import sentiment_rows as _rows
from _sentiment import write_jsonl as _jsonl

TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny BERT sentiment classifier (random weights, labels neg/pos) in lmforge's format with its tokenizer."""
    from lmforge.interop.native import save_model
    from lmforge.models import build_model, get_preset
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("prune-job")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in _rows(300, 7)), encoding="utf-8")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    cfg = get_preset("bert-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, labels=["neg", "pos"], **TINY)
    model = build_model(cfg, task="sequence-classification")
    save_model(model, root / "model")
    tok.save(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prune-data")
    return {"train": _jsonl(root / "train.jsonl", _rows(96, 1)), "val": _jsonl(root / "val.jsonl", _rows(32, 2))}


def _inputs(folder: Path) -> dict:
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(folder)
    return tok([r["text"] for r in _rows(8, 5)], padding=True, truncation=True, max_length=64)


def _zeros(model) -> dict[str, torch.Tensor]:
    return {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".blocks." in n}


def test_magnitude_prune_writes_a_checkpoint_with_exactly_that_sparsity_per_layer(classifier, tmp_path):
    from lmforge.compress.job import run_prune
    from lmforge.interop.native import load_model

    result = run_prune(str(classifier), str(tmp_path / "p"), method="magnitude", sparsity=0.4, scope="layer")
    pruned = load_model(tmp_path / "p").eval()
    for name, zero in _zeros(pruned).items():
        assert int(zero.sum()) == round(0.4 * zero.numel()), name
    original = load_model(classifier)
    for name, module in original.named_modules():  # the zeros are the smallest |w| of each layer
        if name in _zeros(pruned):
            w = module.weight.abs().flatten()
            kept = dict(pruned.named_modules())[name].weight.flatten() != 0
            assert w[~kept].max() <= w[kept].min()
    assert result["measured"]["sparsity"] == pytest.approx(0.4, abs=1e-3)  # each layer rounds its own count
    assert json.loads((tmp_path / "p" / "pruning.json").read_text())["method"] == "magnitude"
    assert (tmp_path / "p" / "tokenizer.json").is_file()


def test_structured_prune_with_taylor_importance_shrinks_the_checkpoint_and_reloads(classifier, files, tmp_path):
    from lmforge.compress.job import run_prune
    from lmforge.interop.native import load_model

    run_prune(str(classifier), str(tmp_path / "s"), method="structured", heads=0.5, ffn=0.5, importance="taylor",
              data=str(files["train"]), batches=2, batch_size=8, multiple_of=8, scope="layer")
    pruned = load_model(tmp_path / "s").eval()
    assert pruned.cfg.layer_n_heads == [2, 2] and pruned.cfg.layer_d_ff == [64, 64]
    assert pruned.body.encoder.blocks[0].ffn.up_proj.weight.shape == (64, 64)
    size = lambda folder: (folder / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "s") < size(classifier)
    with torch.no_grad():
        out = pruned(**_inputs(classifier))
    assert out.shape == (8, 2) and torch.isfinite(out).all()


def test_recovery_fine_tuning_keeps_the_pruned_weights_at_zero(classifier, files, tmp_path):
    from lmforge.adapt import AdaptConfig
    from lmforge.compress.config import PruneConfig
    from lmforge.compress.job import run_prune
    from lmforge.interop.native import load_model
    from lmforge.tasks import TaskSpec
    from lmforge.train.config import ModelSpec, TaskData, TrainConfig
    from lmforge.train.finetune import run_finetuning

    run_prune(str(classifier), str(tmp_path / "p"), method="magnitude", sparsity=0.5, scope="global")
    before = _zeros(load_model(tmp_path / "p"))
    train = TrainConfig(lr=3e-3, batch_size=16, warmup_steps=0, weight_decay=0.0, schedule="constant",
                        best_metric="auto", keep_last=1, log_every=1, progress=False, precision="fp32")
    result = run_finetuning(TaskData(train=str(files["train"]), val=str(files["val"])),
                            ModelSpec(checkpoint=str(tmp_path / "p")), TaskSpec(name="classification", max_length=64),
                            AdaptConfig(method="full"), train, str(tmp_path / "run"), epochs=1.0,
                            prune=PruneConfig(method="magnitude", sparsity=0.5, scope="global"))
    after = load_model(tmp_path / "run" / "model")
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-6)
    original = load_model(tmp_path / "p")
    moved = False
    for name, zero in _zeros(after).items():
        assert torch.equal(zero, before[name]), name  # the same weights stay pruned
        w0, w1 = dict(original.named_modules())[name].weight, dict(after.named_modules())[name].weight
        moved |= not torch.equal(w0, w1)
    assert moved  # and the others trained


def _cli(capsys, *args: str) -> tuple[int, str]:
    """lmforge.cli.main(args) in this process -> (exit status, stderr)."""
    from lmforge import cli

    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "sparsity=1.0 must be in [0, 1)"),
    (["--method", "structured"], "--method structured needs --heads and/or --ffn"),
    (["--method", "structured", "--heads", "0.3", "--importance", "taylor"], "--importance taylor needs --data"),
    (["--method", "structured", "--heads", "1.0"], "heads"),
])
def test_bad_pruning_requests_are_one_line_errors(classifier, tmp_path, capsys, args, message):
    code, err = _cli(capsys, "prune", str(classifier), "--out", str(tmp_path / "x"), *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_label_the_model_does_not_know_names_the_file_and_line(classifier, tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "fine", "label": "neg"}, {"text": "meh", "label": "neutral"}])
    code, err = _cli(capsys, "prune", str(classifier), "--out", str(tmp_path / "x"), "--method", "structured",
                     "--heads", "0.5", "--importance", "taylor", "--data", str(bad))
    assert code == 2 and f"{bad}:2" in err and "neutral" in err, err


def test_more_heads_than_a_layer_has_is_refused(classifier):
    from lmforge.compress.config import PruneError
    from lmforge.compress.structured import prune_heads
    from lmforge.interop.native import load_model

    model = load_model(classifier)
    with pytest.raises(PruneError, match="layer 0"):
        prune_heads(model, {0: [0, 1, 2, 3, 4]})





def test_distill_a_classifier_through_the_fine_tuning_job(classifier, files, tmp_path, capsys):
    """`lmforge distill --task classification`: the run's model/ is the student (every other teacher layer, its
    own checkpoint without the teacher), and its test accuracy is the one result.json reports."""
    from lmforge.interop.native import load_model

    code, err = _cli(capsys, "distill", str(classifier), "--task", "classification",
                     "--data.train", str(files["train"]), "--data.val", str(files["val"]), "--data.test",
                     str(files["val"]), "--task_options.max_length", "64", "--epochs", "1",
                     "--train.batch_size", "16", "--train.precision", "fp32", "--train.progress", "false",
                     "--out_dir", str(tmp_path / "run"))
    assert code == 0, err
    student = load_model(tmp_path / "run" / "model")
    assert type(student).__name__ == "SequenceClassifier" and student.cfg.n_layers == 1
    teacher = load_model(classifier)
    assert student.cfg.labels == teacher.cfg.labels == ["neg", "pos"]
    # every other layer: the student's only block started as the teacher's block 0 (training moved it since)
    assert student.body.encoder.blocks[0].attn.q_proj.weight.shape == teacher.body.encoder.blocks[0].attn.q_proj.weight.shape
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert set(result["test"]) >= {"test_accuracy"} and 0.0 <= result["test"]["test_accuracy"] <= 1.0
    saved = (tmp_path / "run" / "model" / "model.safetensors").stat().st_size
    assert saved < (classifier / "model.safetensors").stat().st_size  # student-sized: no teacher inside


def test_a_student_with_another_vocabulary_is_refused(classifier):
    from lmforge.compress.config import DistillError
    from lmforge.compress.distill import distillation_pair
    from lmforge.interop.native import load_model
    from lmforge.models import build_model

    teacher = load_model(classifier)
    student = build_model(teacher.cfg.replace(vocab_size=teacher.cfg.vocab_size + 1, n_layers=1),
                          task="sequence-classification")
    with pytest.raises(DistillError, match="vocab_size"):
        distillation_pair(teacher, student=student)


def test_the_evaluation_report_names_pruned_and_quantized_checkpoints(classifier, files, tmp_path):
    from lmforge.compress.job import run_prune
    from lmforge.compress.quantize import QuantConfig, quantize_model
    from lmforge.evaluate.job import EvalSettings, run_evaluation
    from lmforge.interop.native import load_model, save_model

    run_prune(str(classifier), str(tmp_path / "p"), method="magnitude", sparsity=0.5)
    quantized = load_model(classifier)
    quantize_model(quantized, QuantConfig("int8"))
    save_model(quantized, tmp_path / "q")
    (tmp_path / "q" / "tokenizer.json").write_bytes((classifier / "tokenizer.json").read_bytes())
    report = run_evaluation([str(classifier), str(tmp_path / "p"), str(tmp_path / "q")],
                            EvalSettings(task="classification", data=str(files["val"]), efficiency=False,
                                         perturbations=("typo",)), names=["dense", "pruned", "int8"])
    assert [m["precision"] for m in report["models"]] == ["float32", "float32", "int8"]
    assert [m.get("pruning", {}).get("method") for m in report["models"]] == [None, "magnitude", None]
    from lmforge.evaluate.html import render_html

    assert "pruned (magnitude, 50% sparse)" in render_html(report)
