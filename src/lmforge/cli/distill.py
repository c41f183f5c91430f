"""`lmforge distill`: train a smaller student from a teacher (knowledge distillation) with the normal trainer.

Only configuration dataclasses are imported here; the jobs are imported inside the function.
"""

from __future__ import annotations

from typing import Literal

from lmforge.compress.config import DistillConfig
from lmforge.tasks.spec import TaskSpec
from lmforge.train.config import DataSpec, TaskData, TrainConfig

Task = Literal["clm", "classification", "regression", "token-classification", "qa", "seq2seq", "chat"]
DEFAULT_DISTILL, DEFAULT_DATA, DEFAULT_TOKENS, DEFAULT_OPTIONS = DistillConfig(), TaskData(), DataSpec(), TaskSpec()
DEFAULT_TRAIN = TrainConfig(lr=1e-4, batch_size=32, warmup_steps=10, weight_decay=0.0, schedule="linear",
                            min_lr_ratio=0.0, best_metric="auto", keep_last=1, log_every=10)


def distill(
    teacher: str,
    task: Task = "classification",
    distill: DistillConfig = DEFAULT_DISTILL,
    data: TaskData = DEFAULT_DATA,
    tokens: DataSpec = DEFAULT_TOKENS,
    task_options: TaskSpec = DEFAULT_OPTIONS,
    train: TrainConfig = DEFAULT_TRAIN,
    epochs: float | None = 3.0,
    evals_per_epoch: int = 1,
    out_dir: str = "runs/distill",
    resume: bool = False,
    overwrite: bool = False,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> None:
    """Distill a teacher into a student: temperature-scaled KL on the logits (times T^2) plus the task's own loss,
    optionally hidden-state and attention-map transfer; the teacher is frozen in the same job.

    Args:
        teacher: The teacher: a fine-tuning run's model/ folder (a classifier), a causal LM (an lmforge or Hugging Face
            folder, a GGUF file, a named model: smollm2-135m-instruct).
        task: clm (a decoder LM on prepared tokens: --tokens.path, --tokens.tokenizer; perplexity) or a labelled task
            as `lmforge finetune --task` (--data.train, --data.val, --data.test; the task's metric).
        distill: the student and the losses: --distill.student_init every-other (every other teacher layer, copied:
            DistilBERT), first (the first --distill.student_layers), 'layers:[0,2,4]', or fresh (new weights);
            --distill.temperature (T), --distill.alpha (weight of the soft loss, 1 - alpha on the task's own),
            --distill.hidden_weight (hidden-state MSE, TinyBERT), --distill.attention_weight (attention KL, MiniLM),
            --distill.layer_map (uniform, or the teacher layer of each student layer).
        data: labelled tasks: the files, as `lmforge finetune`.
        tokens: clm: the prepared data folder and its tokenizer (the teacher's tokenizer).
        task_options: the task's columns and lengths, as `lmforge finetune --task_options.*`.
        train: optimisation, precision, evaluation, checkpointing (clm: train.steps; labelled: set from epochs).
        epochs: labelled tasks: passes over the training split (None: train.steps).
        evals_per_epoch: labelled tasks: evaluations (and checkpoints) per epoch.
        out_dir: run folder: config.yaml, metrics.jsonl, tensorboard/, step-*/, model/ (the student), result.json.
        resume: continue exactly from the newest intact checkpoint in out_dir.
        overwrite: delete the run already in out_dir and start again.
        device: auto (a GPU when there is one), cpu or cuda.
    """
    from lmforge.compress.job import run_distill

    run_distill(teacher, task, distill, data, tokens, task_options, train, epochs, evals_per_epoch, out_dir,
                resume=resume, overwrite=overwrite, device=device)
