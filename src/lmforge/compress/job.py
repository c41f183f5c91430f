"""The pruning job behind `lmforge prune`: a checkpoint in, a pruned checkpoint (lmforge's format) out.

Unstructured and n:m pruning zero weights in place (the checkpoint keeps its shapes: `lmforge finetune
--prune.method ...` fine-tunes it with the masks kept); structured pruning removes attention heads and FFN
neurons (the checkpoint, the memory and the forward shrink; `lmforge finetune --model OUT` recovers it).
First-order Taylor importance needs calibration data: a text file (or JSONL with "text") for a causal LM, a
labelled JSONL/CSV/TSV file (text, label) for a sequence classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmforge.compress.config import PruneError


def run_prune(model: str, out: str, method: str = "magnitude", sparsity: float = 0.5, scope: str = "layer",
              include: list[str] | None = None, heads: float = 0.0, ffn: float = 0.0, importance: str = "l1",
              data: str | None = None, batches: int = 8, batch_size: int = 8, max_length: int = 256,
              multiple_of: int = 8, overwrite: bool = False) -> dict:
    """Prune `model` by `method` (magnitude, 2:4, structured) and save it to `out`; return the summary."""
    from lmforge.compress.prune import DEFAULT_INCLUDE, PruneConfig, prune_model
    from lmforge.compress.structured import structured_prune
    from lmforge.interop.convert import check_destination, copy_tokenizer
    from lmforge.interop.hf import resolve
    from lmforge.interop.native import load_any, save_model

    if method not in ("magnitude", "2:4", "structured"):
        raise PruneError(f"--method={method!r}: choose magnitude, 2:4 or structured")
    source, destination = resolve(model), Path(out)
    check_destination(destination, source, overwrite=overwrite)
    if method == "structured":
        if not heads and not ffn:
            raise PruneError("--method structured needs --heads and/or --ffn: the fraction of attention heads / FFN "
                             "neurons to remove, in [0, 1)")
        if importance == "taylor" and not data:
            raise PruneError("--importance taylor needs --data: calibration text (causal LM) or labelled rows "
                             "(classifier) to take gradients on; or use --importance l1 (no data)")
        lm = load_any(model, dtype=torch.float32)
        loss_fn, calibration = None, None
        if importance == "taylor":
            loss_fn, calibration = calibration_batches(lm, source, Path(data), batches, batch_size, max_length)
        summary = structured_prune(lm, heads=heads, ffn=ffn, importance=importance, scope=scope, loss_fn=loss_fn,
                                   batches=calibration, multiple_of=multiple_of)
        result = {"method": method, "heads": heads, "ffn": ffn, "importance": importance, "scope": scope,
                  "parameters_before": summary.parameters_before, "parameters_after": summary.parameters_after,
                  "summary": _plain(summary)}
    else:
        config = PruneConfig(method=method, sparsity=sparsity, scope=scope, include=include or DEFAULT_INCLUDE)
        config.validate()
        lm = load_any(model, dtype=torch.float32)
        summary = prune_model(lm, config)
        result = {"method": method, "sparsity": sparsity if method == "magnitude" else 0.5, "scope": scope,
                  "summary": _plain(summary), "measured": _plain(summary.report)}  # the zeros counted after
    lm.cfg.extra = {**lm.cfg.extra, "pruning": {k: v for k, v in result.items() if k not in ("summary", "measured")}}
    save_model(lm, destination)
    files = copy_tokenizer(source, destination)
    (destination / "pruning.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{model} -> {destination}: {summary}")
    print(f"tokenizer: {', '.join(files)}" if files else "tokenizer: none in the source folder, so none written")
    return result


def calibration_batches(model, source: Path, data: Path, n: int, batch_size: int,
                        max_length: int) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """(loss_fn, batches) of `data` for Taylor importance: next-token loss on text windows for a causal LM,
    cross-entropy on labelled rows for a sequence classifier."""
    import torch.nn.functional as F

    from lmforge.evaluate.job import read_documents
    from lmforge.models import CausalLM, SequenceClassifier
    from lmforge.objectives import causal_lm_loss
    from lmforge.tasks.data import read_examples
    from lmforge.tasks.spec import TaskSpec
    from lmforge.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_pretrained(source)  # (a GGUF file's own tokenizer too)
    if not data.exists():
        raise PruneError(f"--data {data}: no such file")
    if isinstance(model, CausalLM):
        docs = read_documents(data, tokenizer, "--data")
        stream = [i for d in docs for i in (d if isinstance(d, list) else tokenizer.encode(d) + [tokenizer.eos_id])
                  if i is not None]
        window = min(max_length, model.cfg.max_seq_len) + 1
        rows = [stream[i:i + window] for i in range(0, len(stream) - window + 1, window)][:n * batch_size]
        if not rows:
            raise PruneError(f"--data {data}: fewer than {window} tokens, too little to calibrate on")
        ids = torch.tensor(rows)
        batches = [{"input_ids": ids[i:i + batch_size]} for i in range(0, len(rows), batch_size)]

        def loss_fn(m, batch):
            x = batch["input_ids"]
            return causal_lm_loss(m(x[:, :-1]), targets=x[:, 1:])

        return loss_fn, batches
    if isinstance(model, SequenceClassifier):
        examples = read_examples(str(data), TaskSpec(name="classification"), required=("text", "label"))[:n * batch_size]
        names = model.cfg.labels or [f"LABEL_{i}" for i in range(model.cfg.num_labels)]
        labels = []
        for row in examples:
            label = row.fields["label"]
            if isinstance(label, str) and label in names:
                labels.append(names.index(label))
            elif isinstance(label, int) and 0 <= label < len(names):
                labels.append(label)
            else:
                raise PruneError(f"{row.where('label')}: label {label!r} is not one of the model's labels "
                                 f"({', '.join(names)})")
        batches = []
        for i in range(0, len(examples), batch_size):
            enc = tokenizer([r.fields["text"] for r in examples[i:i + batch_size]], padding=True, truncation=True,
                            max_length=min(max_length, model.cfg.max_seq_len))
            batches.append({**enc, "labels": torch.tensor(labels[i:i + batch_size])})

        def loss_fn(m, batch):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return F.cross_entropy(m(**inputs), batch["labels"])

        return loss_fn, batches
    raise PruneError(f"--importance taylor calibrates causal LMs and sequence classifiers; this model is a "
                     f"{type(model).__name__}: use --importance l1")


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses and objects with `to_dict` / `__dict__` as dicts, tensors as lists."""
    import dataclasses

    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def run_distill(teacher: str, task: str, distill, data, tokens, task_options, train, epochs: float | None,
                evals_per_epoch: int, out_dir: str, resume: bool = False, overwrite: bool = False,
                device: str = "auto") -> dict:
    """`lmforge distill`: the pretraining job (task clm, on prepared tokens) or the fine-tuning job (a labelled
    task) with the teacher as `model.checkpoint`, the student made from it, and the distillation objective."""
    import dataclasses

    from lmforge.adapt.config import AdaptConfig
    from lmforge.train.config import ModelSpec

    distill.validate()
    # config.yaml holds this command's arguments, so `lmforge distill --out_dir RUN --resume true` reads them back.
    arguments = {"teacher": teacher, "task": task, "distill": distill.to_dict(), "data": dataclasses.asdict(data),
                 "tokens": dataclasses.asdict(tokens), "task_options": dataclasses.asdict(task_options),
                 "train": dataclasses.asdict(train), "epochs": epochs, "evals_per_epoch": evals_per_epoch,
                 "out_dir": out_dir, "device": device}
    if task == "clm":
        from lmforge.train.pretrain import run_pretraining

        if train.best_metric == "auto":  # (the labelled tasks' default: their metric) an LM's is its loss
            train = dataclasses.replace(train, best_metric="val_loss")

        return run_pretraining(tokens, ModelSpec(checkpoint=teacher), "clm", train, out_dir, resume=resume,
                               device=device, overwrite=overwrite, distill=distill, arguments=arguments)
    from lmforge.train.finetune import run_finetuning

    return run_finetuning(data, ModelSpec(checkpoint=teacher), dataclasses.replace(task_options, name=task),
                          AdaptConfig(method="full"), train, out_dir, epochs=epochs, evals_per_epoch=evals_per_epoch,
                          resume=resume, overwrite=overwrite, device=device, arguments=arguments, distill=distill)
