"""lmforge: Transformer language models from theory to practice."""

__version__ = "0.1.0"
