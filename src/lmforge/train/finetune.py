"""The fine-tuning job: a pretrained model + labelled files + a task + a method -> the adapted model, measured.

The same trainer as pretraining (`loop.train`): checkpoints, exact resume, logging, early stopping and
keep-best on the task's metric. What is new here is only the glue: read the files, fit the labels,
load the model as the task's kind, apply the method (`lmforge.adapt`), turn epochs into steps. At the
end the best checkpoint (by `train.best_metric`) is loaded back and written out:

- `adapter/`: what was trained, with the base's digest (`lmforge.adapt.save_adapter`), for every method;
- `model/`: the whole adapted model in lmforge's format (loads with `lmforge.interop.load_model`);
- `peft/`: LoRA adapters also in PEFT's layout; `hf/`: a Hugging Face folder of the model, with LoRA
  merged in, where the method and the family allow it (the log says why not otherwise);
- `result.json`: the best validation metrics, the test split's (when given), trainable parameters,
  seconds per epoch and peak memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from lmforge.adapt import AdaptConfig, AdaptError, adapt, save_adapter, trainable_summary
from lmforge.compress.config import DistillConfig, PruneConfig
from lmforge.evaluate.efficiency import peak_memory_mib as peak_rss_mib
from lmforge.models.config import ConfigError
from lmforge.tasks import TaskSpec, get_task
from lmforge.train.checkpoint import best_checkpoint, latest_checkpoint
from lmforge.train.config import ModelSpec, TaskData, TrainConfig
from lmforge.train.distributed import barrier, setup, teardown
from lmforge.train.loop import seed_everything, train
from lmforge.train.objective_finetune import FinetuneObjective, TaskSplit
from lmforge.train.rundir import check_same_run, clear_run_dir, plan_run_dir


def run_finetuning(data: TaskData, model: ModelSpec, task: TaskSpec, method: AdaptConfig, train_cfg: TrainConfig,
                   out_dir: str, epochs: float | None = 3.0, evals_per_epoch: int = 1, resume: bool = False,
                   overwrite: bool = False, device: str = "auto", arguments: dict | None = None,
                   prune: PruneConfig | None = None, distill: DistillConfig | None = None) -> dict:
    """Fine-tune `model` on `data` for `task` with `method`; write the run folder; return the result.

    `prune` keeps (or makes, on its schedule) a pruning mask through training (`lmforge.compress.prune`);
    `distill` trains a student of `model` (the teacher, frozen beside it; `lmforge.compress.distill`) with the
    task's loss and the teacher's outputs; the run folder's model/ (and hf/) is then the student.
    """
    import lmforge
    from lmforge.interop.native import load_model

    env = setup(device)
    run_dir = Path(out_dir)
    try:
        seed_everything(train_cfg.seed)
        task_impl = get_task(task)
        start = plan_run_dir(run_dir, resume, overwrite)
        if resume and start.message is None:
            check_same_run(run_dir, {"task": task.name, "method": method.method})
        barrier(env)
        splits, tokenizer = _read(data, model, task_impl)
        train_split, val_split = splits["train"], splits["val"]
        net, base, pad_id = _start_model(model, task_impl, method, tokenizer, digest=method.method != "full")
        objective = FinetuneObjective(task_impl, tokenizer, pad_id, eval_batch_size=train_cfg.micro_batch_size
                                      or train_cfg.batch_size)
        if task.max_length > net.cfg.max_seq_len:
            raise ConfigError(f"task_options.max_length={task.max_length} exceeds the model's max_seq_len="
                              f"{net.cfg.max_seq_len}")
        if distill is not None:
            from lmforge.compress.distill import distillation_setup

            net, objective = distillation_setup(net, objective, distill)
        cfg = _resolve_train(train_cfg, task_impl, len(train_split.features), epochs, evals_per_epoch,
                             trainable_only=base is not None)
        cfg.validate(env.world_size, net.cfg)
        on_step = _masked_training(prune, cfg.steps) if prune is not None else None
        summary = trainable_summary(net)
        if env.is_main:
            if start.message:
                print(start.message)
            if start.clear:
                clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            saved = arguments or {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model),
                                  "task": task.name, "method": method.method,
                                  "task_options": dataclasses.asdict(task), "adapt": method.to_dict(),
                                  "train": dataclasses.asdict(train_cfg), "epochs": epochs,
                                  "evals_per_epoch": evals_per_epoch, "out_dir": out_dir, "device": device}
            _write(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))
            facts = {"model_config": net.cfg.to_dict(), "parameters": summary.total,
                     "trainable_parameters": summary.trainable, "base": base, "steps": cfg.steps,
                     "steps_per_epoch": len(train_split.features) // cfg.batch_size,
                     "lmforge": lmforge.__version__, "torch": torch.__version__, "device": str(env.device)}
            _write(run_dir / "run.json", json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
            print(f"{model.checkpoint or model.preset} as {task_impl.model_task}, method {method.method}: {summary}; "
                  f"train {len(train_split.examples):,} rows ({len(train_split.features):,} features), "
                  f"val {len(val_split.examples):,}; {cfg.steps} steps")
        barrier(env)
        result = train(net, objective, train_split, val_split, cfg, run_dir, env, resume=resume, base=base,
                       on_step=on_step)
        if env.is_main:
            chosen = best_checkpoint(run_dir, cfg.best_metric, cfg.greater_is_better) or latest_checkpoint(run_dir)
            final = objective.export_model(load_model(chosen / "model"))
            if distill is not None:  # the student's size next to its teacher's
                result.update(teacher=model.checkpoint, teacher_parameters=net.teacher.num_parameters(),
                              distill=distill.to_dict())
            if on_step is not None:
                from lmforge.compress.prune import sparsity_of

                result["sparsity"] = round(sparsity_of(final, on_step.config.include).sparsity, 6)
            result.update(best_checkpoint=chosen.name, trainable_parameters=summary.trainable,
                          total_parameters=summary.total, method=method.method, task=task.name,
                          seconds_per_epoch=_seconds_per_epoch(result, len(train_split.features) // cfg.batch_size),
                          peak_rss_mib=peak_rss_mib())
            result["best_val"] = json.loads((chosen / "state.json").read_text())
            result["best_val"] = {k: v for k, v in result["best_val"].items() if k.startswith("val_")}
            if "test" in splits:
                final.to(env.device).eval()
                with torch.no_grad():
                    test = objective.eval_metrics(final, splits["test"], env.device)
                result["test"] = {f"test_{k}": round(float(v), 6) for k, v in test.items()}
                print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
            _export(final, tokenizer, run_dir, labels=final.cfg.labels)
            _write(run_dir / "result.json", json.dumps(result, indent=1, ensure_ascii=False))
        return result
    finally:
        teardown(env)


def _read(data: TaskData, model: ModelSpec, task) -> tuple[dict[str, TaskSplit], Any]:
    """The splits' examples and features, and the tokenizer (the data's, else the checkpoint's)."""
    from lmforge.interop.hf import resolve
    from lmforge.tasks.data import read_examples
    from lmforge.tokenizers import Tokenizer

    if not data.train or not data.val:
        raise ConfigError("fine-tuning needs data.train and data.val: labelled JSONL/CSV/TSV files")
    source = data.tokenizer or (model.checkpoint and resolve(model.checkpoint))
    if not source:
        raise ConfigError("data.tokenizer is needed when the model starts from a preset (no checkpoint to take it from)")
    tokenizer = Tokenizer.from_pretrained(source)
    paths = {"train": data.train, "val": data.val, **({"test": data.test} if data.test else {})}
    required = task.columns() if hasattr(task, "columns") else ()  # a row missing one is reported up front
    examples = {name: read_examples(path, task.spec, required=required) for name, path in paths.items()}
    task.fit(examples["train"])
    splits = {name: TaskSplit(rows, task.features(rows, tokenizer, name), name) for name, rows in examples.items()}
    return splits, tokenizer


