"""Task models: a `Transformer` body plus a head. Each is a few lines; the body does the work."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.heads import (
    ClassificationHead,
    LMHead,
    MLMHead,
    NSPHead,
    Pooler,
    SpanHead,
    TokenClassificationHead,
    pool,
)
from lmforge.models.norms import RMSNorm
from lmforge.models.positions import LearnedPositions
from lmforge.models.transformer import Cache, Transformer


class Model(nn.Module):
    """What every lmforge model shares: a config, a body, parameter and FLOP counts, initialisation."""

    cfg: ModelConfig
    body: Transformer

    def init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; residual outputs scaled by 1/sqrt(2L) (GPT-2).

        Parameters on the meta device are left alone (`materialize` initialises what a checkpoint lacks);
        initialising them would cost nothing but a slow first trip through torch's meta kernels.
        """
        for name, module in self.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if not param.is_meta:
                    self._init_parameter(name, module, param_name, param)
        self.tie_weights()

    def _init_parameter(self, name: str, module: nn.Module, param_name: str, param: torch.Tensor) -> None:
        """Initialise one parameter that `module` (called `name`) holds itself."""
        std = self.cfg.init_std
        if param_name == "bias":
            nn.init.zeros_(param)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(param)
        elif isinstance(module, nn.Linear):
            n_layers = self.cfg.n_layers + (self.cfg.n_decoder_layers if self.cfg.is_encoder_decoder else 0)
            scaled = name.endswith(("o_proj", "down_proj")) and self.cfg.norm_position == "pre"
            nn.init.normal_(param, std=std / math.sqrt(2 * n_layers) if scaled else std)
        elif isinstance(module, (nn.Embedding, LearnedPositions)):
            nn.init.normal_(param, std=std)
        else:  # other bare parameters (e.g. an output bias): zeros
            nn.init.zeros_(param)

    def materialize(self, device: torch.device | str = "cpu") -> list[str]:
        """Allocate and initialise what is still on the meta device; return the names of those parameters.

        A model built under `torch.device("meta")` and loaded with `load_state_dict(assign=True)` holds the
        checkpoint's tensors themselves (no random init, no second copy); what the checkpoint lacked
        (a new head) is allocated and initialised here, parameter by parameter (a tied weight next to it
        is left alone), tied weights are tied again, and non-persistent buffers (RoPE frequencies,
        sinusoidal tables) are recomputed.
        """
        self.tie_weights()
        fresh, touched = [], []
        with torch.no_grad():
            for name, module in self.named_modules():
                for param_name, param in list(module.named_parameters(recurse=False)):
                    if param.is_meta:
                        new = nn.Parameter(torch.empty_like(param, device=device), requires_grad=param.requires_grad)
                        setattr(module, param_name, new)
                        self._init_parameter(name, module, param_name, new)
                        fresh.append(f"{name}.{param_name}" if name else param_name)
                        touched.append(name)
                if any(b.is_meta for b in module.buffers(recurse=False)):
                    module.reset_buffers(device)
            # A fine-tuning method's modules (lmforge.adapt) start from their own init (LoRA's B = 0, ...).
            for name, module in self.named_modules():
                if hasattr(module, "reset_adapter_parameters") and any(t == name or t.startswith(name + ".")
                                                                        for t in touched):
                    module.reset_adapter_parameters()
        self.tie_weights()
        return fresh

    def fuse_projections(self) -> Model:
        """Merge each self-attention's q/k/v and each gated FFN's gate/up into one Linear, for inference.

        Fewer, larger GEMMs read the same weights in fewer passes; the logits are unchanged. The merged
        model can no longer be exported, trained with LoRA or split for tensor parallelism by name.
        """
        for module in list(self.modules()):
            if module is not self and hasattr(module, "fuse_projections"):
                module.fuse_projections()
        return self

    def blocks(self) -> list[nn.Module]:
        """Every Transformer block, encoder first, then decoder (what FSDP shards and checkpointing wraps)."""
        return [block for stack in (self.body.encoder, self.body.decoder) if stack is not None for block in stack.blocks]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass (less memory, about 1/3 more compute)."""
        for stack in (self.body.encoder, self.body.decoder):
            if stack is not None:
                stack.gradient_checkpointing = enabled

    def tie_weights(self) -> None:
        """Share the output projection with the token embedding when the config says so."""
        head = getattr(self, "lm_head", None) or getattr(self, "mlm_head", None)
        if head is not None and self.cfg.tie_embeddings:
            head.proj.weight = self.body.tokens.weight

    def is_tied(self, name: str) -> bool:
        """Whether state-dict entry `name` is the token embedding again (a tied output projection)."""
        return self.cfg.tie_embeddings and name in ("lm_head.proj.weight", "mlm_head.proj.weight")

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters, each shared tensor counted once."""
        seen, total = set(), 0
        skip = set()
        if exclude_embeddings:
            skip = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        for p in self.parameters():
            if id(p) in seen or id(p) in skip or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def matmul_parameters(self) -> int:
        """Weights used in matrix multiplies per token: every Linear, the LM head included."""
        seen, total = set(), 0
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                total += m.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Model FLOPs per token (Kaplan et al. 2020): 2N + 4·L·d_attn·T forward, 3x that for training."""
        cfg = self.cfg
        seq_len = seq_len or cfg.max_seq_len
        # Query heads summed over the layers (they differ per layer after structured pruning).
        heads = sum(cfg.for_layer(i).n_heads for i in range(cfg.n_layers))
        heads += cfg.n_decoder_layers * cfg.n_heads if cfg.is_encoder_decoder else 0
        forward = 2 * self.matmul_parameters() + 4 * heads * cfg.head_dim * seq_len
        return 3 * forward if training else forward

    @property
    def device(self) -> torch.device:
        return self.body.tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.body.tokens.weight.dtype


class EncoderModel(Model):
    """A bare encoder (BERT body), optionally with BERT's pooler: returns hidden states."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _require(cfg, "encoder", type(self).__name__)
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.pooler = Pooler(cfg) if cfg.pooler else None
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.body.encode(input_ids, attention_mask, token_type_ids, position_ids)  # (B, T, d)

    def embed_sentences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        normalize: bool = True) -> torch.Tensor:
        """Mean-pooled sentence embeddings (Sentence-BERT), unit length when `normalize`."""
        emb = pool(self(input_ids, attention_mask), attention_mask, "mean")
        return nn.functional.normalize(emb, dim=-1) if normalize else emb


