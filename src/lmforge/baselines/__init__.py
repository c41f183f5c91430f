"""Non-neural baselines: an interpolated (modified) Kneser-Ney n-gram model over token ids."""

from lmforge.baselines.kneser_ney import KneserNeyLM, best_kneser_ney, modified_kn_discounts, split_documents

__all__ = ["KneserNeyLM", "best_kneser_ney", "modified_kn_discounts", "split_documents"]