def _start_model(spec: ModelSpec, task, method: AdaptConfig, tokenizer, digest: bool):
    """The task's model from the checkpoint (or a preset), adapted; the base reference of trainable-only
    checkpoints (None for full fine-tuning and presets); the pad id batches use."""
    from lmforge.interop import load_any
    from lmforge.interop.hf import resolve
    from lmforge.interop.native import weights_digest
    from lmforge.models import TASKS, get_preset

    overrides = {**task.model_overrides(), **spec.overrides}
    base = None
    if spec.checkpoint is None:
        ids = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id}
        net = TASKS[task.model_task](get_preset(spec.preset, **{**ids, **overrides}))
    else:
        folder = resolve(spec.checkpoint)
        try:
            net = load_any(folder, task=task.model_task, overrides=overrides)
        except ConfigError as err:
            raise ConfigError(f"model.checkpoint {spec.checkpoint}: {err}") from None
        if digest:
            base = {"path": str(folder), "sha256": weights_digest(folder), "overrides": overrides}
    if net.cfg.family not in task.families:
        raise ConfigError(f"task {task.name!r} trains {' or '.join(task.families)} models, but "
                          f"{spec.checkpoint or spec.preset} is a {net.cfg.family!r} model")
    if method.method == "prompt":
        net.adapt_tokenizer = tokenizer  # the soft prompt may start from the embeddings of a text
    # Parameters the checkpoint lacked (a head, the pooler a masked-LM export has not got) are new to the task:
    # they train with every method (recorded in the method's config), so trainable-only checkpoints and
    # adapter files hold them: the base cannot restore them.
    fresh = [n for n in getattr(net, "newly_initialised", ()) if not n.startswith("head.")]
    if fresh and method.method != "full":
        method = dataclasses.replace(method, also_train=sorted(set(method.also_train) | set(fresh)))
        print(f"not in {spec.checkpoint}, so trained with method {method.method}: {', '.join(fresh)}")
    adapt(net, method)
    net.__dict__.pop("adapt_tokenizer", None)  # (a tokenizer holds a lock: the model must stay copyable)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else net.cfg.pad_token_id
    if pad is None:
        pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0  # padded positions are masked anyway
    return net, base, pad