class CausalLM(Model):
    """A decoder with an LM head (GPT-2, LLaMA): next-token logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _require(cfg, "decoder", type(self).__name__)
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.lm_head = LMHead(cfg)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits; `last_only` computes the last position's only (decoding)."""
        hidden = self.body.decode(input_ids, attention_mask, position_ids, cache)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def make_cache(self, batch_size: int, max_len: int, **kwargs) -> Cache:
        return self.body.make_cache(batch_size, max_len, **kwargs)


class Seq2SeqLM(Model):
    """An encoder-decoder with an LM head on the decoder (original Transformer, BART)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _require(cfg, "encoder-decoder", type(self).__name__)
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.lm_head = LMHead(cfg)
        self.init_weights()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.body.encode(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                encoder_out: torch.Tensor | None = None, cache: Cache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Decoder logits (B, T_dec, V); pass `encoder_out` to reuse an encoding while decoding."""
        if encoder_out is None:
            encoder_out = self.encode(input_ids, attention_mask)
        hidden = self.body.decode(decoder_input_ids, decoder_attention_mask, cache=cache,
                                  encoder_out=encoder_out, encoder_attention_mask=attention_mask)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def make_cache(self, batch_size: int, max_len: int, **kwargs) -> Cache:
        return self.body.make_cache(batch_size, max_len, **kwargs)


