"""report.json (schema "lmforge.report/1": round trip, validation by JSON path, atomic writes, run curves) and
report.html (every section present once, absent ones left out, images that decode, escaped text, no network)."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lmforge.evaluate import report as R
from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.html import render_html, write_html

ALL_SECTIONS = ["summary", "curves", "language-modelling", "classification", "tagging", "qa", "generation",
                "multiple-choice", "lm-eval", "robustness", "calibration", "efficiency", "interpretability"]
LABELS = ("negative", "neutral", "positive")


# ------------------------------------------------------------------------------------------------- fixtures

def _classification(rng: np.random.Generator, skill: float, n: int = 240) -> tuple[dict, np.ndarray, np.ndarray]:
    """A classification section computed by scikit-learn from seeded predictions; also (probs, gold)."""
    gold = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), gold] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    section = {"accuracy": float(accuracy_score(gold, pred)), "labels": list(LABELS), "n": n}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=[0, 1, 2], average=average,
                                                     zero_division=0)
        section[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=[0, 1, 2], zero_division=0)
    section["per_class"] = [{"label": LABELS[c], "precision": float(p[c]), "recall": float(r[c]),
                             "f1": float(f[c]), "support": int(s[c])} for c in range(3)]
    section["confusion_matrix"] = confusion_matrix(gold, pred, labels=[0, 1, 2]).tolist()
    return section, probs, gold


def _bins(probs: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> tuple[float, float, list[dict]]:
    """ECE, MCE and equal-width bins of top-label confidence, by hand."""
    confidence, correct = probs.max(1), (probs.argmax(1) == gold).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        members = (confidence > edges[b]) & (confidence <= edges[b + 1])
        entry = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(members.sum()), "confidence": None,
                 "accuracy": None}
        if members.any():
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(correct[members].mean())
            gap = abs(entry["accuracy"] - entry["confidence"])
            ece, mce = ece + members.mean() * gap, max(mce, gap)
        bins.append(entry)
    return float(ece), float(mce), bins


def _curves(rng: np.random.Generator, final: float) -> dict:
    steps = np.arange(10, 310, 10)
    train = final + 1.6 * np.exp(-steps / 80) + rng.normal(0, 0.03, len(steps))
    val_steps = steps[::5]
    return {"run": "runs/sentiment/run", "train": [[int(s), float(v)] for s, v in zip(steps, train)],
            "validation": [[int(s), float(final + 0.05 + 1.5 * np.exp(-s / 80))] for s in val_steps],
            "metrics": {"val_accuracy": [[int(s), float(1 - final / 4 - 0.5 * np.exp(-s / 90))]
                                         for s in val_steps],
                        "val_macro_f1": [[int(s), float(0.98 - final / 4 - 0.55 * np.exp(-s / 90))]
                                         for s in val_steps],
                        "val_ppl": [[int(s), float(math.exp(final + 0.05 + 1.5 * np.exp(-s / 80)))]
                                    for s in val_steps]}}


def _interpretability(rng: np.random.Generator) -> dict:
    tokens = ["[CLS]", "the", "film", "costs", "$5", "and", "is", "<script>", "好", "看", "!", "[SEP]"]
    scores = rng.normal(0, 0.4, len(tokens))
    logits = rng.normal(0, 1.5, (len(tokens), len(tokens)))
    attention = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"text": "the film costs $5 and is <script> 好看!", "tokens": tokens,
            "attention": {"layer": 5, "head": "mean", "matrix": attention.round(5).tolist()},
            "saliency": {"scores": [float(s) for s in scores], "target_name": "positive"}}


def full_report() -> dict:
    """A three-model report (base / LoRA / full fine-tuning of a sentiment encoder) with every section."""
    rng = np.random.default_rng(17)
    report = R.new_report("MiniLM sentiment: head-only vs LoRA vs full")
    models = (("base", 0.9, 90_866_412, "float32"), ("lora", 1.8, 91_012_300, "float32"),
              ("full", 2.4, 22_922_001, "int8"))
    for name, skill, size, precision in models:
        cls, probs, gold = _classification(rng, skill)
        if name == "base":  # two of three classes scored as binary would be wrong; give the ROC-AUC of one-vs-rest
            cls["roc_auc"] = float(roc_auc_score(gold == 2, probs[:, 2]))
            cls["pr_auc"] = float(average_precision_score(gold == 2, probs[:, 2]))
        ece, mce, bins = _bins(probs, gold)
        scaled = probs ** (1 / 1.6) / (probs ** (1 / 1.6)).sum(1, keepdims=True)
        ece_after, _, bins_after = _bins(scaled, gold)
        clean = cls["accuracy"]
        perturbations = [{"name": kind, "score": clean - drop, "drop": drop}
                         for kind, drop in (("typo", 0.04 * 3 / skill), ("word_drop", 0.03), ("word_swap", 0.015),
                                            ("case", 0.002), ("punctuation", 0.0))]
        ppl = 18.4 / skill
        efficiency = {"parameters": 22_713_216 if name != "lora" else 22_860_672, "size_bytes": size,
                      "peak_rss_mib": 812.5 + 40 * skill, "batch_size": 1}
        latency = {"p50": 4.1 * skill, "p90": 4.9 * skill, "p99": 6.3 * skill, "mean": 4.4 * skill}
        throughput = {"examples_per_s": 1000 / latency["mean"], "tokens_per_s": 31_000 / latency["mean"]}
        if name == "full":  # the flat form efficiency.measure returns
            efficiency.update({f"{k}_ms": v for k, v in latency.items()}, **throughput)
        else:
            efficiency.update(latency_ms=latency, throughput=throughput)
        results = {
            "lm": {"perplexity": ppl, "nll": math.log(ppl), "bits_per_byte": math.log2(ppl) / 4.2,
                   "tokens": 81_920, "bytes": 344_064, "max_len": 512, "stride": 256,
                   "data": "data/wiki.test.txt"},
            "pseudo_lm": {"pseudo_perplexity": ppl * 0.6, "tokens": 20_480},
            "kneser_ney": {"orders": {"2": 61.2, "3": 48.7, "4": 49.9}, "best_order": 3, "perplexity": 48.7},
            "classification": cls,
            "tagging": {"mode": "strict", "precision": 0.61 * skill / 2, "recall": 0.58 * skill / 2,
                        "f1": 0.595 * skill / 2, "macro_f1": 0.55 * skill / 2, "token_accuracy": 0.91,
                        "per_type": [{"type": t, "precision": 0.7, "recall": 0.6, "f1": 0.646, "support": s}
                                     for t, s in (("PER", 120), ("LOC", 96), ("ORG", 77))]},
            "qa": {"exact_match": 31.0 * skill, "f1": 40.5 * skill, "n": 500},
            "generation": {"bleu": 11.2 * skill, "chrf": 30.4 * skill, "rouge1": 0.21 * skill,
                           "rouge2": 0.07 * skill, "rougeL": 0.19 * skill, "exact_match": 0.01 * skill, "n": 200},
            "multiple_choice": {"acc": 0.30 + 0.1 * skill, "acc_norm": 0.32 + 0.1 * skill, "n": 100,
                                "num_fewshot": 2, "source": "lm-eval"},
            "lm_eval": {"arc_easy_local": {"acc,none": 0.35 + 0.1 * skill, "acc_norm,none": 0.36 + 0.1 * skill},
                        "wikitext_local": {"word_perplexity,none": 80.0 / skill}},
            "robustness": {"metric": "accuracy", "clean": clean, "rate": 0.1, "seed": 0,
                           "perturbations": perturbations},
            "calibration": {"ece": ece, "mce": mce, "n_bins": 10, "bins": bins, "temperature": 1.6,
                            "ece_after": ece_after, "bins_after": bins_after},
            "efficiency": efficiency,
            "interpretability": _interpretability(rng),
            "curves": _curves(rng, 0.35 * 3 / skill),
        }
        R.add_model(report, name, {"path": f"runs/sentiment-{name}/hf", "task": "sequence-classification",
                                   "kind": "encoder", "precision": precision, "parameters": 22_713_216}, results)
    return report


def small_report() -> dict:
    """One classifier with its per-class scores and an explained input: the sections text from the data reaches."""
    rng = np.random.default_rng(3)
    report = R.new_report("one classifier")
    R.add_model(report, "m", {"task": "sequence-classification"},
                {"classification": _classification(rng, 1.5)[0], "interpretability": _interpretability(rng)})
    return report


def lm_only_report() -> dict:
    """One decoder with language-model scores and the Kneser-Ney baseline only."""
    report = R.new_report("demo checkpoint")
    R.add_model(report, "demo", {"kind": "decoder", "precision": "bfloat16"},
                {"lm": {"perplexity": 743.6, "tokens": 16_384},
                 "kneser_ney": {"perplexity": 912.3, "best_order": 3}})
    return report


# --------------------------------------------------------------------------------------------- HTML helpers

class _Page(HTMLParser):
    """Section ids, <img> sources, <a href>s and the tables (header texts, rows of (text, class)) of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.tables: list[dict] = []  # {"section", "header": [...], "rows": [[(text, class)]]}
        self._section = None
        self._cell = None
        self._head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections.append(self._section)
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag == "table":
            self.tables.append({"section": self._section, "header": [], "rows": []})
        elif tag == "thead":
            self._head = True
        elif tag == "tbody":
            self._head = False
        elif tag == "tr" and self.tables and not self._head:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ["", attrs.get("class") or ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text, cls = self._cell
            if self._head:
                self.tables[-1]["header"].append(text.strip())
            else:
                self.tables[-1]["rows"][-1].append((text.strip(), cls))
            self._cell = None


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def full() -> dict:
    return full_report()


@pytest.fixture(scope="module")
def full_html(full) -> str:
    return render_html(full)


# ---------------------------------------------------------------------------------------------- report.json

def test_new_report_fields():
    report = R.new_report("x")
    assert report["schema"] == "lmforge.report/1" == R.SCHEMA
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["created"])
    from lmforge import __version__

    assert report["lmforge_version"] == __version__ and report["models"] == [] and report["results"] == {}