def _resolve_train(cfg: TrainConfig, task, n_features: int, epochs: float | None, evals_per_epoch: int,
                   trainable_only: bool) -> TrainConfig:
    """Epochs -> steps, evaluation and checkpoint cadence per epoch, the task's metric as the best one."""
    changes: dict[str, Any] = {"seq_len": task.spec.max_length}  # what FLOPs per token are counted for
    if cfg.best_metric == "auto":
        changes["best_metric"] = f"val_{task.metric}"
    if epochs is not None:
        if not epochs > 0 or evals_per_epoch < 1:
            raise ConfigError(f"epochs={epochs!r} must be > 0 and evals_per_epoch={evals_per_epoch!r} >= 1")
        per_epoch = max(n_features // cfg.batch_size, 1)
        every = max(per_epoch // evals_per_epoch, 1)
        changes.update(steps=max(math.ceil(epochs * per_epoch), 1), eval_every=every, checkpoint_every=every)
    if trainable_only:
        changes["checkpoint_trainable_only"] = True
    return dataclasses.replace(cfg, **changes)


def _masked_training(prune: PruneConfig, steps: int):
    """The trainer's `on_step` that keeps `prune`'s masks; a cubic schedule without `end_step` ends at 3/4 of the
    steps (the last quarter fine-tunes at the final sparsity, as Zhu & Gupta do)."""
    from lmforge.compress.prune import MaskedTraining

    if prune.schedule == "cubic" and prune.end_step is None:
        prune = dataclasses.replace(prune, end_step=max(prune.start_step + 1, round(0.75 * steps)))
    prune.validate()
    return MaskedTraining(prune)


def _seconds_per_epoch(result: dict, per_epoch: int) -> float | None:
    trained = result.get("trained_steps") or 0
    return round(result["seconds"] * per_epoch / trained, 2) if trained else None


def _export(model, tokenizer, run_dir: Path, labels) -> None:
    """adapter/, model/, and where possible peft/ and hf/ (see the module docstring)."""
    from lmforge.interop import save_pretrained
    from lmforge.interop.native import save_model

    method = model.adaptation.method if getattr(model, "adaptation", None) is not None else None
    if method is not None:  # (a distilled student was trained whole: no adapter)
        save_adapter(model, run_dir / "adapter", extra={"id2label": labels} if labels else None)
    save_model(model, run_dir / "model")
    tokenizer.save(run_dir / "model")
    if method in ("lora", "dora"):
        from lmforge.adapt.lora import merge_and_unload
        from lmforge.adapt.peft_format import save_peft

        try:
            save_peft(model, run_dir / "peft")
        except (ConfigError, AdaptError) as err:
            print(f"no PEFT export: {err}")
        try:
            model = merge_and_unload(model)
        except AdaptError as err:  # e.g. an adapted weight tied to another: the adapter stays unmerged
            print(f"no Hugging Face export: {err}")
            return
    if method in ("prefix", "prompt", "houlsby", "pfeiffer", "qlora"):
        print(f"no Hugging Face export: method {method} adds modules transformers' models do not have "
              "(the adapter/ and model/ folders hold the result)")
        return
    try:
        save_pretrained(model, run_dir / "hf")
        tokenizer.save(run_dir / "hf")
        print(f"Hugging Face export: {run_dir / 'hf'}")
    except (ConfigError, AdaptError) as err:
        print(f"no Hugging Face export: {err}")


def _write(path: Path, text: str) -> None:
    from lmforge.fileio import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = ["run_finetuning"]
