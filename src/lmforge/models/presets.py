"""Named model configurations: reference shapes and tiny CPU-sized ones."""

from __future__ import annotations

from lmforge.models.config import ConfigError, ModelConfig

BERT = dict(
    family="encoder", position="learned", activation="gelu", gated_ffn=False, norm="layernorm",
    norm_eps=1e-12, norm_position="post", embedding_norm=True, final_norm=False, qkv_bias=True,
    out_bias=True, ffn_bias=True, type_vocab_size=2, tie_embeddings=True, pooler=True, pad_token_id=0,
)
GPT2 = dict(
    family="decoder", position="learned", activation="gelu_tanh", gated_ffn=False, norm="layernorm",
    norm_eps=1e-5, norm_position="pre", final_norm=True, qkv_bias=True, out_bias=True, ffn_bias=True,
    tie_embeddings=True, bos_token_id=50256, eos_token_id=50256, sequence_classifier_bias=False,
)
LLAMA = dict(
    family="decoder", position="rope", activation="silu", gated_ffn=True, norm="rmsnorm",
    norm_position="pre", final_norm=True, tie_embeddings=False, bos_token_id=1, eos_token_id=2,
    sequence_classifier_bias=False,
)
BART = dict(
    family="encoder-decoder", position="learned", position_offset=2, activation="gelu", gated_ffn=False,
    norm="layernorm", norm_eps=1e-5, norm_position="post", embedding_norm=True, final_norm=False,
    qkv_bias=True, out_bias=True, ffn_bias=True, tie_embeddings=True, lm_head_bias=True,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
)
# Vaswani et al. 2017: post-norm, sinusoidal positions, ReLU, scaled shared embeddings.
TRANSFORMER = dict(
    family="encoder-decoder", position="sinusoidal", activation="relu", gated_ffn=False, norm="layernorm",
    norm_eps=1e-6, norm_position="post", final_norm=False, scale_embeddings=True, qkv_bias=True,
    out_bias=True, ffn_bias=True, tie_embeddings=True, dropout=0.1,
)

PRESETS: dict[str, dict] = {
    # Reference shapes.
    "bert-base": dict(BERT, vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512),
    "gpt2": dict(GPT2, vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024),
    "llama-7b": dict(LLAMA, vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                     max_seq_len=4096, norm_eps=1e-5),
    "smollm2-135m": dict(LLAMA, vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True,
                         bos_token_id=1, eos_token_id=2),
    "bart-base": dict(BART, vocab_size=50265, d_model=768, n_layers=6, n_heads=12, d_ff=3072, max_seq_len=1024),
    "transformer-base": dict(TRANSFORMER, vocab_size=37000, d_model=512, n_layers=6, n_heads=8, d_ff=2048,
                             max_seq_len=512),
    # Tiny configs for a CPU.
    "bert-tiny": dict(BERT, vocab_size=30522, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_seq_len=512),
    "gpt2-tiny": dict(GPT2, vocab_size=50257, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_seq_len=512),
    "llama-tiny": dict(LLAMA, vocab_size=32000, d_model=288, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=768,
                       max_seq_len=1024),
    "bart-tiny": dict(BART, vocab_size=50265, d_model=256, n_layers=2, n_heads=4, d_ff=1024, max_seq_len=512),
    "transformer-tiny": dict(TRANSFORMER, vocab_size=8000, d_model=256, n_layers=3, n_heads=4, d_ff=1024,
                             max_seq_len=512),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of a preset, with fields overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r} with overrides")
