"""Run configuration: dataclasses whose fields are the YAML keys and the command-line flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelSpec:
    """Which model to train."""

    preset: str = "llama-tiny"
    """A preset of `lmforge.models.presets` (llama-tiny, gpt2-tiny, bert-tiny, bart-tiny, ...)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields to change, e.g. {n_layers: 2, d_model: 128}; vocab_size comes from the data."""


@dataclass
class DataSpec:
    """Where the tokens come from."""

    path: str = ""
    """A folder written by `lmforge data prepare`."""
    tokenizer: str = ""
    """The tokenizer folder the data was prepared with (checked against the manifest fingerprint)."""


@dataclass
class TrainConfig:
    """How to train."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 16
    """Global batch in sequences per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Sequences per forward pass and process; gradient accumulation makes up the rest."""
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 where the hardware has it natively (GPU, AVX-512-BF16/AMX CPUs), else fp32."""
    compile: bool = False
    """torch.compile the model."""
    activation_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 200
    eval_batches: int | None = None
    """Validation batches per periodic evaluation; None: the whole split. The final one is always whole."""
    checkpoint_every: int = 200
    keep_last: int = 2
    """Checkpoints kept (plus the best by validation loss)."""
    log_every: int = 10
    max_bad_steps: int = 5
    """Stop with an error after this many NaN/Inf steps in a row (each is skipped)."""
    distributed: Literal["auto", "ddp", "fsdp", "none"] = "auto"
    time_limit: float | None = None
    """Stop (with a checkpoint) after this many minutes."""
    sample_every: int = 0
    """Print sample generations every N steps (decoders; 0: only at the end)."""
    sample_prompts: list[str] = field(default_factory=lambda: ["The ", "今天"])
    progress: bool = True
