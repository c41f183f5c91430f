"""The model library: blocks, the three families, heads and presets."""

from lmforge.models.attention import Attention, KVCache, attention_mask
from lmforge.models.config import ConfigError, ModelConfig
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
from lmforge.models.presets import PRESETS, get_preset
from lmforge.models.tasks import DEFAULT_TASK, TASKS, build_model, task_of
from lmforge.models.transformer import Cache, Transformer

__all__ = [
    "Attention", "Cache", "CausalLM", "ConfigError", "DEFAULT_TASK", "ElectraPretraining", "EncoderModel", "KVCache",
    "MaskedLM", "Model",
    "ModelConfig", "PRESETS", "QuestionAnswering", "Seq2SeqLM", "SequenceClassifier", "TASKS",
    "TokenClassifier", "Transformer", "attention_mask", "build_model", "get_preset", "task_of",
]
