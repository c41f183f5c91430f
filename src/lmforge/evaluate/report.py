"""`report.json`: the versioned record of an evaluation (schema "lmforge.report/1"), its checks, and run curves.

A report holds a title, the models it compares and, per model, optional result sections (`lm`,
`classification`, `calibration`, ...). `validate` checks the type of every known field and names
the JSON path of the first problem; unknown extra keys are allowed, so a newer writer can add
fields an older reader ignores. A metric that is undefined (ROC-AUC with one class in the
references, the accuracy of an empty calibration bin) is `null`, never NaN: the file is strict JSON.

The layout of `results.<model>`, every section optional::

    lm               perplexity, nll, bits_per_byte, tokens, bytes, max_len, stride, data
    pseudo_lm        pseudo_perplexity, tokens
    kneser_ney       perplexity, orders {"2": ppl, ...}, best_order
    classification   accuracy, macro/micro/weighted {precision, recall, f1}, per_class [...], labels,
                     confusion_matrix [[int]] (rows: reference, columns: prediction), roc_auc, pr_auc, n
    tagging          f1, precision, recall, macro_f1, token_accuracy, mode, per_type [...]
    qa               exact_match, f1, n
    generation       bleu, chrf, rouge1, rouge2, rougeL, exact_match, n
    multiple_choice  acc, acc_norm, n, num_fewshot, source ("lmforge" or "lm-eval")
    lm_eval          {task: {metric: number}}
    robustness       clean, perturbations [{name, score, drop}], metric, rate, seed
    calibration      ece, bins [{lo, hi, count, confidence, accuracy}], mce, n_bins, temperature,
                     ece_after, bins_after
    efficiency       parameters, size_bytes, peak_rss_mib, latency_ms {p50, p90, p99, mean},
                     throughput {examples_per_s, tokens_per_s}, batch_size (or the flat p50_ms, p90_ms,
                     p99_ms, mean_ms, examples_per_s, tokens_per_s that efficiency.measure returns)
    interpretability tokens, text, attention {layer, head, matrix}, saliency {scores, target_name}
    curves           run, train [[step, loss]], validation [[step, val_loss]], metrics {val_*: [[step, value]]}

Torch-free: the report is read and written without a model.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.evaluate.errors import EvaluationError
from lmforge.fileio import atomic_write_bytes

SCHEMA = "lmforge.report/1"
REPORT_FILE = "report.json"
KINDS = ("encoder", "decoder", "encoder-decoder")  # ModelConfig.family
PRECISIONS = ("float32", "float16", "bfloat16", "int8", "q8_0", "int4")
SECTIONS = ("lm", "pseudo_lm", "kneser_ney", "classification", "tagging", "qa", "generation", "multiple_choice",
            "lm_eval", "robustness", "calibration", "efficiency", "interpretability", "curves")


# ------------------------------------------------------------------------------------------------------------
# The schema as data: a spec is a type tag, a dict of fields, or a wrapper below.

class _Optional:
    """A field that may be absent."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


class _ListOf:
    """A JSON array whose items all match `spec`; `min_len` items at least."""

    def __init__(self, spec: Any, min_len: int = 0) -> None:
        self.spec, self.min_len = spec, min_len


class _MapOf:
    """A JSON object with free keys whose values all match `spec`."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


class _OneOf:
    """A string from a fixed set."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices


class _Either:
    """A value matching one of several specs, `expected` saying which in words."""

    def __init__(self, *specs: Any, expected: str) -> None:
        self.specs, self.expected = specs, expected


NUMBER = "number"  # a finite int or float (not a bool)
METRIC = "metric"  # a number, or null where the metric is undefined
COUNT = "count"  # an int >= 0
STRING = "string"


def _opt(spec: Any) -> _Optional:
    return _Optional(spec)


_POINTS = _ListOf(_ListOf(NUMBER, min_len=2))  # [[step, value], ...]
_PRF = {"precision": METRIC, "recall": METRIC, "f1": METRIC}
_BIN = {"lo": NUMBER, "hi": NUMBER, "count": COUNT, "confidence": METRIC, "accuracy": METRIC}

