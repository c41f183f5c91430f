"""`lmforge evaluate` end to end on tiny models: a fine-tuned classifier's run folder (classification, calibration,
robustness, efficiency, interpretability, curves), a decoder on a text file against Kneser-Ney, several models side by
side, and the bad inputs the issue names (an empty file, a label-set mismatch, a model without the needed head)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _sentiment import sentiment_rows as _rows
from _sentiment import write_jsonl as _jsonl

TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT fine-tuned (full) on the sentiment-word task: its run folder, base and data files."""
    from lmforge.adapt import AdaptConfig
    from lmforge.interop import save_pretrained
    from lmforge.models import build_model, get_preset
    from lmforge.tasks import TaskSpec
    from lmforge.tokenizers import train_tokenizer
    from lmforge.train.config import ModelSpec, TaskData, TrainConfig
    from lmforge.train.finetune import run_finetuning

    root = tmp_path_factory.mktemp("eval-job")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in _rows(400, 99)), encoding="utf-8")
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    base = root / "bert"
    save_pretrained(build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **TINY),
                                task="encoder"), base)
    tok.save(base)
    files = {"train": _jsonl(root / "train.jsonl", _rows(192, 1)), "val": _jsonl(root / "val.jsonl", _rows(64, 2)),
             "test": _jsonl(root / "test.jsonl", _rows(48, 3))}
    cfg = TrainConfig(lr=3e-3, batch_size=16, warmup_steps=2, weight_decay=0.0, schedule="constant",
                      best_metric="auto", keep_last=1, log_every=1, progress=False, precision="fp32")
    run_finetuning(TaskData(train=str(files["train"]), val=str(files["val"]), test=str(files["test"])),
                   ModelSpec(checkpoint=str(base)), TaskSpec(name="classification", max_length=32),
                   AdaptConfig(method="full"), cfg, str(root / "run"), epochs=2.0, evals_per_epoch=2, device="cpu")
    return {"run": root / "run", "base": base, **files}


def _settings(**changes):
    from lmforge.evaluate.job import EvalSettings

    return replace(EvalSettings(batch_size=16, latency_examples=4), **changes)


