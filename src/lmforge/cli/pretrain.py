"""`lmforge pretrain`: train a model from prepared data (also under `torchrun`)."""

from __future__ import annotations

from typing import Literal

from lmforge.train.config import DataSpec, ModelSpec, TrainConfig

Objective = Literal["clm", "mlm", "mlm-wwm", "mlm-nsp", "rtd", "span", "contrastive"]
# Defaults for the signature: frozen dataclasses, so sharing them is safe.
DEFAULT_MODEL, DEFAULT_TRAIN = ModelSpec(), TrainConfig()


def pretrain(
    data: DataSpec,
    model: ModelSpec = DEFAULT_MODEL,
    objective: Objective = "clm",
    train: TrainConfig = DEFAULT_TRAIN,
    out_dir: str = "runs/pretrain",
    resume: bool = False,
    overwrite: bool = False,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> None:
    """Pretrain a model; every field can come from a YAML file (`--config`) and be overridden.

    Args:
        data: prepared data folder and its tokenizer.
        model: preset and field overrides.
        objective: clm (decoders); mlm, mlm-wwm (whole words), mlm-nsp (BERT), rtd (ELECTRA), contrastive
            (SimCSE) for encoders; span (T5 span corruption) for encoder-decoders.
        train: optimisation, precision, evaluation, checkpointing.
        out_dir: run folder: config.yaml (this run's arguments), run.json, metrics.jsonl, tensorboard/,
            step-*/ checkpoints, hf/.
        resume: continue exactly from the newest intact checkpoint in out_dir (`--out_dir RUN --resume true`
            alone reads the rest from RUN/config.yaml).
        overwrite: delete the run already in out_dir (checkpoints, metrics, export) and start from step 0.
        device: auto (a GPU when there is one), cpu or cuda.
    """
    from lmforge.train.pretrain import run_pretraining

    run_pretraining(data, model, objective, train, out_dir, resume=resume,
                    device=device, overwrite=overwrite)