_SECTION_SPECS: dict[str, dict] = {
    "lm": {"perplexity": METRIC, "nll": _opt(METRIC), "bits_per_byte": _opt(METRIC), "tokens": _opt(COUNT),
           "bytes": _opt(COUNT), "max_len": _opt(COUNT), "stride": _opt(COUNT), "data": _opt(STRING)},
    "pseudo_lm": {"pseudo_perplexity": METRIC, "tokens": _opt(COUNT)},
    "kneser_ney": {"perplexity": METRIC, "orders": _opt(_MapOf(METRIC)), "best_order": _opt(COUNT)},
    "classification": {
        "accuracy": METRIC, "macro": _opt(_PRF), "micro": _opt(_PRF), "weighted": _opt(_PRF),
        "per_class": _opt(_ListOf({"label": STRING, **_PRF, "support": COUNT})),
        "labels": _opt(_ListOf(STRING)), "confusion_matrix": _opt(_ListOf(_ListOf(COUNT))),
        "roc_auc": _opt(METRIC), "pr_auc": _opt(METRIC), "n": _opt(COUNT)},
    "tagging": {"f1": METRIC, "precision": _opt(METRIC), "recall": _opt(METRIC), "macro_f1": _opt(METRIC),
                "token_accuracy": _opt(METRIC), "mode": _opt(STRING),
                "per_type": _opt(_ListOf({"type": STRING, **_PRF, "support": COUNT}))},
    "qa": {"exact_match": METRIC, "f1": METRIC, "n": _opt(COUNT)},
    "generation": {"bleu": _opt(METRIC), "chrf": _opt(METRIC), "rouge1": _opt(METRIC), "rouge2": _opt(METRIC),
                   "rougeL": _opt(METRIC), "exact_match": _opt(METRIC), "n": _opt(COUNT)},
    "multiple_choice": {"acc": METRIC, "acc_norm": _opt(METRIC), "n": _opt(COUNT), "num_fewshot": _opt(COUNT),
                        "source": _opt(_OneOf("lmforge", "lm-eval"))},
    "robustness": {"clean": METRIC,
                   "perturbations": _ListOf({"name": STRING, "score": METRIC, "drop": _opt(METRIC)}),
                   "metric": _opt(STRING), "rate": _opt(NUMBER), "seed": _opt(COUNT)},
    "calibration": {"ece": METRIC, "bins": _ListOf(_BIN), "mce": _opt(METRIC), "n_bins": _opt(COUNT),
                    "temperature": _opt(METRIC), "ece_after": _opt(METRIC), "bins_after": _opt(_ListOf(_BIN))},
    "efficiency": {"parameters": _opt(COUNT), "size_bytes": _opt(COUNT), "peak_rss_mib": _opt(METRIC),
                   "latency_ms": _opt({"p50": _opt(METRIC), "p90": _opt(METRIC), "p99": _opt(METRIC),
                                       "mean": _opt(METRIC)}),
                   "throughput": _opt({"examples_per_s": _opt(METRIC), "tokens_per_s": _opt(METRIC)}),
                   "batch_size": _opt(COUNT),
                   # the flat form efficiency.measure returns, read where the nested one is absent
                   **{key: _opt(METRIC) for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "examples_per_s",
                                                    "tokens_per_s")}},
    "interpretability": {
        "tokens": _ListOf(STRING, min_len=1), "text": _opt(STRING),
        "attention": _opt({"layer": COUNT, "matrix": _ListOf(_ListOf(NUMBER)),
                           "head": _Either(_OneOf("mean"), COUNT, expected="'mean' or a head number")}),
        "saliency": _opt({"scores": _ListOf(NUMBER), "target_name": _opt(STRING)})},
    "curves": {"run": _opt(STRING), "train": _opt(_POINTS), "validation": _opt(_POINTS),
               "metrics": _opt(_MapOf(_POINTS))},
}
_SECTION_SPECS["lm_eval"] = _MapOf(_MapOf(METRIC))  # type: ignore[assignment]

_MODEL_SPEC = {"name": STRING, "path": _opt(STRING), "task": _opt(STRING), "kind": _opt(_OneOf(*KINDS)),
               "precision": _opt(_OneOf(*PRECISIONS)), "parameters": _opt(COUNT)}
