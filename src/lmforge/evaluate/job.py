"""`lmforge evaluate`: one or several models on one task, every measurement in one report.

For each model it loads the model once, then runs the sections its task has:

- a decoder (`lm`): perplexity and bits-per-byte on a text file, JSONL file or a prepared shard folder (sliding
  window), and the Kneser-Ney baseline fitted on `kn_train` and scored on the same tokens;
- a masked-LM encoder (`pseudo-lm`): pseudo-perplexity;
- a classifier (`classification`): accuracy, P/R/F1, confusion matrix, ROC/PR-AUC; calibration (ECE, reliability
  bins, temperature fitted on `validation`); robustness under seeded perturbations; attention and saliency;
- `token-classification`, `qa`, `seq2seq`, `chat`: the task's metrics (entity F1, SQuAD EM/F1, BLEU/chrF/ROUGE);
- `multiple-choice`: log-likelihood scoring of a JSONL of items (zero- or few-shot), and lm-eval tasks through
  the adapter;
- every model: efficiency (parameters, size on disk, latency p50/p99, throughput, peak memory) and, for a
  training run folder, its training and validation curves.

A model is a name, a Hugging Face / lmforge folder, a `.gguf` file or a run folder (`lmforge pretrain` /
`lmforge finetune` output: its checkpoint, task options and curves are found in it). A `+int8` / `+q8_0` /
`+int4` / `+bf16` suffix evaluates a quantized or bfloat16 copy, so `model model+int8 model+int4` compares them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.evaluate.errors import EvaluationError

TASK_OF_MODEL = {"causal-lm": "lm", "masked-lm": "pseudo-lm", "sequence-classification": "classification",
                 "token-classification": "token-classification", "question-answering": "qa",
                 "seq2seq-lm": "seq2seq"}
"""The task a model is evaluated on when none is given, by the head it carries."""
TASKS = ("lm", "pseudo-lm", "classification", "regression", "token-classification", "qa", "seq2seq", "chat",
         "multiple-choice")
NEEDS_HEAD = {"lm": "causal-lm", "multiple-choice": "causal-lm", "chat": "causal-lm", "pseudo-lm": "masked-lm",
              "classification": "sequence-classification", "regression": "sequence-classification",
              "token-classification": "token-classification", "qa": "question-answering", "seq2seq": "seq2seq-lm"}
"""The model head each task needs."""
VARIANTS = ("int8", "q8_0", "int4", "bf16")


@dataclass
class ModelRef:
    """Where a model to evaluate comes from, as resolved from its command-line spelling."""

    spec: str
    """What the user wrote."""
    name: str
    """Its name in the report."""
    path: str
    """The checkpoint (a named model, a folder or a .gguf file)."""
    variant: str | None = None
    """int8 / q8_0 / int4 (quantized after loading) or bf16."""
    run_dir: Path | None = None
    """The training run it came from (for its curves and task options)."""
    run_config: dict = field(default_factory=dict)


def resolve_model(spec: str, name: str | None = None) -> ModelRef:
    """A model spelling -> where its checkpoint, variant and run folder are."""
    path, variant = spec, None
    if "+" in spec and spec.rsplit("+", 1)[1] in VARIANTS:
        path, variant = spec.rsplit("+", 1)
    folder = Path(path)
    run_dir, run_config = None, {}
    if folder.is_dir() and (folder / "config.yaml").is_file() and (folder / "metrics.jsonl").exists():
        run_dir = folder
        import yaml

        run_config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
        path = str(_run_checkpoint(folder))
    elif folder.name == "model" and (folder.parent / "metrics.jsonl").exists():
        run_dir = folder.parent
    elif folder.name.startswith("step-") and (folder.parent / "metrics.jsonl").exists():
        run_dir, path = folder.parent, str(folder / "model") if (folder / "model").is_dir() else path
    return ModelRef(spec, name or (Path(path).name if run_dir is None else run_dir.name) + (
        f"+{variant}" if variant else ""), path, variant, run_dir, run_config)


def _run_checkpoint(run_dir: Path) -> Path:
    """The model of a run folder: a fine-tuning run's exported `model/`, else its latest checkpoint's model."""
    from lmforge.train.checkpoint import latest_checkpoint

    if (run_dir / "model").is_dir():
        return run_dir / "model"
    latest = latest_checkpoint(run_dir)
    if latest is None or not (latest / "model").is_dir():
        raise EvaluationError(f"{run_dir}: a run folder without a checkpoint (no model/ nor step-*/model)")
    return latest / "model"


def load_for_eval(ref: ModelRef, task: str | None, dtype: str = "float32"):
    """(model in eval mode, tokenizer, model task) of a resolved model; the variant applied."""
    from lmforge.interop.native import load_any
    from lmforge.models.tasks import task_of
    from lmforge.tokenizers import Tokenizer

    head = NEEDS_HEAD.get(task) if task else None
    try:
        model = load_any(ref.path, dtype=torch.float32, task=head)
    except Exception as err:
        from lmforge.models.config import ConfigError

        if head and ("holds a" in str(err) or isinstance(err, ConfigError)):
            raise EvaluationError(f"{ref.spec}: the {task} evaluation needs a {head} model; {err}") from err
        raise
    fresh = [name for name in getattr(model, "newly_initialised", None) or () if name.startswith(("head.", "heads."))]
    if fresh and head:
        raise EvaluationError(f"{ref.spec}: the {task} evaluation needs a {head} model; this checkpoint has no "
                              f"trained head ({', '.join(fresh[:4])} would be newly initialised): evaluate a "
                              "fine-tuned model (a `lmforge finetune` run folder or its model/)")
    if ref.variant in ("int8", "q8_0", "int4"):
        from lmforge.compress.quantize import QuantConfig, is_quantized, quantize_model

        if not is_quantized(model):
            quantize_model(model, QuantConfig(scheme=ref.variant))
    if ref.variant == "bf16" or dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.eval()
    tokenizer_source = ref.path
    if ref.run_dir is not None and not _has_tokenizer(Path(ref.path)):
        data = ref.run_config.get("data") or {}
        for candidate in (ref.run_dir / "tokenizer", data.get("tokenizer") if isinstance(data, dict) else None):
            if candidate and Path(candidate).is_dir():
                tokenizer_source = str(candidate)
                break
    tokenizer = Tokenizer.from_pretrained(tokenizer_source)
    return model, tokenizer, task_of(model)


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_file() or (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


# ---------------------------------------------------------------------------------------------- the job


@dataclass
class EvalSettings:
    """Everything `lmforge evaluate` was asked, after its defaults (see the CLI's docstring for each)."""

    task: str | None = None
    data: str | None = None
    validation: str | None = None
    task_options: dict = field(default_factory=dict)
    kn_train: str | None = None
    kn_orders: tuple[int, ...] = (2, 3, 4, 5)
    max_len: int | None = None
    stride: int | None = None
    limit: int | None = None
    batch_size: int = 16
    dtype: str = "float32"
    perturbations: tuple[str, ...] | None = None
    perturbation_rate: float = 0.1
    seed: int = 0
    bins: int = 15
    explain: str | None = None
    lm_eval_tasks: tuple[str, ...] = ()
    num_fewshot: int = 0
    template: str = "{query}"
    efficiency: bool = True
    latency_examples: int = 16


def run_evaluation(models: Sequence[str], settings: EvalSettings, report_dir: str | None = None,
                   names: Sequence[str] | None = None, title: str | None = None) -> dict:
    """Evaluate every model; write report.json and report.html to `report_dir` when given; return the report."""
    from lmforge.evaluate.efficiency import reset_peak_memory
    from lmforge.evaluate.report import add_model, new_report

    if not models:
        raise EvaluationError("evaluate: give at least one model")
    if names is not None and len(names) != len(models):
        raise EvaluationError(f"--names has {len(names)} names for {len(models)} models")
    if settings.task is not None and settings.task not in TASKS:
        raise EvaluationError(f"--task={settings.task!r}: choose one of {', '.join(TASKS)}")
    refs = [resolve_model(spec, None if names is None else names[i]) for i, spec in enumerate(models)]
    seen = set()
    for ref in refs:
        if ref.name in seen:
            raise EvaluationError(f"two models are both named {ref.name!r} in the report: give --names")
        seen.add(ref.name)
    report = new_report(title or f"lmforge evaluation: {', '.join(r.name for r in refs)}")
    _KN_FITTED.clear()
    for ref in refs:
        start = time.perf_counter()
        reset_peak_memory()  # each model's peak memory is its own (from its load on), not the process's
        print(f"[evaluate] {ref.name}: loading {ref.path}", flush=True)
        info, results = evaluate_model(ref, settings)
        add_model(report, ref.name, info, plain(results))
        print(f"[evaluate] {ref.name}: {_headline(results)} ({time.perf_counter() - start:.1f} s)", flush=True)
    if report_dir is not None:
        from lmforge.evaluate.html import write_html
        from lmforge.evaluate.report import save_report

        folder = Path(report_dir)
        save_report(report, folder)
        page = write_html(report, folder)
        print(f"[evaluate] wrote {folder / 'report.json'} and {page}", flush=True)
    return report


def plain(value: Any) -> Any:
    """`value` as JSON has it (string keys, lists, floats), numpy and torch scalars and arrays included."""
    def convert(obj):
        if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
            return obj.item()
        if isinstance(obj, (np.ndarray, torch.Tensor)):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON")

    return json.loads(json.dumps(value, default=convert))


def evaluate_model(ref: ModelRef, settings: EvalSettings) -> tuple[dict, dict]:
    """(the model's info, its result sections) for one model."""
    task = settings.task or _run_task(ref)
    if settings.lm_eval_tasks and task is None:
        task = "multiple-choice"
    data = settings.data or _run_data(ref, "test") or _run_data(ref, "val")
    if task not in (None, "lm", "multiple-choice"):
        _need_data(data, task)  # before the (slow) load
    model, tokenizer, model_task = load_for_eval(ref, task, settings.dtype)
    task = task or TASK_OF_MODEL.get(model_task)
    if task is None:
        raise EvaluationError(f"{ref.spec}: a {model_task} model has no evaluation of its own; give --task "
                              f"({', '.join(TASKS)}) with a model that has the head it needs")
    if NEEDS_HEAD[task] != model_task:
        raise EvaluationError(f"{ref.spec}: the {task} evaluation needs a {NEEDS_HEAD[task]} model, this is a "
                              f"{model_task} model")
    results: dict[str, Any] = {}
    if task == "lm":
        results.update(_language_model(model, tokenizer, ref, settings, data))
    elif task == "pseudo-lm":
        results["pseudo_lm"] = _pseudo_lm(model, tokenizer, settings, data)
    elif task == "multiple-choice":
        results.update(_multiple_choice(model, tokenizer, settings, data))
    else:
        results.update(_labelled_task(model, tokenizer, ref, task, settings, data))
    if settings.efficiency:
        results["efficiency"] = _efficiency(model, tokenizer, ref, settings, task, data)
    if ref.run_dir is not None and (ref.run_dir / "metrics.jsonl").exists():
        from lmforge.evaluate.report import training_curves

        results["curves"] = training_curves(ref.run_dir)
    from lmforge.evaluate.efficiency import count_parameters

    info = {"path": str(ref.path), "task": model_task, "evaluated_as": task, "kind": model.cfg.family,
            "precision": _precision(model, ref), "parameters": count_parameters(model)["parameters"]}
    if "pruning" in model.cfg.extra:  # what `lmforge prune` did (method, sparsity or heads / FFN fractions)
        info["pruning"] = model.cfg.extra["pruning"]
    return info, results


def _run_task(ref: ModelRef) -> str | None:
    """The task a fine-tuning run was trained on (the run's config), as an evaluation task."""
    name = ref.run_config.get("task")
    return name if name in TASKS else None


def _run_data(ref: ModelRef, split: str) -> str | None:
    data = ref.run_config.get("data") or {}
    return data.get(split) if isinstance(data, dict) else None


def _need_data(data: str | None, task: str) -> Path:
    if not data:
        raise EvaluationError(f"the {task} evaluation needs --data (a file to score)")
    path = Path(data)
    if not path.exists():
        raise EvaluationError(f"--data {data}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise EvaluationError(f"--data {data}: the file is empty")
    return path


def _headline(results: dict) -> str:
    for section, key in (("lm", "perplexity"), ("pseudo_lm", "pseudo_perplexity"), ("classification", "accuracy"),
                         ("tagging", "f1"), ("qa", "f1"), ("generation", "rougeL"), ("multiple_choice", "acc")):
        if section in results and key in results[section]:
            return f"{section} {key} {results[section][key]:.4f}"
    return "done"


# ---------------------------------------------------------------------------------------------- language models


def read_documents(path: Path, tokenizer, what: str, split: str = "val") -> list[list[int]] | list[str]:
    """The texts of a file (.jsonl rows' `text`, else the paragraphs of a text file, blank-line separated), or
    the documents of a prepared shard folder's `split` as token lists, each ending with its EOS token."""
    if path.is_dir():
        from lmforge.baselines import split_documents

        stream, eos = _shard_stream(path, split, tokenizer, what)
        return [list(map(int, doc)) for doc in split_documents(stream, eos)]
    raw = path.read_bytes()
    if not raw.strip():
        raise EvaluationError(f"{what} {path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EvaluationError(f"{what} {path}: not UTF-8 text (byte {err.start})") from None
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvaluationError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise EvaluationError(f"{path}:{number}: expected an object with a string field 'text'")
            texts.append(row["text"])
        return texts
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def _shard_stream(path: Path, split: str, tokenizer, what: str) -> tuple[np.ndarray, int]:
    """(the token stream of a shard folder's split, documents separated by EOS; the EOS id)."""
    from lmforge.data import TokenDataset

    if not (path / "manifest.json").is_file():
        raise EvaluationError(f"{what} {path}: a folder that is not a prepared shard folder (no manifest.json)")
    data = TokenDataset(path, split, tokenizer)  # refuses shards another tokenizer made
    return np.asarray(data.array(), dtype=np.int64), int(data.eos_id)


def _language_model(model, tokenizer, ref: ModelRef, settings: EvalSettings, data: str | None) -> dict:
    """Perplexity (and bits-per-byte) on `data`, and Kneser-Ney fitted on `kn_train` scored on the same tokens.

    A text file's texts are scored each on its own (from the tokenizer's BOS when it has one); a shard folder's
    validation split as one stream, every token predicted (the first from EOS), as the trainer streams it.
    """
    from lmforge.evaluate import lm

    if data is None and ref.run_dir is not None:
        data = _pretrain_data(ref)
    path = _need_data(data, "lm")
    if path.is_dir():
        stream, eos = _shard_stream(path, "val", tokenizer, "--data")
        if settings.limit:
            stream = stream[:settings.limit]
        result = _token_perplexity(model, tokenizer, stream, eos, settings)
        from lmforge.baselines import split_documents

        ids, score_first = [list(map(int, d)) for d in split_documents(stream, eos)], True
    else:
        docs = read_documents(path, tokenizer, "--data")
        if settings.limit:
            docs = docs[:settings.limit]
        result = lm.perplexity(model, tokenizer, docs, max_len=settings.max_len, stride=settings.stride,
                               batch_size=settings.batch_size)
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in docs]
        score_first = result.get("prefix_id") is not None
    out = {"lm": {**result, "data": str(path)}}
    kn_source = settings.kn_train or (str(path) if path.is_dir() else None)
    if kn_source:
        kn_path = Path(kn_source)
        if not kn_path.exists():
            raise EvaluationError(f"--kn_train {kn_source}: no such file or folder")
        # models that share a tokenizer (a checkpoint and its +int8 copy) share the baseline: fitted once a run
        key = (str(kn_path.resolve()), str(path.resolve()), settings.limit, tokenizer.fingerprint(),
               tuple(settings.kn_orders), score_first)
        if key not in _KN_FITTED:
            train = read_documents(kn_path, tokenizer, "--kn_train", split="train")
            if train and isinstance(train[0], str):
                train = [tokenizer.encode(t, add_special_tokens=False) for t in train]
            _KN_FITTED[key] = lm.kneser_ney_baseline(train, ids, tokenizer.vocab_size, orders=settings.kn_orders,
                                                     score_first=score_first)
        out["kneser_ney"] = {**_KN_FITTED[key], "train": str(kn_path)}
    return out


_KN_FITTED: dict[tuple, dict] = {}
"""Kneser-Ney results of the current `run_evaluation`, by (train data, scored data, limit, tokenizer, orders)."""


def _pretrain_data(ref: ModelRef) -> str | None:
    """A pretraining run's prepared data folder (its config's data.path)."""
    data = ref.run_config.get("data") or {}
    return data.get("path") if isinstance(data, dict) else None


def _token_perplexity(model, tokenizer, stream: np.ndarray, eos: int, settings: EvalSettings) -> dict:
    """Perplexity over one token stream, every token scored (the first predicted from EOS)."""
    from lmforge.evaluate import lm

    if len(stream) < 1:
        raise EvaluationError("--data: no token to score")
    ids = [int(t) for t in stream]
    max_len = settings.max_len or model.cfg.max_seq_len
    logp, n = lm.rolling_loglikelihood(model, ids, max_len=max_len, stride=settings.stride, prefix_id=eos,
                                       batch_size=settings.batch_size)
    n_bytes = len(tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8"))
    nll = -logp / max(n, 1)
    return {"perplexity": math.exp(min(nll, 50)), "nll": nll, "bits_per_byte": -logp / math.log(2) / max(n_bytes, 1),
            "tokens": n, "bytes": n_bytes, "max_len": max_len, "stride": settings.stride or max_len,
            "prefix_id": eos}


def _pseudo_lm(model, tokenizer, settings: EvalSettings, data: str | None) -> dict:
    from lmforge.evaluate import lm

    texts = read_documents(_need_data(data, "pseudo-lm"), tokenizer, "--data")
    if texts and not isinstance(texts[0], str):
        texts = [tokenizer.decode(doc) for doc in texts]
    return lm.pseudo_perplexity(model, tokenizer, texts[:settings.limit] if settings.limit else texts,
                                batch_size=settings.batch_size)


# ---------------------------------------------------------------------------------------------- multiple choice


def _multiple_choice(model, tokenizer, settings: EvalSettings, data: str | None) -> dict:
    out: dict[str, Any] = {}
    if data:
        from lmforge.evaluate.choice import multiple_choice, read_choice_items

        items = read_choice_items(_need_data(data, "multiple-choice"))
        pool = read_choice_items(Path(settings.validation)) if settings.validation else None
        if settings.limit:
            items = items[:settings.limit]
        result = multiple_choice(model, tokenizer, items, template=settings.template,
                                 num_fewshot=settings.num_fewshot, shots_pool=pool, seed=settings.seed,
                                 batch_size=settings.batch_size)
        out["multiple_choice"] = {k: v for k, v in result.items() if k != "predictions"} | {"source": "lmforge"}
    if settings.lm_eval_tasks:
        out["lm_eval"] = run_lm_eval(model, tokenizer, settings)
    if not out:
        raise EvaluationError("the multiple-choice evaluation needs --data (a JSONL of items) or --lm_eval_tasks")
    return out


def run_lm_eval(model, tokenizer, settings: EvalSettings) -> dict:
    """lm-eval's scores of the model on `settings.lm_eval_tasks` (our local tasks are written to a temporary
    folder and included), as {task: {metric: value}}."""
    import tempfile

    from lmforge.evaluate import harness

    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise EvaluationError("--lm_eval_tasks needs lm-eval: pip install 'lmforge[eval]'") from err
    with tempfile.TemporaryDirectory(prefix="lmforge-lm-eval-") as tmp:
        folder = harness.write_tasks(Path(tmp))
        adapter = harness.LMForgeLM(model=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        results = lm_eval.simple_evaluate(model=adapter, tasks=list(settings.lm_eval_tasks),
                                          num_fewshot=settings.num_fewshot or None, limit=settings.limit,
                                          task_manager=TaskManager(include_path=str(folder)),
                                          random_seed=settings.seed, numpy_random_seed=settings.seed,
                                          torch_random_seed=settings.seed, fewshot_random_seed=settings.seed)
    table = {}
    for name, metrics in results["results"].items():
        table[name] = {key.split(",")[0]: float(value) for key, value in metrics.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in key}
    return table


# ---------------------------------------------------------------------------------------------- labelled tasks


def _task_for(model, ref: ModelRef, task: str, settings: EvalSettings):
    from lmforge.tasks import get_task
    from lmforge.tasks.spec import TaskSpec

    options = dict(ref.run_config.get("task_options") or {})
    options.update(settings.task_options)
    options["name"] = task
    known = set(TaskSpec.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise EvaluationError(f"--task_options: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    spec = TaskSpec(**options)
    impl = get_task(spec)
    labels = getattr(model.cfg, "labels", None)
    if hasattr(impl, "use_labels"):
        if task in ("classification", "token-classification") and not labels:
            raise EvaluationError(f"{ref.spec}: the model has no label names (config labels); it was not "
                                  "fine-tuned for classification by lmforge or transformers")
        if labels:
            impl.use_labels(labels)
    return impl


def _read_split(path: Path, impl, tokenizer, what: str):
    from lmforge.tasks.data import read_examples

    required = impl.columns() if hasattr(impl, "columns") else ()
    examples = read_examples(path, impl.spec, required=required)
    if not examples:
        raise EvaluationError(f"{what} {path}: no rows")
    _check_labels(examples, impl, path)
    return examples, impl.features(examples, tokenizer, "test")


def _check_labels(examples, impl, path: Path) -> None:
    """Every label of the file must be one the model knows (else: the file and the labels on either side)."""
    from lmforge.evaluate.classification import check_label_sets

    labels = getattr(impl, "labels", None)
    if labels is None or impl.spec.name not in ("classification", "token-classification"):
        return
    if impl.spec.name == "classification":
        found = sorted({str(e.fields.get(impl.spec.label)) for e in examples})
    else:
        found = sorted({str(t) for e in examples for t in (e.fields.get(impl.spec.tags) or [])})
    known = [str(n) for n in labels.names]
    if not set(found) <= set(known):
        check_label_sets(known, found, where=f"{path} vs the model's labels")


def _labelled_task(model, tokenizer, ref: ModelRef, task: str, settings: EvalSettings, data: str | None) -> dict:
    impl = _task_for(model, ref, task, settings)
    path = _need_data(data, task)
    examples, features = _read_split(path, impl, tokenizer, "--data")
    if settings.limit:
        examples, features = _limit(examples, features, settings.limit)
    if task in ("seq2seq", "chat"):  # BLEU, chrF, ROUGE and exact match of the greedy outputs, and a few of them
        from lmforge.evaluate.generation import generation_metrics

        predictions, references = impl.predict_texts(model, examples, features, tokenizer, settings.batch_size)
        samples = [{"prediction": p, "reference": r} for p, r in zip(predictions[:5], references[:5])]
        return {"generation": {**generation_metrics(predictions, references), "n": len(predictions),
                               "samples": samples}}
    if task not in ("classification", "regression"):
        metrics = impl.evaluate(model, examples, features, tokenizer, settings.batch_size)
        section = {"token-classification": "tagging", "qa": "qa"}.get(task, "generation")
        return {section: _task_section(task, metrics, len(examples))}
    from lmforge.tasks.classification import pad_id_of

    logits = impl.predict(model, features, pad_id_of(tokenizer), settings.batch_size)
    if task == "regression":
        from lmforge.evaluate.classification import regression_metrics

        gold = [f["label"] for f in features]
        return {"regression": {**regression_metrics(gold, logits.squeeze(-1).tolist()), "n": len(gold)}}
    out = _classification(impl, model, tokenizer, examples, features, logits, settings)
    text = settings.explain or impl._texts(examples[0])[0]
    out["interpretability"] = _interpretability(model, tokenizer, text)
    return out


def _limit(examples, features, limit: int):
    """The first `limit` examples and their features (a QA example may have several)."""
    examples = examples[:limit]
    if len(features) == len(examples) or "example" not in (features[0] if features else {}):
        return examples, features[:limit]
    return examples, [f for f in features if f["example"] < limit]


def _task_section(task: str, metrics: dict, n: int) -> dict:
    metrics = {k: float(v) for k, v in metrics.items()}
    if task == "token-classification":
        return {"mode": "default", "precision": metrics.get("entity_precision"), "recall": metrics.get("entity_recall"),
                "f1": metrics.get("entity_f1"), "token_accuracy": metrics.get("token_accuracy"), "n": n}
    return {**metrics, "n": n}


def _classification(impl, model, tokenizer, examples, features, logits: torch.Tensor, settings: EvalSettings) -> dict:
    from lmforge.evaluate.calibration import apply_temperature, expected_calibration_error, fit_temperature
    from lmforge.evaluate.classification import classification_report
    from lmforge.tasks.classification import pad_id_of

    names = impl.labels.id2label
    gold = [f["label"] for f in features]
    probs = torch.softmax(logits.double(), -1).numpy()
    pred = probs.argmax(-1).tolist()
    report = classification_report(gold, pred, labels=names, scores=probs if len(names) == 2 else None)
    calibration = expected_calibration_error(probs, gold, n_bins=settings.bins)
    calibration["n_bins"] = settings.bins
    if settings.validation:
        _, val_features = _read_split(Path(settings.validation), impl, tokenizer, "--validation")
        val_logits = impl.predict(model, val_features, pad_id_of(tokenizer), settings.batch_size)
        temperature = fit_temperature(val_logits.double().numpy(), [f["label"] for f in val_features])
        after = expected_calibration_error(apply_temperature(logits.double().numpy(), temperature), gold,
                                           n_bins=settings.bins)
        calibration.update(temperature=temperature, ece_after=after["ece"], bins_after=after["bins"])
    return {"classification": {**report, "n": len(gold)}, "calibration": calibration,
            "robustness": _robustness(impl, model, tokenizer, examples, gold, report["accuracy"], settings)}


def _robustness(impl, model, tokenizer, examples, gold: list[int], clean: float, settings: EvalSettings) -> dict:
    """Accuracy on the same examples with their text perturbed (seeded), per perturbation; `clean` is the
    accuracy on the texts as they are."""
    from lmforge.evaluate.robustness import robustness
    from lmforge.tasks.base import Example
    from lmforge.tasks.classification import pad_id_of

    column = impl.spec.text
    texts = [str(e.fields[column]) for e in examples]
    kinds = list(settings.perturbations) if settings.perturbations else None  # None: those that fit the text

    def accuracy(new_texts: Sequence[str], references: Sequence[int]) -> float:
        rows = [Example({**e.fields, column: t}, e.source, e.line) for e, t in zip(examples, new_texts)]
        logits = impl.predict(model, impl.features(rows, tokenizer, "test"), pad_id_of(tokenizer),
                              settings.batch_size)
        return float((logits.argmax(-1) == torch.tensor(list(references))).double().mean())

    result = robustness(accuracy, texts, gold, kinds=kinds, rate=settings.perturbation_rate, seed=settings.seed,
                        clean=clean)
    return {"metric": "accuracy", **result}


def _interpretability(model, tokenizer, text: str) -> dict:
    """Attention of the last layer (mean over heads) and gradient x input saliency for one input."""
    from lmforge.evaluate.interpret import attention_maps, saliency

    maps = attention_maps(model, tokenizer, text)
    attention = np.asarray(maps["attention"])
    layer = attention.shape[0] - 1
    sal = saliency(model, tokenizer, text)
    return {"text": text, "tokens": list(maps["tokens"]),
            "attention": {"layer": layer, "head": "mean", "matrix": attention[layer].mean(0).round(5).tolist()},
            "saliency": {"scores": [float(s) for s in sal["scores"]], "target_name": str(sal.get("target_name"))}}


# ---------------------------------------------------------------------------------------------- efficiency


def _efficiency(model, tokenizer, ref: ModelRef, settings: EvalSettings, task: str, data: str | None) -> dict:
    """Parameters, size on disk, latency per example (p50/p90/p99), throughput and peak memory."""
    from lmforge.evaluate.efficiency import measure, size_on_disk
    from lmforge.interop.hf import resolve

    texts = _sample_texts(tokenizer, task, data, settings)
    m = measure(model, tokenizer, texts, batch_size=1, n=settings.latency_examples)
    result = {"parameters": m["parameters"], "trainable": m["trainable"], "weight_bytes": m.get("weight_bytes"),
              "peak_rss_mib": m["peak_rss_mib"], "batch_size": m["batch_size"], "calls": m["calls"],
              "latency_ms": {"p50": m["p50_ms"], "p90": m["p90_ms"], "p99": m["p99_ms"], "mean": m["mean_ms"]},
              "throughput": {"examples_per_s": m["examples_per_s"], "tokens_per_s": m["tokens_per_s"]},
              "dtype": m["dtype"]}
    if ref.variant is None:  # a variant made after loading has no file of its own: its weight_bytes tell its size
        try:
            result["size_bytes"] = size_on_disk(resolve(ref.path))
        except Exception:  # a size we cannot tell (a named model not fetched) is left out, not an error
            pass
    return result


def _precision(model, ref: ModelRef) -> str:
    """int8 / q8_0 / int4 for a quantized model (a +variant, or a checkpoint `lmforge quantize` wrote), else its
    dtype."""
    quantized = getattr(model, "quantization", None)
    if ref.variant in ("int8", "q8_0", "int4"):
        return ref.variant
    if quantized is not None and quantized.scheme in ("int8", "q8_0", "int4"):
        return quantized.scheme
    return str(model.dtype).split(".")[-1]


def _sample_texts(tokenizer, task: str, data: str | None, settings: EvalSettings) -> list[str]:
    """A few inputs of the task's data for the latency measurement (sentences when there is no text data)."""
    texts: list[str] = []
    try:
        if data and task in ("lm", "pseudo-lm"):
            docs = read_documents(Path(data), tokenizer, "--data")
            texts = [d if isinstance(d, str) else tokenizer.decode(d[:128]) for d in docs[:settings.latency_examples]]
        elif data and Path(data).is_file():
            for line in Path(data).read_text(encoding="utf-8").splitlines()[:settings.latency_examples]:
                row = json.loads(line)
                value = next((row[k] for k in ("text", "query", "question", "prompt", "context") if k in row), None)
                if isinstance(value, str):
                    texts.append(value)
    except (ValueError, OSError, EvaluationError):
        texts = []
    return [t[:2000] for t in texts] or ["The quick brown fox jumps over the lazy dog."] * 4


__all__ = ["EvalSettings", "ModelRef", "TASKS", "evaluate_model", "load_for_eval", "read_documents",
           "resolve_model", "run_evaluation", "run_lm_eval"]
