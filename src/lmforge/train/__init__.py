"""The pretraining engine: tasks, the training loop, checkpoints, distributed setup."""

from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
from lmforge.train.loop import TrainingError, evaluate, seed_everything, train
from lmforge.train.pretrain import run_pretraining

__all__ = ["DataSpec", "ModelSpec", "TrainConfig", "TrainingError", "evaluate", "run_pretraining",
           "seed_everything", "train"]