_REPORT_SPEC = {"schema": STRING, "created": STRING, "lmforge_version": STRING, "title": STRING,
                "models": _ListOf(_MODEL_SPEC), "results": _MapOf({k: _opt(v) for k, v in _SECTION_SPECS.items()})}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _join(path: str, key: str | int) -> str:
    """`path.key`, `path[3]`, or `path["odd key"]` for keys that would read ambiguously."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _describe(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(value: Any, spec: Any, path: str) -> None:
    """Raise EvaluationError at the first place where `value` does not match `spec`."""
    if isinstance(spec, _Either):
        for option in spec.specs:
            try:
                _check(value, option, path)
                return
            except EvaluationError:
                pass
        raise EvaluationError(f"{path}: expected {spec.expected}, got {_describe(value)}")
    if spec == METRIC and value is None:
        return
    if spec in (NUMBER, METRIC):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvaluationError(f"{path}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise EvaluationError(f"{path}: expected a finite number, got {value} (write null for an undefined "
                                  "metric)")
        return
    if spec == COUNT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise EvaluationError(f"{path}: expected a whole number >= 0, got {_describe(value)}")
        return
    if spec == STRING:
        if not isinstance(value, str):
            raise EvaluationError(f"{path}: expected a string, got {_describe(value)}")
        return
    if isinstance(spec, _OneOf):
        if value not in spec.choices:
            raise EvaluationError(f"{path}: expected one of {', '.join(map(repr, spec.choices))}, got "
                                  f"{_describe(value)}")
        return
    if isinstance(spec, _ListOf):
        if not isinstance(value, list):
            raise EvaluationError(f"{path}: expected an array, got {_describe(value)}")
        if len(value) < spec.min_len:
            raise EvaluationError(f"{path}: expected at least {spec.min_len} item(s), got {len(value)}")
        for i, item in enumerate(value):
            _check(item, spec.spec, _join(path, i))
        return
    if isinstance(spec, _MapOf):
        if not isinstance(value, dict):
            raise EvaluationError(f"{path}: expected an object, got {_describe(value)}")
        for key, item in value.items():
            _check(item, spec.spec, _join(path, key))
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise EvaluationError(f"{path}: expected an object, got {_describe(value)}")
        for key, field in spec.items():
            if key not in value:
                if isinstance(field, _Optional):
                    continue
                raise EvaluationError(f"{_join(path, key)}: missing (a required field)")
            _check(value[key], field.spec if isinstance(field, _Optional) else field, _join(path, key))
        return
    raise AssertionError(f"unknown spec {spec!r}")  # a bug in the schema table above


def _square(matrix: list, size: int, path: str, what: str) -> None:
    """A `size` x `size` matrix, or an error naming `path`."""
    if len(matrix) != size:
        raise EvaluationError(f"{path}: expected {size} rows ({what}), got {len(matrix)}")
    for i, row in enumerate(matrix):
        if len(row) != size:
            raise EvaluationError(f"{_join(path, i)}: expected {size} columns ({what}), got {len(row)}")


def _check_shapes(results: dict, path: str) -> None:
    """The cross-field rules a type check cannot see: matrix sizes that follow the labels or tokens."""
    cls = results.get("classification")
    if cls is not None and "confusion_matrix" in cls:
        matrix = cls["confusion_matrix"]
        if "labels" in cls:
            _square(matrix, len(cls["labels"]), _join(_join(path, "classification"), "confusion_matrix"),
                    "one per label")
        elif matrix:
            _square(matrix, len(matrix), _join(_join(path, "classification"), "confusion_matrix"), "square")
    interp = results.get("interpretability")
    if interp is not None:
        where, n = _join(path, "interpretability"), len(interp["tokens"])
        if "attention" in interp:
            _square(interp["attention"]["matrix"], n, _join(_join(where, "attention"), "matrix"), "one per token")
        if "saliency" in interp and len(interp["saliency"]["scores"]) != n:
            raise EvaluationError(f"{_join(_join(where, 'saliency'), 'scores')}: expected {n} scores (one per "
                                  f"token), got {len(interp['saliency']['scores'])}")


def validate(report: dict) -> dict:
    """Check `report` against schema "lmforge.report/1"; return it, or raise EvaluationError naming a JSON path."""
    if not isinstance(report, dict):
        raise EvaluationError(f"a report is a JSON object, got {_describe(report)}")
    if report.get("schema") != SCHEMA:
        raise EvaluationError(f"schema: expected {SCHEMA!r}, got {_describe(report.get('schema'))}")
    _check(report, _REPORT_SPEC, "")
    names = [model["name"] for model in report["models"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise EvaluationError(f"models[{i}].name: {name!r} is already the name of models[{names.index(name)}]")
    for name, results in report["results"].items():
        where = _join("results", name)
        if name not in names:
            known = ", ".join(names) or "none"
            raise EvaluationError(f"{where}: no model named {name!r} in models (there are: {known})")
        _check_shapes(results, where)
    return report


# ------------------------------------------------------------------------------------------------------------
# Building, saving and loading.

def new_report(title: str) -> dict:
    """An empty report: the schema tag, the time (UTC), this lmforge's version, `title`, no models yet."""
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema": SCHEMA, "created": created, "lmforge_version": __version__, "title": str(title),
            "models": [], "results": {}}


def add_model(report: dict, name: str, info: dict | None = None, results: dict | None = None) -> dict:
    """Add model `name` (`info`: path, task, kind, precision, parameters) and its result sections; return report.

    The whole report is validated afterwards, so a bad section is named where it was added.
    """
    if any(model.get("name") == name for model in report["models"]):
        raise EvaluationError(f"models: there is already a model named {name!r}; give each model its own name")
    info = dict(info or {})
    info.pop("name", None)
    report["models"].append({"name": name, **info})
    report["results"][name] = dict(results or {})
    try:
        validate(report)
    except EvaluationError:
        report["models"].pop()
        del report["results"][name]
        raise
    return report


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (write null for an undefined metric)")