def test_a_finetuned_classifier_run_gets_every_section_and_both_files(finetuned, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    from lmforge.evaluate.job import run_evaluation

    out = tmp_path / "report"
    report = run_evaluation([str(finetuned["run"])], _settings(validation=str(finetuned["val"])), report_dir=str(out))
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["schema"] == "lmforge.report/1" and saved == json.loads(json.dumps(report))
    results = saved["results"]["run"]
    for section in ("classification", "calibration", "robustness", "efficiency", "interpretability", "curves"):
        assert section in results, section
    cls = results["classification"]
    # The run's own test evaluation (the fine-tuning job, another code path) saw the same model and file.
    run_result = json.loads((finetuned["run"] / "result.json").read_text(encoding="utf-8"))
    assert cls["accuracy"] == pytest.approx(run_result["test"]["test_accuracy"], abs=1e-6)
    assert cls["n"] == 48 and sum(map(sum, cls["confusion_matrix"])) == 48
    # The numbers agree with scikit-learn on the report's own confusion matrix unrolled into label lists.
    gold, pred = [], []
    for i, row in enumerate(cls["confusion_matrix"]):
        for j, count in enumerate(row):
            gold += [i] * count
            pred += [j] * count
    assert cls["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert cls["macro"]["f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert 0.0 <= results["calibration"]["ece"] <= 1.0 and results["calibration"]["temperature"] > 0
    robust = results["robustness"]
    assert robust["clean"] == pytest.approx(cls["accuracy"])
    assert {p["name"] for p in robust["perturbations"]} == {"typo", "word_drop", "word_swap", "case", "punctuation"}
    interp = results["interpretability"]
    n = len(interp["tokens"])
    assert len(interp["attention"]["matrix"]) == n and len(interp["saliency"]["scores"]) == n
    assert results["curves"]["validation"], "the run's validation curve"
    assert results["efficiency"]["latency_ms"]["p50"] > 0


def test_a_decoder_on_a_text_file_is_compared_with_kneser_ney(tmp_path):
    from lmforge.evaluate.job import run_evaluation
    from lmforge.interop.native import save_model
    from lmforge.models import CausalLM, get_preset
    from lmforge.tokenizers import train_tokenizer

    text = tmp_path / "text.txt"
    paragraphs = [" ".join(r["text"] for r in _rows(6, seed)) for seed in range(30)]
    text.write_text("\n\n".join(paragraphs), encoding="utf-8")
    tok = train_tokenizer([text], kind="bpe", vocab_size=300, special_tokens="gpt", show_progress=False)
    torch.manual_seed(0)
    folder = tmp_path / "gpt"
    save_model(CausalLM(get_preset("llama-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **TINY)), folder)
    tok.save(folder)
    report = run_evaluation([str(folder), f"{folder}+int8"], _settings(data=str(text), kn_train=str(text),
                                                                       kn_orders=(2, 3)),
                            report_dir=str(tmp_path / "r"), names=["fp32", "int8"])
    for name in ("fp32", "int8"):
        lm = report["results"][name]["lm"]
        assert lm["perplexity"] > 1 and lm["bits_per_byte"] > 0 and lm["tokens"] > 0
        kn = report["results"][name]["kneser_ney"]
        assert set(map(int, kn["orders"])) == {2, 3}
    assert report["results"]["int8"]["lm"]["perplexity"] == pytest.approx(
        report["results"]["fp32"]["lm"]["perplexity"], rel=0.05)
    assert [m["precision"] for m in report["models"]] == ["float32", "int8"]
    assert (tmp_path / "r" / "report.html").read_text(encoding="utf-8").count("<img") >= 1


def test_bad_input_is_a_clear_error(finetuned, tmp_path):
    from lmforge.evaluate.errors import EvaluationError
    from lmforge.evaluate.job import run_evaluation

    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(EvaluationError, match="empty.jsonl.*empty"):
        run_evaluation([str(finetuned["run"])], _settings(data=str(empty), efficiency=False))
    other = _jsonl(tmp_path / "other.jsonl", [{"text": "good film", "label": "pos"}, {"text": "meh", "label": "meh"}])
    with pytest.raises(EvaluationError, match=r"other.jsonl.*meh"):
        run_evaluation([str(finetuned["run"])], _settings(data=str(other), efficiency=False))
    with pytest.raises(EvaluationError, match="needs a sequence-classification model"):
        run_evaluation([str(finetuned["base"])], _settings(task="classification", data=str(finetuned["test"]),
                                                           efficiency=False))
    with pytest.raises(EvaluationError, match="needs a causal-lm model"):
        run_evaluation([str(finetuned["base"])], _settings(task="lm", data=str(finetuned["test"]), efficiency=False))
    with pytest.raises(EvaluationError, match="needs --data"):
        run_evaluation([str(finetuned["base"])], _settings(task="pseudo-lm", efficiency=False))


def test_the_cli_reports_bad_input_in_one_line(finetuned, tmp_path, capsys):
    from lmforge.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(finetuned["run"]), "--data", str(empty)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "empty.jsonl" in err and "Traceback" not in err


def test_a_seq2seq_model_gets_bleu_chrf_rouge_and_its_outputs(tmp_path):
    import random

    from sacrebleu.metrics import BLEU, CHRF
    from tokenizers import AddedToken, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend

    from lmforge.evaluate.job import run_evaluation
    from lmforge.interop.native import save_model
    from lmforge.models import build_model, get_preset
    from lmforge.tokenizers import Tokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    backend = Backend(models.WordLevel({t: i for i, t in enumerate(specials + list("0123456789"))}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = Tokenizer(backend, {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    torch.manual_seed(0)
    model = build_model(get_preset("bart-tiny", vocab_size=14, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                   max_seq_len=32), task="seq2seq-lm")
    save_model(model, tmp_path / "bart")
    tok.save(tmp_path / "bart")
    rng = random.Random(0)
    rows = []
    for _ in range(5):
        digits = [rng.choice("0123456789") for _ in range(rng.randint(3, 6))]
        rows.append({"text": " ".join(digits), "target": " ".join(reversed(digits))})
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    report = run_evaluation([str(tmp_path / "bart")], _settings(data=str(data), task_options={"max_new_tokens": 6}),
                            report_dir=str(tmp_path / "r"))
    gen = report["results"]["bart"]["generation"]
    assert gen["n"] == 5 and len(gen["samples"]) == 5
    outputs = [s["prediction"] for s in gen["samples"]]
    assert [s["reference"] for s in gen["samples"]] == [r["target"] for r in rows]
    assert gen["bleu"] == pytest.approx(BLEU().corpus_score(outputs, [[r["target"] for r in rows]]).score)
    assert gen["chrf"] == pytest.approx(CHRF().corpus_score(outputs, [[r["target"] for r in rows]]).score)
    assert {"rouge1", "rouge2", "rougeL", "exact_match"} <= set(gen)
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "first outputs" in page and all(r["target"] in page for r in rows)
