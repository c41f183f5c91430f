"""The model tasks: which head a body carries, by the names checkpoints use ("causal-lm", "masked-lm", ...).

A task here is a *model* kind (Hugging Face's sense: the head on the body); what a model is trained
for is an *objective* (`lmforge.objectives`, `lmforge.train.objective`). Checkpoints in lmforge's
format record the task, so every model class a checkpoint can hold is listed here, in one place.
"""

from __future__ import annotations

from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.distillation import Distillation
from lmforge.models.electra import ElectraPretraining
from lmforge.models.model import (
    CausalLM,
    EncoderModel,
    MaskedLM,
    Model,
    QuestionAnswering,
    Seq2SeqLM,
    SequenceClassifier,
    TokenClassifier,
)
from lmforge.models.multitask import MultiTaskModel

TASKS: dict[str, type[Model]] = {
    "encoder": EncoderModel,
    "causal-lm": CausalLM,
    "seq2seq-lm": Seq2SeqLM,
    "masked-lm": MaskedLM,
    "sequence-classification": SequenceClassifier,
    "token-classification": TokenClassifier,
    "question-answering": QuestionAnswering,
    "electra-pretraining": ElectraPretraining,
    "multi-task": MultiTaskModel,
    "distillation": Distillation,
}
DEFAULT_TASK = {"encoder": "encoder", "decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}


def task_of(model: Model) -> str:
    """The task name of a model (also when FSDP has subclassed it): the most specific class it is."""
    matches = [t for t, cls in TASKS.items() if isinstance(model, cls)]
    if not matches:
        raise ConfigError(f"{type(model).__name__} is not a model of any task ({', '.join(TASKS)})")
    return max(matches, key=lambda t: len(TASKS[t].__mro__))


def build_model(cfg: ModelConfig | str, task: str | None = None, **kwargs) -> Model:
    """A randomly initialised model for a config or preset name; the task defaults by family."""
    if isinstance(cfg, str):
        from lmforge.models.presets import get_preset

        cfg = get_preset(cfg)
    task = task or DEFAULT_TASK[cfg.family]
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task](cfg, **kwargs)
