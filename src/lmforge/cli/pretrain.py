"""`lmforge pretrain`: train a model from prepared data (also under `torchrun`)."""

from __future__ import annotations

from lmforge.train.config import DataSpec, ModelSpec, TrainConfig

DEFAULT_MODEL, DEFAULT_TRAIN = ModelSpec(), TrainConfig()


def pretrain(
    data: DataSpec,
    model: ModelSpec = DEFAULT_MODEL,
    objective: str = "clm",
    train: TrainConfig = DEFAULT_TRAIN,
    out_dir: str = "runs/pretrain",
    resume: bool = False,
    device: str = "auto",
) -> None:
    """Pretrain a model; every field can come from a YAML file (`--config`) and be overridden.

    Args:
        data: prepared data folder and its tokenizer.
        model: preset and field overrides.
        objective: clm (decoders); mlm, mlm-wwm, mlm-nsp, rtd (ELECTRA), contrastive (SimCSE) for
            encoders; span (T5 span corruption) for encoder-decoders.
        train: optimisation, precision, evaluation, checkpointing.
        out_dir: run folder: config.yaml, metrics.jsonl, tensorboard/, step-*/ checkpoints, hf/.
        resume: continue exactly from the latest complete checkpoint in out_dir.
        device: auto, cpu or cuda.
    """
    from lmforge.train.pretrain import run_pretraining

    run_pretraining(data, model, objective, train, out_dir, resume=resume, device=device)
