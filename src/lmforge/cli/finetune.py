"""`lmforge finetune`: adapt a pretrained model to a labelled task with any fine-tuning method."""

from __future__ import annotations

from typing import Any, Literal

from lmforge.adapt.config import AdaptConfig
from lmforge.compress.config import PruneConfig
from lmforge.tasks.spec import TaskSpec
from lmforge.train.config import ModelSpec, TaskData, TrainConfig

Task = Literal["classification", "regression", "token-classification", "qa", "seq2seq", "chat"]
Method = Literal["full", "ffn", "head", "bitfit", "freeze", "lora", "dora", "qlora", "houlsby", "pfeiffer",
                 "prefix", "prompt"]
# Defaults for the signature: frozen dataclasses, so sharing them is safe. Fine-tuning's own training
# defaults: a small learning rate, no weight decay on a few epochs, the task's metric picks the best.
DEFAULT_DATA, DEFAULT_OPTIONS, DEFAULT_ADAPT = TaskData(), TaskSpec(), AdaptConfig()
DEFAULT_TRAIN = TrainConfig(lr=2e-4, batch_size=16, warmup_steps=10, weight_decay=0.0, schedule="linear",
                            min_lr_ratio=0.0, best_metric="auto", keep_last=1, log_every=10)


def finetune(
    model: str = "all-minilm-l6-v2",
    data: TaskData = DEFAULT_DATA,
    task: Task = "classification",
    method: Method = "lora",
    task_options: TaskSpec = DEFAULT_OPTIONS,
    adapt: AdaptConfig = DEFAULT_ADAPT,
    train: TrainConfig = DEFAULT_TRAIN,
    epochs: float | None = 3.0,
    evals_per_epoch: int = 1,
    model_overrides: dict[str, Any] | None = None,
    prune: PruneConfig | None = None,
    out_dir: str = "runs/finetune",
    resume: bool = False,
    overwrite: bool = False,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> None:
    """Fine-tune a model on a task; every field can come from a YAML recipe (`--config configs/finetune/...`).

    Args:
        model: the pretrained checkpoint: an lmforge or Hugging Face folder, a .gguf file, or a named offline
            model (all-minilm-l6-v2, smollm2-135m-instruct).
        data: the labelled files (`--data.train`, `--data.val`, `--data.test`) and optionally the tokenizer.
        task: classification (also sentence pairs), regression, token-classification, qa, seq2seq, chat.
        method: full, ffn, head, bitfit, freeze, lora, dora, qlora, houlsby, pfeiffer, prefix, prompt.
        task_options: column names and per-task settings (max_length, stride, packing, ...).
        adapt: the method's settings (LoRA rank and targets, adapter width, prefix length, ...).
        train: optimisation, precision, evaluation and checkpointing (train.steps is set from `epochs`).
        epochs: passes over the training split (None: train for train.steps).
        evals_per_epoch: evaluations (and checkpoints) per epoch.
        model_overrides: ModelConfig fields to change that keep the weights' shapes (dropout, ...).
        prune: keep weights pruned while training (`--prune.method magnitude --prune.sparsity 0.5`, or 2:4): the masks
            are re-applied after every step; `--prune.schedule cubic` raises the sparsity gradually (Zhu & Gupta),
            reaching it at `--prune.end_step` (default: 3/4 of the steps). A model pruned by `lmforge prune` keeps its
            zeros with the same settings.
        out_dir: run folder: config.yaml, run.json, metrics.jsonl, tensorboard/, step-*/, adapter/, model/,
            peft/ and hf/ where possible, result.json.
        resume: continue exactly from the newest intact checkpoint in out_dir (`--out_dir RUN --resume true` alone
            reads the rest from RUN/config.yaml).
        overwrite: delete the run already in out_dir and start again.
        device: auto (a GPU when there is one), cpu or cuda.
    """
    import dataclasses

    from lmforge.train.finetune import run_finetuning

    spec = ModelSpec(checkpoint=model, overrides=dict(model_overrides or {}))
    arguments = {"model": model, "data": dataclasses.asdict(data), "task": task, "method": method,
                 "task_options": dataclasses.asdict(task_options), "adapt": adapt.to_dict(),
                 "train": dataclasses.asdict(train), "epochs": epochs, "evals_per_epoch": evals_per_epoch,
                 "model_overrides": dict(model_overrides or {}), "prune": prune.to_dict() if prune else None,
                 "out_dir": out_dir, "device": device}
    run_finetuning(data, spec, dataclasses.replace(task_options, name=task), dataclasses.replace(adapt, method=method),
                   train, out_dir, epochs=epochs, evals_per_epoch=evals_per_epoch, resume=resume,
                   overwrite=overwrite, device=device, arguments=arguments, prune=prune)
