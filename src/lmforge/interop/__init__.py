"""Interop: the Hugging Face checkpoint format and lmforge's own."""

from lmforge.interop.hf import CheckpointError, load_pretrained, read_state_dict, save_pretrained
from lmforge.interop.native import load_any, load_model, save_model

__all__ = ["CheckpointError", "load_any", "load_model", "load_pretrained", "read_state_dict", "save_model",
           "save_pretrained"]
