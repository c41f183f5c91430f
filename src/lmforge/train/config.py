"""Run configuration: dataclasses whose fields are the YAML keys and the command-line flags.

They are frozen (no field can be reassigned; derive a changed copy with `dataclasses.replace`), and
nothing in lmforge mutates their dict and list fields, so the default instances the command line's
signatures need can be shared between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train: a preset (random initialisation) or a checkpoint to continue from."""

    preset: str = "llama-tiny"
    """A preset of `lmforge.models.presets` (llama-tiny, gpt2-tiny, bert-tiny, bart-tiny, ...); not used
    when `checkpoint` is given."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields to change, e.g. {n_layers: 2, d_model: 128}; vocab_size comes from the data.
    With a checkpoint, only fields that keep the weights' shapes (dropout, ...)."""
    checkpoint: str | None = None
    """Start from these weights instead: a Hugging Face folder, an lmforge checkpoint folder (a run's
    step-*/model), or a named offline model (all-minilm-l6-v2). Heads the objective needs and the
    checkpoint lacks are initialised (and the log says so); the data must use the checkpoint's tokenizer."""


@dataclass(frozen=True)
class DataSpec:
    """Where the tokens come from."""

    path: str = ""
    """A folder written by `lmforge data prepare`."""
    tokenizer: str = ""
    """The tokenizer folder the data was prepared with (checked against the manifest fingerprint)."""