def test_round_trip(tmp_path, full):
    path = R.save_report(full, tmp_path / "out")
    assert path == tmp_path / "out" / "report.json"
    raw = path.read_bytes()
    assert raw.decode("utf-8").splitlines()[1].startswith(' "schema"')  # indent 1
    assert "好".encode() in raw  # UTF-8 text, not \\u escapes
    assert json.loads(raw) == full
    assert R.load_report(path) == full
    assert R.load_report(tmp_path / "out") == full  # the folder works too


def test_unknown_extra_keys_are_kept(tmp_path):
    report = lm_only_report()
    report["notes"] = {"by": "a newer writer"}
    report["results"]["demo"]["regression"] = {"pearson": 0.9}
    report["results"]["demo"]["lm"]["window_kind"] = "sliding"
    assert R.load_report(R.save_report(report, tmp_path)) == report


def _mutations():
    def setter(*path_and_value):
        *path, key, value = path_and_value

        def apply(report):
            node = report
            for step in path:
                node = node[step]
            node[key] = value
        return apply

    def delete(*path):
        def apply(report):
            node = report
            for step in path[:-1]:
                node = node[step]
            del node[path[-1]]
        return apply

    base = ("results", "base")
    return [
        (setter(*base, "classification", "accuracy", "x"),
         "results.base.classification.accuracy: expected a number, got 'x'"),
        (setter(*base, "classification", "accuracy", True),
         "results.base.classification.accuracy: expected a number"),
        (setter(*base, "classification", "per_class", 1, "support", -3),
         "results.base.classification.per_class[1].support: expected a whole number >= 0, got -3"),
        (setter(*base, "classification", "macro", "f1", float("nan")),
         "results.base.classification.macro.f1: expected a finite number, got nan"),
        (setter(*base, "classification", "confusion_matrix", [[1, 2], [3, 4]]),
         "results.base.classification.confusion_matrix: expected 3 rows (one per label), got 2"),
        (setter(*base, "classification", "confusion_matrix", 2, [1, 2]),
         "results.base.classification.confusion_matrix[2]: expected 3 columns"),
        (setter(*base, "calibration", "bins", 4, "count", 1.5),
         "results.base.calibration.bins[4].count: expected a whole number >= 0, got 1.5"),
        (delete(*base, "robustness", "clean"), "results.base.robustness.clean: missing (a required field)"),
        (setter(*base, "robustness", "perturbations", {"typo": 0.8}),
         "results.base.robustness.perturbations: expected an array, got an object"),
        (setter(*base, "lm_eval", "arc_easy_local", "acc,none", "N/A"),
         'results.base.lm_eval.arc_easy_local["acc,none"]: expected a number, got \'N/A\''),
        (setter(*base, "interpretability", "attention", "head", "max"),
         "results.base.interpretability.attention.head: expected 'mean' or a head number, got 'max'"),
        (setter(*base, "interpretability", "saliency", "scores", [0.1, 0.2]),
         "results.base.interpretability.saliency.scores: expected 12 scores (one per token), got 2"),
        (setter(*base, "interpretability", "attention", "matrix", 3, [0.5, 0.5]),
         "results.base.interpretability.attention.matrix[3]: expected 12 columns (one per token), got 2"),
        (setter(*base, "curves", "train", 4, [40]),
         "results.base.curves.train[4]: expected at least 2 item(s), got 1"),
        (setter(*base, "multiple_choice", "source", "hf"),
         "results.base.multiple_choice.source: expected one of 'lmforge', 'lm-eval', got 'hf'"),
        (setter("models", 2, "precision", "fp8"), "models[2].precision: expected one of 'float32'"),
        (setter("models", 1, "name", "base"), "models[1].name: 'base' is already the name of models[0]"),
        (delete("title"), "title: missing (a required field)"),
        (setter("results", "ghost", {}),
         "results.ghost: no model named 'ghost' in models (there are: base, lora, full)"),
        (setter("results", "a b", {}), 'results["a b"]: no model named'),
        (setter("schema", "lmforge.report/2"), "schema: expected 'lmforge.report/1', got 'lmforge.report/2'"),
    ]


