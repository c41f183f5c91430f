"""BART (`BartModel`, `BartForConditionalGeneration`) <-> lmforge encoder-decoder.

BART is our encoder-decoder interop target because it *is* the original Transformer's layout
(post-norm, absolute positions, biased Linear + LayerNorm, GELU instead of ReLU), so the same
block covers both; T5 would need relative-position buckets and a second norm flavour.
"""

from __future__ import annotations

from lmforge.interop.mapping import Rule, linear, norm
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.presets import BART

MODEL_TYPES = ("bart",)
PREFIX = "model."
TASK_OF_ARCH = {"BartModel": "seq2seq-lm", "BartForConditionalGeneration": "seq2seq-lm"}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}


def config_from_hf(hf: dict) -> ModelConfig:
    """HF `config.json` contents -> ModelConfig."""
    problems = []
    if hf.get("encoder_attention_heads") != hf.get("decoder_attention_heads"):
        problems.append("encoder_attention_heads != decoder_attention_heads")
    if hf.get("encoder_ffn_dim") != hf.get("decoder_ffn_dim"):
        problems.append("encoder_ffn_dim != decoder_ffn_dim")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        problems.append("pre-norm (mBART-style) BART variants are not supported")
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        problems.append(f"activation_function={act!r} is not supported")
    if problems:
        raise ConfigError("; ".join(problems))
    return ModelConfig(**{
        **BART,
        "vocab_size": hf["vocab_size"], "d_model": hf["d_model"], "n_layers": hf["encoder_layers"],
        "n_decoder_layers": hf["decoder_layers"], "n_heads": hf["encoder_attention_heads"],
        "d_ff": hf["encoder_ffn_dim"], "max_seq_len": hf.get("max_position_embeddings", 1024),
        "activation": ACTIVATIONS[act], "scale_embeddings": bool(hf.get("scale_embedding", False)),
        "tie_embeddings": hf.get("tie_word_embeddings", True), "pad_token_id": hf.get("pad_token_id", 1),
        "bos_token_id": hf.get("bos_token_id", 0), "eos_token_id": hf.get("eos_token_id", 2),
        "decoder_start_token_id": hf.get("decoder_start_token_id", 2),
    })


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    """ModelConfig -> HF `config.json` contents."""
    if cfg.position != "learned" or cfg.position_offset != 2 or cfg.norm_position != "post":
        raise ConfigError("only BART-shaped encoder-decoders (learned positions offset 2, post-norm) export to HF")
    act = {v: k for k, v in ACTIVATIONS.items()}[cfg.activation]
    return {
        "architectures": [architecture], "model_type": "bart", "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "encoder_layers": cfg.n_layers,
        "decoder_layers": cfg.n_decoder_layers, "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads, "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff,
        "activation_function": act, "max_position_embeddings": cfg.max_seq_len,
        "scale_embedding": cfg.scale_embeddings, "tie_word_embeddings": cfg.tie_embeddings,
        "dropout": cfg.dropout, "attention_dropout": cfg.attn_dropout, "activation_dropout": 0.0,
        "init_std": cfg.init_std, "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "decoder_start_token_id": cfg.decoder_start_token_id,
        "forced_eos_token_id": cfg.eos_token_id,
    }


def _stack(side: str, n_layers: int, cross: bool) -> list[Rule]:
    ours, theirs = f"body.{side}", f"{PREFIX}{side}"
    r = [Rule(f"{ours}.positions.weight", f"{theirs}.embed_positions.weight")]
    r += norm(f"{ours}.embed_norm", f"{theirs}.layernorm_embedding")
    for i in range(n_layers):
        o, t = f"{ours}.blocks.{i}", f"{theirs}.layers.{i}"
        attns = [("attn", "self_attn")] + ([("cross_attn", "encoder_attn")] if cross else [])
        for our_attn, their_attn in attns:
            for name in ("q_proj", "k_proj", "v_proj"):
                r += linear(f"{o}.{our_attn}.{name}", f"{t}.{their_attn}.{name}", True)
            r += linear(f"{o}.{our_attn}.o_proj", f"{t}.{their_attn}.out_proj", True)
            r += norm(f"{o}.{our_attn}_norm", f"{t}.{their_attn}_layer_norm")
        r += linear(f"{o}.ffn.up_proj", f"{t}.fc1", True)
        r += linear(f"{o}.ffn.down_proj", f"{t}.fc2", True)
        r += norm(f"{o}.ffn_norm", f"{t}.final_layer_norm")
    return r


def rules(cfg: ModelConfig, task: str) -> list[Rule]:
    """lmforge <- HF names."""
    r = [Rule("body.tokens.weight", f"{PREFIX}shared.weight")]
    r += _stack("encoder", cfg.n_layers, cross=False)
    r += _stack("decoder", cfg.n_decoder_layers, cross=True)
    r += [Rule("lm_head.proj.weight", "lm_head.weight"), Rule("lm_head.proj.bias", "final_logits_bias", flat=True)]
    return r


ALIASES = {f"{PREFIX}encoder.embed_tokens.weight": f"{PREFIX}shared.weight",
           f"{PREFIX}decoder.embed_tokens.weight": f"{PREFIX}shared.weight"}
IGNORED: tuple[str, ...] = ()