@dataclass(frozen=True)
class TaskData:
    """The labelled files of a fine-tuning run."""

    train: str = ""
    """Training rows: JSONL, CSV or TSV (column names: `task_options`)."""
    val: str = ""
    """Validation rows, evaluated every `evals_per_epoch` of an epoch (the metric picks the best checkpoint)."""
    test: str | None = None
    """Held-out rows, evaluated once with the best checkpoint at the end."""
    tokenizer: str | None = None
    """The tokenizer folder; None: the checkpoint's own (its folder, or the GGUF file's)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train."""

    steps: int = 1000
    """Optimizer steps to train for (the run ends there, or earlier at `time_limit`)."""
    batch_size: int = 16
    """Global batch in sequences per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Sequences per forward pass and process; gradient accumulation makes up the rest (None: no accumulation)."""
    seq_len: int = 256
    """Tokens per training sequence (at most the model's max_seq_len)."""
    lr: float = 1e-3
    """Peak learning rate, reached after the warmup."""
    min_lr_ratio: float = 0.1
    """The schedule decays to lr x min_lr_ratio at the last step (cosine and linear schedules)."""
    warmup_steps: int = 100
    """Steps of linear warmup from lr / warmup_steps to lr."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after the warmup."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay, on matrices only (not on norms, biases or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's (beta1, beta2)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast where the hardware has it natively (GPUs; CPUs with AVX-512-BF16 or AMX, measured
    1.5-3.5x faster there, see bench/README.md), else fp32. fp16 (with loss scaling) needs a GPU."""
    compile: bool = False
    """torch.compile the model."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, about a third more compute."""
    seed: int = 0
    """Seeds the model's initialisation, the data order, masking and dropout."""
    eval_every: int = 200
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batches: int | None = None
    """Validation batches per periodic evaluation; None: the whole split. The final one is always whole."""
    checkpoint_every: int = 200
    """Write a checkpoint every this many steps (and at the end, and at the time limit)."""
    keep_last: int = 2
    """Checkpoints kept (plus the best by validation loss); 0 keeps all."""
    best_metric: str = "val_loss"
    """The validation metric that picks the best checkpoint (kept besides the last ones) and drives early stopping:
    val_loss or val_ppl (lower is better), or a task metric of fine-tuning (val_accuracy, val_entity_f1,
    val_f1, val_rougeL, ...: higher is better)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations in a row without a better `best_metric` (None: never stop early)."""
    checkpoint_trainable_only: bool = False
    """Store only the trainable parameters in checkpoints, with the path and sha256 of the frozen base
    (needs model.checkpoint); resuming checks the base is unchanged."""
    log_every: int = 10
    """Log loss, learning rate, gradient norm, tokens/s and MFU every this many steps."""
    max_bad_steps: int = 5
    """Stop with an error after this many NaN/Inf steps in a row (each is skipped)."""
    distributed: Literal["auto", "ddp", "fsdp", "tp", "fsdp-tp", "none"] = "auto"
    """Strategy under torchrun with several processes: auto (= ddp), ddp, fsdp; tp splits every layer over all
    processes (tensor parallelism, each sees the whole batch); fsdp-tp: TP groups of `tp_size` processes, FSDP
    over the groups (a 2-D mesh); none trains each process alone. One process ignores the strategy."""
    tp_size: int | None = None
    """Processes per tensor-parallel group under fsdp-tp (a divisor of the process count, e.g. the GPUs of one
    node); under tp, null or the process count."""
    time_limit: float | None = None
    """Stop (with a checkpoint and a final evaluation) after this many minutes; None: no limit."""
    sample_every: int = 0
    """Print sample generations every N steps (decoders; 0: only at the end)."""
    sample_prompts: list[str] = field(default_factory=lambda: ["The ", "今天"])
    """Prompts of the sample generations."""
    progress: bool = True
    """Show a progress bar (validation results and the end-of-run summary are printed either way)."""

    def validate(self, world_size: int = 1, model: Any = None) -> None:
        """Check every field at once (against the model's `ModelConfig` too, when given); raise one
        `ConfigError` listing all problems, each named as its command-line flag (`train.*`).

        (This module imports nothing heavy: the command line reads its dataclasses before anything runs.)
        """
        from lmforge.models.config import ConfigError

        problems = []
        positive = ("steps", "batch_size", "seq_len", "eval_every", "checkpoint_every", "log_every", "max_bad_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"train.{name}={value!r} must be a positive integer")
        for name in ("micro_batch_size", "eval_batches", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                problems.append(f"train.{name}={value!r} must be a positive integer or null")
        for name in ("warmup_steps", "keep_last", "sample_every"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}={getattr(self, name)!r} must be >= 0")
        if not self.lr > 0 or self.lr != self.lr:
            problems.append(f"train.lr={self.lr!r} must be > 0 (the peak learning rate)")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"train.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if self.weight_decay < 0:
            problems.append(f"train.weight_decay={self.weight_decay!r} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"train.betas={list(self.betas)!r} must be two numbers in [0, 1)")
        if self.grad_clip < 0:
            problems.append(f"train.grad_clip={self.grad_clip!r} must be >= 0 (0 disables clipping)")
        if self.time_limit is not None and not self.time_limit > 0:
            problems.append(f"train.time_limit={self.time_limit!r} must be > 0 minutes, or null")
        # Under tensor parallelism a batch is split over the TP groups (data-parallel ranks), not the processes.
        tp = 1
        if world_size > 1 and self.distributed == "tp":
            if self.tp_size not in (None, world_size):
                problems.append(f"train.tp_size={self.tp_size} must be null or the process count {world_size} "
                                "under train.distributed=tp (use fsdp-tp for smaller TP groups)")
            tp = world_size
        elif world_size > 1 and self.distributed == "fsdp-tp":
            if self.tp_size is None:
                problems.append("train.distributed=fsdp-tp needs train.tp_size: the processes per tensor-parallel "
                                "group, a divisor of the process count")
            elif not isinstance(self.tp_size, int) or self.tp_size <= 0 or world_size % self.tp_size:
                problems.append(f"train.tp_size={self.tp_size!r} must divide the process count {world_size}")
            else:
                tp = self.tp_size
        elif self.tp_size is not None and (not isinstance(self.tp_size, int) or self.tp_size <= 0):
            problems.append(f"train.tp_size={self.tp_size!r} must be a positive integer or null")
        if tp > 1 and model is not None:
            layers = [model.for_layer(i) for i in range(model.n_layers)] if model.has_layer_widths else [model]
            for i, layer in enumerate(layers):
                where = f"model.{{}} of layer {i}" if model.has_layer_widths else "model.{}"
                for name in ("n_heads", "n_kv_heads", "d_ff"):
                    if getattr(layer, name) % tp:
                        problems.append(f"train.distributed={self.distributed} splits {where.format(name)}="
                                        f"{getattr(layer, name)} over {tp} processes: it must be divisible by {tp}")
        dp = world_size // tp
        if isinstance(self.batch_size, int) and self.batch_size > 0:
            local = self.batch_size // dp
            micro = self.micro_batch_size or local
            if self.batch_size % dp:
                over = f"{dp} processes" if tp == 1 else f"{dp} data-parallel groups ({world_size} processes, tp {tp})"
                problems.append(f"train.batch_size={self.batch_size} does not split evenly over {over}")
            elif isinstance(micro, int) and micro > 0 and local % micro:
                per = f"{local} per process" if dp > 1 else f"{local}"
                problems.append(f"train.micro_batch_size={micro} does not divide the batch of {per}: use a divisor "
                                f"of it, e.g. {max(d for d in range(1, micro + 1) if local % d == 0)}")
        if model is not None and isinstance(self.seq_len, int) and self.seq_len > model.max_seq_len:
            problems.append(f"train.seq_len={self.seq_len} exceeds the model's max_seq_len={model.max_seq_len}: "
                            "lower train.seq_len or raise model.overrides.max_seq_len")
        if problems:
            raise ConfigError("invalid training configuration: " + "; ".join(problems))

    @property
    def greater_is_better(self) -> bool:
        """Whether a larger `best_metric` is better (losses, perplexities and errors are better smaller)."""
        return not any(word in self.best_metric for word in ("loss", "ppl", "mse", "error"))

    def micro_batches(self, dp_size: int = 1) -> tuple[int, int]:
        """(micro-batch size, accumulation steps) per data-parallel rank and optimizer step.

        `dp_size` is the number of slices a batch splits into: the processes, or the tensor-parallel
        groups (whose ranks all train on the same slice)."""
        local = self.batch_size // dp_size
        micro = self.micro_batch_size or local
        return micro, local // micro