@pytest.mark.parametrize(("mutate", "message"), _mutations())
def test_validation_names_the_path(full, mutate, message):
    report = copy.deepcopy(full)
    mutate(report)
    with pytest.raises(EvaluationError) as err:
        R.validate(report)
    assert str(err.value).startswith(message), str(err.value)


def test_null_is_an_undefined_metric():
    report = small_report()
    report["results"]["m"]["classification"]["roc_auc"] = None  # one class in the references
    R.validate(report)
    page = render_html(report)
    assert "ROC-AUC <b>n/a</b>" in page
    assert "ROC-AUC" not in _summary(page)[1]  # a metric no model has a value for is left out


def test_add_model_refuses_duplicates_and_bad_sections():
    report = lm_only_report()
    with pytest.raises(EvaluationError, match="already a model named 'demo'"):
        R.add_model(report, "demo", {}, {})
    with pytest.raises(EvaluationError, match=r"^results.int8.lm.perplexity: expected a number, got 'high'"):
        R.add_model(report, "int8", {"precision": "int8"}, {"lm": {"perplexity": "high"}})
    assert [m["name"] for m in report["models"]] == ["demo"] and list(report["results"]) == ["demo"]


def test_load_report_refuses_other_files(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**lm_only_report(), "schema": "lmforge.report/2"}))
    with pytest.raises(EvaluationError,
                       match=r"schema 'lmforge.report/2' is another version.*reads 'lmforge.report/1'"):
        R.load_report(path)
    path.write_text(json.dumps({"results": {}}))
    with pytest.raises(EvaluationError, match="not an lmforge report"):
        R.load_report(path)
    path.write_text('{\n "schema": "lmforge.report/1",\n "title": \n}')
    with pytest.raises(EvaluationError, match=r"report.json:4:1: not valid JSON \(Expecting value\)"):
        R.load_report(path)
    path.write_text("")
    with pytest.raises(EvaluationError, match="the file is empty"):
        R.load_report(path)
    text = R.to_json(lm_only_report()).replace('"perplexity": 743.6', '"perplexity": NaN')
    path.write_text(text)
    with pytest.raises(EvaluationError, match="NaN is not JSON"):
        R.load_report(path)
    with pytest.raises(EvaluationError, match="no such report file"):
        R.load_report(tmp_path / "missing.json")
    path.write_text(json.dumps({**lm_only_report(), "models": "demo"}))
    with pytest.raises(EvaluationError, match=r"report.json: models: expected an array, got 'demo'"):
        R.load_report(path)


