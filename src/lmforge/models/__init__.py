"""The model library: blocks, the three families, heads and presets."""

from lmforge.models.attention import Attention, KVCache, attention_mask
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import (
    TASKS,
    CausalLM,
    EncoderModel,
    MaskedLM,
    Model,
    QuestionAnswering,
    Seq2SeqLM,
    SequenceClassifier,
    TokenClassifier,
    build_model,
)
from lmforge.models.presets import PRESETS, get_preset
from lmforge.models.transformer import Cache, Transformer

__all__ = [
    "Attention", "Cache", "CausalLM", "ConfigError", "EncoderModel", "KVCache", "MaskedLM", "Model",
    "ModelConfig", "PRESETS", "QuestionAnswering", "Seq2SeqLM", "SequenceClassifier", "TASKS",
    "TokenClassifier", "Transformer", "attention_mask", "build_model", "get_preset",
]
