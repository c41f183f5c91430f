"""Interop with the Hugging Face checkpoint format."""

from lmforge.interop.hf import CheckpointError, load_pretrained, read_state_dict, save_pretrained

__all__ = ["CheckpointError", "load_pretrained", "read_state_dict", "save_pretrained"]