def test_save_rejects_nan_anywhere(tmp_path):
    report = lm_only_report()
    report["extra"] = {"unchecked": float("inf")}  # unknown keys are not type-checked, but the JSON stays strict
    with pytest.raises(EvaluationError, match="write null"):
        R.save_report(report, tmp_path)
    assert not (tmp_path / "report.json").exists()


def test_writes_are_atomic(tmp_path, monkeypatch, full):
    R.save_report(lm_only_report(), tmp_path)
    write_html(lm_only_report(), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("report.json", "report.html")}

    def crash(src, dst):
        raise OSError("disk full")

    import lmforge.fileio

    monkeypatch.setattr(lmforge.fileio.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        R.save_report(full, tmp_path)
    with pytest.raises(OSError, match="disk full"):
        write_html(small_report(), tmp_path)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # the old files, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temporary left
    R.save_report(full, tmp_path)
    assert R.load_report(tmp_path) == full


def test_merge_reports(tmp_path, full):
    R.save_report(full, tmp_path / "a")
    R.save_report(lm_only_report(), tmp_path / "b")
    other = copy.deepcopy(lm_only_report())
    other["title"] = "another demo"
    R.save_report(other, tmp_path / "c")
    merged = R.merge_reports([tmp_path / "a", tmp_path / "b" / "report.json", tmp_path / "c"])
    assert [m["name"] for m in merged["models"]] == ["base", "lora", "full", "demo", "demo (c)"]
    assert merged["results"]["demo (c)"] == other["results"]["demo"]
    assert merged["title"] == f"{full['title']} + demo checkpoint + another demo"
    with pytest.raises(EvaluationError, match="no report paths"):
        R.merge_reports([])


# --------------------------------------------------------------------------------------------------- curves

def test_training_curves_from_the_trainer_logger(tmp_path):
    from lmforge.train.metrics import MetricsLogger

    run = tmp_path / "run"
    log = MetricsLogger(run, tensorboard=False)
    for step in (2, 4, 6):
        log.log(step, loss=8.0 - step / 10, lr=1e-3, grad_norm=1.0, tok_per_s=900.0, precision="bf16")
    log.log(6, val_loss=7.5, val_ppl=math.exp(7.5), val_tokens=16384, val_accuracy=0.5)
    # the run is resumed from its step-4 checkpoint: steps 6.. are logged again and replace the first attempt
    for step in (6, 8):
        log.log(step, loss=7.0 - step / 10, lr=1e-3, grad_norm=1.0, tok_per_s=900.0, precision="bf16")
    log.log(8, val_loss=7.1, val_ppl=math.exp(7.1), val_tokens=16384, val_accuracy=0.625)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "time": 1.0, "lo')  # killed mid-line
    curves = R.training_curves(run)
    assert curves["run"] == str(run)
    assert curves["train"] == [[2, 7.8], [4, 7.6], [6, 6.4], [8, 6.2]]
    assert curves["validation"] == [[6, 7.5], [8, 7.1]]
    assert curves["metrics"]["val_accuracy"] == [[6, 0.5], [8, 0.625]]
    assert curves["metrics"]["val_ppl"][-1] == [8, pytest.approx(math.exp(7.1))]
    assert "val_tokens" not in curves["metrics"] and "val_loss" not in curves["metrics"]
    assert R.training_curves(run / "metrics.jsonl") == curves
    report = R.new_report("curves")
    R.add_model(report, "demo", {}, {"curves": curves})  # what it reads is a valid section


def test_training_curves_of_the_demo_run():
    run = Path(__file__).resolve().parents[2] / "runs" / "demo" / "run"
    if not (run / "metrics.jsonl").is_file():
        pytest.skip("no demo run here (runs/demo/run is made by the demo recipe)")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curves = R.training_curves(run)
    assert [p[0] for p in curves["train"]] == [r["step"] for r in records if "loss" in r]
    assert [p[1] for p in curves["validation"]] == [r["val_loss"] for r in records if "val_loss" in r]


def test_training_curves_errors(tmp_path):
    with pytest.raises(EvaluationError, match=r"metrics.jsonl: no such file \(is .* the folder of a training run"):
        R.training_curves(tmp_path)
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n")
    with pytest.raises(EvaluationError, match="no records"):
        R.training_curves(tmp_path)
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss"\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(EvaluationError, match=r"metrics.jsonl:2: not a JSON record"):
        R.training_curves(tmp_path)
    path.write_text('{"loss": 2.0}\n')
    with pytest.raises(EvaluationError, match=r"metrics.jsonl:1: a record needs a numeric \"step\""):
        R.training_curves(tmp_path)


# ---------------------------------------------------------------------------------------------- report.html

def test_every_section_once_in_order(full_html):
    page = parse(full_html)
    assert page.sections == ALL_SECTIONS
    assert [link for link in page.links if link.startswith("#")] == [f"#{s}" for s in ALL_SECTIONS]  # the contents


def test_absent_sections_are_left_out():
    page = parse(render_html(lm_only_report()))
    assert page.sections == ["summary", "language-modelling"]
    assert len(page.images) == 1  # the model vs Kneser-Ney bars, no confusion matrix or curves
    empty = parse(render_html(R.new_report("nothing yet")))
    assert empty.sections == ["empty"] and not empty.images


def test_compressed_models_get_a_trade_off_plot_of_quality_against_size():
    """A comparison of one model and its compressed copies: the summary plots accuracy against size and latency
    (one point per model); one model alone, or models without sizes, get no such plot."""
    report = R.new_report("compression")
    for name, acc, size, p50 in (("fp32", 0.82, 90_000_000, 6.3), ("int8", 0.81, 25_000_000, 5.8),
                                  ("pruned", 0.80, 76_000_000, 4.1)):
        R.add_model(report, name, {"kind": "encoder"},
                    {"classification": {"accuracy": acc},
                     "efficiency": {"size_bytes": size, "latency_ms": {"p50": p50, "p90": p50, "p99": p50}}})
    summary = render_html(report).split('id="summary"')[1].split("<section")[0]
    alts = [a.get("alt") for a in parse(summary).images]
    assert alts == ["Accuracy against size and latency for each model"]
    del report["results"]["int8"]["efficiency"], report["results"]["pruned"]["efficiency"]
    assert not parse(render_html(report).split('id="summary"')[1].split("<section")[0]).images


def test_images_are_inline_pngs(full_html):
    from PIL import Image

    page = parse(full_html)
    # trade-off, curves, LM, 3 confusion matrices, robustness, calibration, efficiency, 3 x (saliency + attention)
    assert len(page.images) == 15
    for attrs in page.images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix) and attrs.get("alt")
        data = base64.b64decode(attrs["src"][len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG"
            width, height = image.size
        assert 300 <= width <= 2400 and 150 <= height <= 2000, (attrs["alt"], image.size)
        assert abs(int(attrs["width"]) - width * 96 / 144) <= 1  # drawn at 1.5x, shown at CSS size
        assert abs(int(attrs["height"]) - height * 96 / 144) <= 1


def test_nothing_is_fetched(full_html):
    assert not re.search(r"https?://", full_html)
    assert "<link" not in full_html and "@import" not in full_html and "url(" not in full_html
    assert re.findall(r"<script\b", full_html) == ["<script"]  # the one inline script
    script = re.search(r"<script>(.*?)</script>", full_html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', full_html).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp and f"'sha256-{digest}'" in csp


def test_text_from_the_data_is_escaped():
    report = small_report()
    evil = "<script>alert(1)</script>"
    results = report["results"].pop("m")
    results["classification"]["labels"][0] = evil
    results["classification"]["per_class"][0]["label"] = evil
    results["interpretability"]["tokens"][2] = '<img src=x onerror="alert(2)">'
    name = 'full & "int8"'
    report["models"][0]["name"] = name
    report["results"][name] = results
    report["title"] = "<b>bold</b> title"
    page = render_html(report)
    assert evil not in page and "alert(1)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "full &amp; &quot;int8&quot;" in page and "<b>bold</b>" not in page
    assert len(re.findall(r"<script\b", page)) == 1 and len(re.findall(r"<img\b", page)) == len(parse(page).images)


def _table_of(page: _Page, section: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
    table = next(t for t in page.tables if t["section"] == section)
    return table["header"], table["rows"]


def _summary(page: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """The summary's model columns and its metric rows by title (arrows dropped), group heading rows left out."""
    header, rows = _table_of(parse(page), "summary")
    metrics = {row[0][0].rstrip(" \u2191\u2193"): row[1:] for row in rows if any(cell[0] for cell in row[1:])}
    return header[1:], metrics


def test_summary_sets_models_side_by_side_and_marks_the_best(full, full_html):
    names = [m["name"] for m in full["models"]]
    models, metrics = _summary(full_html)
    assert models == names
    res = full["results"]
    expected = {
        "Accuracy": max(names, key=lambda n: res[n]["classification"]["accuracy"]),
        "Perplexity": min(names, key=lambda n: res[n]["lm"]["perplexity"]),
        "ECE": min(names, key=lambda n: res[n]["calibration"]["ece"]),
        "Size": min(names, key=lambda n: res[n]["efficiency"]["size_bytes"]),
        "Worst drop": min(names, key=lambda n: max(p["drop"] for p in res[n]["robustness"]["perturbations"])),
        "p50 ms": min(names, key=lambda n: res[n]["efficiency"].get("p50_ms")
                      or res[n]["efficiency"]["latency_ms"]["p50"]),
    }
    for metric, best in expected.items():
        marked = [name for name, cell in zip(names, metrics[metric]) if "best" in cell[1]]
        assert marked == [best], metric
    assert not any("best" in cell[1] for cell in metrics["KN perplexity"])  # the same baseline for all: a tie
    assert not any("best" in cell[1] for cell in metrics["Parameters"])  # no better way
    accuracies = [f"{res[n]['classification']['accuracy']:.4f}" for n in names]
    assert [cell[0] for cell in metrics["Accuracy"]] == accuracies
    assert all(cell[0] != "n/a" for cell in metrics["p50 ms"])  # nested for two models, flat for the third
    assert [cell[0] for cell in metrics["ROC-AUC"]][1:] == ["n/a", "n/a"]
    assert [cell[0] for cell in metrics["Precision"]] == ["float32", "float32", "int8"]


def test_per_class_table_matches_the_data(full, full_html):
    page = parse(full_html)
    tables = [t for t in page.tables if t["section"] == "classification"]
    assert len(tables) == 3
    for table, name in zip(tables, ("base", "lora", "full")):
        cls = full["results"][name]["classification"]
        rows = table["rows"]
        assert [row[0][0] for row in rows] == [*LABELS, "macro", "micro", "weighted"]
        for row, item in zip(rows, cls["per_class"]):
            assert [c[0] for c in row[1:]] == [f"{item[k]:.4f}" for k in ("precision", "recall", "f1")] + [
                str(item["support"])]
        assert rows[3][3][0] == f"{cls['macro']['f1']:.4f}"


def test_lm_eval_table_is_task_by_model(full, full_html):
    header, rows = _table_of(parse(full_html), "lm-eval")
    assert header == ["Task", "Metric", "base", "lora", "full"]
    assert [(r[0][0], r[1][0]) for r in rows] == [("arc_easy_local", "acc,none"),
                                                  ("arc_easy_local", "acc_norm,none"),
                                                  ("wikitext_local", "word_perplexity,none")]
    assert "best" in rows[0][4][1] and "best" in rows[2][4][1]  # highest accuracy, lowest perplexity: "full"


def test_saliency_spans_carry_the_scores(full, full_html):
    section = full_html.split('<section id="interpretability">')[1].split("</section>")[0]
    spans = re.findall(r'<span class="tok" style="background:rgba\((\d+,\d+,\d+),([\d.]+)\)" title="([^"]+)">',
                       section)
    scores = [s for n in ("base", "lora", "full")
              for s in full["results"][n]["interpretability"]["saliency"]["scores"]]
    assert len(spans) == len(scores)
    for (rgb, _alpha, title), score in zip(spans, scores):
        assert float(title) == pytest.approx(score, rel=1e-3)
        assert rgb == ("214,39,40" if score >= 0 else "31,119,180")
    assert "&lt;script&gt;" in section and "好" in section


def test_render_validates_first(full):
    report = copy.deepcopy(full)
    report["results"]["base"]["qa"]["f1"] = "good"
    with pytest.raises(EvaluationError, match=r"^results.base.qa.f1: expected a number"):
        render_html(report)


def test_modules_stay_torch_free_and_pyplot_free(tmp_path):
    """Rendering loads neither torch nor pyplot (figures are Figure objects, nothing global to leak)."""
    R.save_report(lm_only_report(), tmp_path)
    code = ("import sys\nfrom lmforge.evaluate.report import load_report\n"
            "from lmforge.evaluate.html import write_html\n"
            f"write_html(load_report({str(tmp_path)!r}), {str(tmp_path)!r})\n"
            "print(sorted(m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "report.html").stat().st_size > 10_000


MINIMAL_SECTIONS = {
    "lm": {"perplexity": 12.0}, "pseudo_lm": {"pseudo_perplexity": 3.0}, "kneser_ney": {"perplexity": 50.0},
    "classification": {"accuracy": 0.5}, "tagging": {"f1": None}, "qa": {"exact_match": 10.0, "f1": 20.0},
    "generation": {"bleu": 5.0}, "multiple_choice": {"acc": 0.3}, "lm_eval": {"t": {"acc": 0.4}},
    "robustness": {"clean": 0.9, "perturbations": []}, "calibration": {"ece": 0.1, "bins": []},
    "efficiency": {"parameters": 1000}, "interpretability": {"tokens": ["a"]},
    "curves": {"train": [[1, 2.0]]},
}


def test_sections_with_only_their_required_fields_render():
    """Each section with the least the schema asks, next to a model with no results at all."""
    report = R.new_report("sparse")
    R.add_model(report, "sparse", {}, copy.deepcopy(MINIMAL_SECTIONS))
    R.add_model(report, "empty", {}, {})
    page = parse(render_html(report))
    assert page.sections == ALL_SECTIONS
    empty_sections = {"generation": {}, "efficiency": {}, "lm_eval": {}, "curves": {}}
    report = R.new_report("nothing to show")
    R.add_model(report, "m", {}, empty_sections)
    assert parse(render_html(report)).sections == ["empty"]