def to_json(report: dict) -> str:
    """The report as strict JSON text (UTF-8 safe, indent 1, NaN and Infinity refused)."""
    try:
        return json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as err:
        raise EvaluationError(f"report: {err} (write null for an undefined metric)") from None


def save_report(report: dict, folder: str | os.PathLike) -> Path:
    """Validate `report` and write it to `folder`/report.json atomically; return the file's path."""
    validate(report)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(folder / REPORT_FILE, to_json(report).encode("utf-8"))


def load_report(path: str | os.PathLike) -> dict:
    """Read and validate a report.json (or the report.json in folder `path`); other schema versions are refused."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: cannot be read ({err})") from None
    if not text.strip():
        raise EvaluationError(f"{path}: the file is empty")
    try:
        report = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None
    except ValueError as err:
        raise EvaluationError(f"{path}: {err}") from None
    if not isinstance(report, dict) or "schema" not in report:
        raise EvaluationError(f"{path}: not an lmforge report (no \"schema\" field; expected {SCHEMA!r})")
    schema = report["schema"]
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("lmforge.report/"):
            raise EvaluationError(f"{path}: schema {schema!r} is another version of the report; this lmforge "
                                  f"({__version__}) reads {SCHEMA!r} only")
        raise EvaluationError(f"{path}: schema {_describe(schema)} is not an lmforge report (expected {SCHEMA!r})")
    try:
        return validate(report)
    except EvaluationError as err:
        raise EvaluationError(f"{path}: {err}") from None


def merge_reports(paths: Iterable[str | os.PathLike], title: str | None = None) -> dict:
    """One report holding every model of the reports at `paths`, side by side, in order.

    A model name seen before gets its report's folder name appended ("base (run-b)"), then a number.
    """
    merged, titles = None, []
    for path in paths:
        report = load_report(path)
        titles.append(report["title"])
        if merged is None:
            merged = new_report(title or "")
        source = Path(path).name if Path(path).is_dir() else Path(path).parent.name
        taken = {model["name"] for model in merged["models"]}
        for model in report["models"]:
            name = model["name"]
            if name in taken:
                candidate, n = f"{name} ({source})", 2
                while candidate in taken:
                    candidate, n = f"{name} ({source} {n})", n + 1
                name = candidate
            taken.add(name)
            merged["models"].append({**model, "name": name})
            merged["results"][name] = report["results"].get(model["name"], {})
    if merged is None:
        raise EvaluationError("merge_reports: no report paths given")
    if not title:
        merged["title"] = " + ".join(dict.fromkeys(titles))
    return validate(merged)


# ------------------------------------------------------------------------------------------------------------
# Training curves from a run's metrics.jsonl.

_NOT_CURVES = {"val_loss", "val_tokens"}  # val_loss is the validation curve; val_tokens is a count, not a metric


def _append(series: list[list[float]], step: float, value: float) -> None:
    """Add a point; a step at or before the last one means a resumed run, whose later points replace the old."""
    while series and series[-1][0] >= step:
        series.pop()
    series.append([step, value])


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_curves(run_dir: str | os.PathLike) -> dict:
    """The `curves` section of a run folder (or of a metrics.jsonl file): train loss, val_loss and val_* metrics.

    Train records carry "loss", evaluation records "val_loss" and "val_<metric>"; each has "step". A
    truncated last line (a run still writing, or killed) is skipped; a bad line before it is an error.
    When a resumed run logs a step again, the resumed points replace the old ones from that step on.
    """
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else run_dir / "metrics.jsonl"
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file (is {run_dir} the folder of a training run?)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    train: list[list[float]] = []
    validation: list[list[float]] = []
    metrics: dict[str, list[list[float]]] = {}
    seen = 0
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    for position, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if position == len(numbered) - 1:
                break  # a truncated last line
            raise EvaluationError(f"{path}:{lineno}: not a JSON record ({err.msg})") from None
        if not isinstance(record, dict) or not _number(record.get("step")):
            raise EvaluationError(f"{path}:{lineno}: a record needs a numeric \"step\"")
        seen += 1
        step = record["step"]
        if _number(record.get("loss")):
            _append(train, step, record["loss"])
        if _number(record.get("val_loss")):
            _append(validation, step, record["val_loss"])
        for key, value in record.items():
            if key.startswith("val_") and key not in _NOT_CURVES and _number(value):
                _append(metrics.setdefault(key, []), step, value)
    if not seen:
        raise EvaluationError(f"{path}: no records (the file is empty)")
    return {"run": str(path.parent), "train": train, "validation": validation, "metrics": metrics}


__all__ = ["KINDS", "PRECISIONS", "REPORT_FILE", "SCHEMA", "SECTIONS", "add_model", "load_report", "merge_reports",
           "new_report", "save_report", "to_json", "training_curves", "validate"]
