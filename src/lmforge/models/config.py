"""`ModelConfig`: one dataclass that describes encoders, decoders and encoder-decoders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

HEAD_KINDS = ("sequence-classification", "token-classification", "question-answering")
"""The heads a multi-task model can carry (`ModelConfig.task_heads`)."""

Family = Literal["encoder", "decoder", "encoder-decoder"]
Position = Literal["learned", "sinusoidal", "rope", "none"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Norm = Literal["layernorm", "rmsnorm"]


LAYER_WIDTHS = ("layer_n_heads", "layer_n_kv_heads", "layer_d_ff")
"""The `ModelConfig` fields that give a width per layer (None: the global width everywhere)."""


class ConfigError(ValueError):
    """A model configuration field has a bad value."""


@dataclass
class ModelConfig:
    """Every architectural choice of an lmforge model, as data.

    BERT, GPT-2, LLaMA, BART and the original Transformer are all points in this space; the
    presets in `lmforge.models.presets` name them.
    """

    family: Family = "decoder"
    """`encoder` (BERT), `decoder` (GPT-2, LLaMA) or `encoder-decoder` (Transformer, BART)."""
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8
    """Layers of the decoder (decoder family) or of the encoder (encoder and encoder-decoder)."""
    n_decoder_layers: int | None = None
    """Decoder layers of an encoder-decoder; defaults to `n_layers`."""
    n_heads: int = 8
    n_kv_heads: int | None = None
    """Key/value heads: `n_heads` for multi-head, fewer for grouped-query, 1 for multi-query."""
    head_dim: int | None = None
    """Defaults to `d_model // n_heads`."""
    d_ff: int = 2048
    max_seq_len: int = 2048
    layer_n_heads: list[int] | None = None
    """Query heads of each layer (one entry per layer of the stack), for a model whose layers differ in width
    (structured pruning, `lmforge.compress.structured`); None: `n_heads` in every layer. `head_dim` stays global."""
    layer_n_kv_heads: list[int] | None = None
    """Key/value heads of each layer; None: `n_kv_heads` in every layer."""
    layer_d_ff: list[int] | None = None
    """FFN hidden units of each layer; None: `d_ff` in every layer."""

    position: Position = "rope"
    position_offset: int = 0
    """Learned positions start at this row (BART reserves 2)."""
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """`{"type": "linear" | "ntk" | "dynamic", "factor": f}`; see `positions.RotaryEmbedding`."""
    rope_fraction: float = 1.0
    """Share of each head's dimensions that RoPE rotates (1.0 for LLaMA)."""

    activation: Activation = "silu"
    gated_ffn: bool = True
    """Gated FFN (`act(x W_gate) * x W_up`): SwiGLU when activation is silu."""
    norm: Norm = "rmsnorm"
    norm_eps: float = 1e-5
    norm_position: Literal["pre", "post"] = "pre"
    embedding_norm: bool = False
    """A norm right after the embeddings (BERT, BART)."""
    final_norm: bool = True
    """A norm after the last block (pre-norm models)."""
    scale_embeddings: bool = False
    """Multiply token embeddings by sqrt(d_model) (original Transformer, some BART)."""
    qkv_bias: bool = False
    out_bias: bool = False
    ffn_bias: bool = False
    norm_bias: bool = True
    """LayerNorm has a bias (ignored for RMSNorm)."""
    type_vocab_size: int = 0
    """Token-type (segment) embeddings, 2 for BERT; 0 for none."""
    tie_embeddings: bool = True
    lm_head_bias: bool = False
    """A bias on the LM head (BART's `final_logits_bias`)."""
    sliding_window: int | None = None
    """Attend only to the last `sliding_window` keys (Mistral-style local attention)."""
    attn_scale: float | None = None
    """Attention score scale; defaults to 1/sqrt(head_dim)."""

    dropout: float = 0.0
    attn_dropout: float = 0.0
    init_std: float = 0.02

    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None

    # Heads that come with the body in pretrained checkpoints.
    pooler: bool = False
    """BERT's tanh pooler over the first token."""
    mlm_head_transform: bool = True
    """MLM head = dense + act + norm before the (tied) decoder, as in BERT."""
    num_labels: int = 2
    """Outputs of classification heads."""
    labels: list[str] | None = None
    """Names of the classes in id order (saved as Hugging Face's `id2label`); None: LABEL_0, LABEL_1, ..."""
    pooling: Literal["first", "last", "mean"] | None = None
    """How a sequence classifier pools the hidden states: first token, last real token or mean over real
    tokens; None: first for encoders (BERT's [CLS]), last for decoders (as transformers does)."""
    task_heads: dict[str, dict[str, Any]] | None = None
    """A multi-task model's heads by task name: {"kind": "sequence-classification" | "token-classification" |
    "question-answering", "num_labels": n, "labels": [...]} each (`lmforge.models.multitask`)."""
    sequence_classifier_bias: bool = True
    """A bias on the sequence-classification head (BERT's `classifier`); GPT-2's and LLaMA's `score` has none."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata kept with the config (e.g. the source checkpoint's architecture)."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        for name in LAYER_WIDTHS:
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))  # a list, as JSON gives it back
        self.validate()

    def validate(self) -> None:
        """Check every field at once and raise one `ConfigError` listing all problems."""
        problems = []
        choices = {
            "family": Family, "position": Position, "activation": Activation, "norm": Norm,
            "norm_position": Literal["pre", "post"],
        }
        for name, kind in choices.items():
            allowed = kind.__args__
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        if isinstance(self.n_kv_heads, int) and self.n_kv_heads > 0:
            if self.n_heads % self.n_kv_heads:
                problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        else:
            problems.append(f"n_kv_heads={self.n_kv_heads!r} must be a positive integer")
        if self.position == "rope" and self.head_dim and (int(self.head_dim * self.rope_fraction) % 2):
            problems.append(f"RoPE needs an even rotary dimension, got head_dim={self.head_dim}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type")
            if kind not in ("linear", "ntk", "dynamic"):
                problems.append(f"rope_scaling.type={kind!r} is not one of linear, ntk, dynamic")
            if float(self.rope_scaling.get("factor", 0)) < 1.0:
                problems.append("rope_scaling.factor must be >= 1")
        if self.sliding_window is not None and self.sliding_window <= 0:
            problems.append(f"sliding_window={self.sliding_window} must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attn_dropout < 1.0:
            problems.append("dropout and attn_dropout must be in [0, 1)")
        if not isinstance(self.num_labels, int) or self.num_labels <= 0:
            problems.append(f"num_labels={self.num_labels!r} must be a positive integer")
        if self.labels is not None and len(self.labels) != self.num_labels:
            problems.append(f"labels has {len(self.labels)} names but num_labels={self.num_labels}")
        if self.pooling not in (None, "first", "last", "mean"):
            problems.append(f"pooling={self.pooling!r} is not one of first, last, mean (or null)")
        for name, head in (self.task_heads or {}).items():
            if not isinstance(head, dict) or head.get("kind") not in HEAD_KINDS:
                problems.append(f"task_heads.{name}.kind must be one of {', '.join(HEAD_KINDS)}")
            elif not isinstance(head.get("num_labels", 1), int) or head.get("num_labels", 1) <= 0:
                problems.append(f"task_heads.{name}.num_labels={head.get('num_labels')!r} must be a positive integer")
        problems += self._layer_width_problems()
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    def _layer_width_problems(self) -> list[str]:
        """What is wrong with `layer_n_heads` / `layer_n_kv_heads` / `layer_d_ff` (see `validate`)."""
        given = [name for name in LAYER_WIDTHS if getattr(self, name) is not None]
        if not given:
            return []
        if self.family == "encoder-decoder":
            return [f"{', '.join(given)}: per-layer widths are supported for the encoder and decoder families "
                    "(one stack), not for encoder-decoder models"]
        problems = []
        for name in given:
            value = getattr(self, name)
            if not isinstance(value, list):
                problems.append(f"{name}={value!r} must be a list of {self.n_layers} positive integers (or null)")
            elif len(value) != self.n_layers:
                problems.append(f"{name} has {len(value)} entries but n_layers={self.n_layers}: one per layer")
            elif bad := [(i, v) for i, v in enumerate(value) if isinstance(v, bool) or not isinstance(v, int) or v <= 0]:
                problems.append(f"{name}[{bad[0][0]}]={bad[0][1]!r} must be a positive integer")
        if problems or not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0:
            return problems
        for i in range(self.n_layers):
            heads, kv_heads = self._width(i, "n_heads"), self._width(i, "n_kv_heads")
            if heads % kv_heads:
                problems.append(f"layer {i}: n_heads={heads} is not a multiple of n_kv_heads={kv_heads}")
        return problems

    def _width(self, layer: int, name: str) -> int:
        """Layer `layer`'s `n_heads` / `n_kv_heads` / `d_ff`: its entry in the `layer_` list, else the global."""
        per_layer = getattr(self, "layer_" + name)
        return per_layer[layer] if per_layer is not None else getattr(self, name)

    @property
    def has_layer_widths(self) -> bool:
        """Whether some width is given per layer (`layer_n_heads`, `layer_n_kv_heads` or `layer_d_ff`)."""
        return any(getattr(self, name) is not None for name in LAYER_WIDTHS)

    def for_layer(self, layer: int) -> ModelConfig:
        """The config layer `layer` of the stack is built from: the global widths replaced by that layer's.

        Without per-layer widths this is the config itself."""
        if not self.has_layer_widths:
            return self
        if not 0 <= layer < self.n_layers:
            raise ConfigError(f"layer={layer} is out of range: this config has n_layers={self.n_layers}")
        widths = {name: self._width(layer, name) for name in ("n_heads", "n_kv_heads", "d_ff")}
        return self.replace(**widths, **{name: None for name in LAYER_WIDTHS})

    @property
    def is_decoder(self) -> bool:
        return self.family == "decoder"

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == "encoder-decoder"

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)