class MaskedLMOutput(NamedTuple):
    logits: torch.Tensor
    """(B, T, V) masked-LM logits; (N, V) at the `positions` asked for."""
    nsp_logits: torch.Tensor | None
    """(B, 2) next-sentence logits, when the model has an NSP head."""


class MaskedLM(Model):
    """An encoder with BERT's MLM head, and with `nsp=True` the pooler and NSP head (BERT pretraining)."""

    def __init__(self, cfg: ModelConfig, nsp: bool = False) -> None:
        super().__init__()
        _require(cfg, "encoder", type(self).__name__)
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.mlm_head = MLMHead(cfg)
        self.pooler = Pooler(cfg) if (nsp or cfg.pooler) else None
        self.nsp_head = NSPHead(cfg) if nsp else None
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> MaskedLMOutput:
        """MLM logits at every position (B, T, V), or only at `positions` (N,), indices into the flattened
        (B·T) positions (`lmforge.objectives.predicted_positions`): (N, V) in that order.

        Training needs logits only where a token is predicted (~15 %); the head over the whole vocabulary
        at every position would cost more than the encoder of a small BERT.
        """
        hidden = self.body.encode(input_ids, attention_mask, token_type_ids)  # (B, T, d)
        nsp = self.nsp_head(self.pooler(hidden)) if self.nsp_head is not None else None
        if positions is not None:
            hidden = hidden.flatten(0, 1)[positions]  # (N, d)
        return MaskedLMOutput(self.mlm_head(hidden), nsp)


class SequenceClassifier(Model):
    """Any body + a classification head over one pooled vector (first token for encoders, last for decoders).

    Decoders pool the last real token, found from `attention_mask` (left or right padding alike);
    transformers finds it as the last id that is not `pad_token_id`, which agrees whenever padding
    uses the pad id and no real token is one.
    """

    def __init__(self, cfg: ModelConfig, num_labels: int | None = None, pooling: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg = _with_labels(cfg, num_labels, pooling=pooling)
        self.body = Transformer(cfg)
        self.pooling = cfg.pooling or ("last" if cfg.family == "decoder" else "first")
        self.pooler = Pooler(cfg) if cfg.pooler and cfg.family == "encoder" else None
        self.head = ClassificationHead(cfg)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = _hidden(self.body, input_ids, attention_mask, token_type_ids)
        pooled = self.pooler(hidden) if self.pooler is not None else pool(hidden, attention_mask, self.pooling)
        return self.head(pooled)  # (B, num_labels)


class TokenClassifier(Model):
    """Any body + a label per token."""

    def __init__(self, cfg: ModelConfig, num_labels: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg = _with_labels(cfg, num_labels)
        self.body = Transformer(cfg)
        self.head = TokenClassificationHead(cfg)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(_hidden(self.body, input_ids, attention_mask, token_type_ids))  # (B, T, labels)


class QuestionAnswering(Model):
    """Any body + a span head: start and end logits for extractive QA."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.head = SpanHead(cfg)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(_hidden(self.body, input_ids, attention_mask, token_type_ids))


def _hidden(body: Transformer, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
    if body.cfg.family == "decoder":
        return body.decode(input_ids, attention_mask)
    if body.cfg.family == "encoder":
        return body.encode(input_ids, attention_mask, token_type_ids)
    raise ConfigError("classification heads on encoder-decoders are not supported yet: use the encoder")


def _with_labels(cfg: ModelConfig, num_labels: int | None, **fields) -> ModelConfig:
    """The config with the head's arguments written into it, so they are saved with the model: `cfg` is
    the one source of truth (label names are dropped when the count changes)."""
    changes = {k: v for k, v in fields.items() if v is not None and getattr(cfg, k) != v}
    if num_labels is not None and num_labels != cfg.num_labels:
        changes.update(num_labels=num_labels, labels=None)
    return cfg.replace(**changes) if changes else cfg


def _require(cfg: ModelConfig, family: str, cls: str) -> None:
    if cfg.family != family:
        raise ConfigError(f"{cls} needs family={family!r}, got {cfg.family!r}")
