"""Task heads, kept apart from the bodies so a body can carry any of them."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.ffn import ACTIVATIONS
from lmforge.models.norms import make_norm


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits; the weight may be tied to the token embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)  # (B, T, V)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + activation + norm, then the (tied) vocabulary projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model) if cfg.mlm_head_transform else None
        self.act = ACTIVATIONS[cfg.activation if not cfg.gated_ffn else "gelu"]
        self.norm = make_norm(cfg) if cfg.mlm_head_transform else None
        self.proj = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden = self.norm(self.act(self.dense(hidden)))
        return self.proj(hidden)


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(first token))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class NSPHead(nn.Module):
    """Next-sentence prediction from the pooled first token: 0 = IsNext, 1 = NotNext (BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class ClassificationHead(nn.Module):
    """Sequence classification / regression from one pooled vector per sequence."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(cfg.d_model, cfg.num_labels, bias=cfg.sequence_classifier_bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))  # (B, num_labels)


class TokenClassificationHead(nn.Module):
    """A label per token (NER, tagging)."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(cfg.d_model, cfg.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(hidden))  # (B, T, num_labels)


class SpanHead(nn.Module):
    """Extractive QA: start and end logits per token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, 2)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.proj(hidden).unbind(dim=-1)
        return start, end  # (B, T) each


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str = "mean") -> torch.Tensor:
    """One vector per sequence: `mean` over real tokens, `first` token, or `last` real token."""
    if how == "first":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if how == "last":
        last = attention_mask.long().cumsum(-1).argmax(-1)  # index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        m = attention_mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ValueError(f"pooling {how!r} is not one of mean, first, last")
