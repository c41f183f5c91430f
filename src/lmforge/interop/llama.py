"""LLaMA-style decoders (`LlamaForCausalLM`, Mistral, Qwen2) <-> lmforge decoder."""

from __future__ import annotations

from lmforge.interop.mapping import Head, Rule, head_rules, label_fields, linear, norm
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.presets import LLAMA

MODEL_TYPES = ("llama", "mistral", "qwen2")
PREFIX = "model."
TASK_OF_ARCH = {
    "LlamaModel": "causal-lm", "LlamaForCausalLM": "causal-lm", "MistralForCausalLM": "causal-lm",
    "Qwen2ForCausalLM": "causal-lm", "LlamaForSequenceClassification": "sequence-classification",
    "LlamaForTokenClassification": "token-classification", "LlamaForQuestionAnswering": "question-answering",
}
HEADS = {
    "sequence-classification": Head("score", False, PREFIX),
    "token-classification": Head("score", True, PREFIX),
    "question-answering": Head("qa_outputs", True, "transformer."),  # an old base-model name, kept by transformers
}
ROPE_TYPES = {"default": None, "linear": "linear", "dynamic": "dynamic"}


def _rope(hf: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from `rope_parameters` (transformers >= 5) or `rope_theta`/`rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = dict(hf.get("rope_scaling") or {})
    if params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope type {kind!r} is not supported; known: {', '.join(ROPE_TYPES)}")
    if ROPE_TYPES[kind] is None:
        return theta, None
    return theta, {"type": ROPE_TYPES[kind], "factor": float(scaling["factor"])}


def config_from_hf(hf: dict) -> ModelConfig:
    """HF `config.json` contents -> ModelConfig."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not supported (silu)")
    model_type = hf.get("model_type", "llama")
    theta, scaling = _rope(hf)
    qkv_bias = hf.get("attention_bias", model_type == "qwen2")
    window = hf.get("sliding_window")
    if model_type == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    n_heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    return ModelConfig(**{
        **LLAMA,
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads, "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // n_heads, "d_ff": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 2048), "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": float(theta), "rope_scaling": scaling, "sliding_window": window,
        "qkv_bias": bool(qkv_bias), "out_bias": bool(hf.get("attention_bias", False)),
        "ffn_bias": bool(hf.get("mlp_bias", False)), "tie_embeddings": hf.get("tie_word_embeddings", False),
        "bos_token_id": hf.get("bos_token_id"), "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "pad_token_id": hf.get("pad_token_id"), "attn_dropout": hf.get("attention_dropout", 0.0),
        **label_fields(hf), "sequence_classifier_bias": HEADS["sequence-classification"].bias,
        "extra": {"model_type": model_type},
    })


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    """ModelConfig -> HF `config.json` contents (model_type llama, or the source's mistral/qwen2)."""
    model_type = cfg.extra.get("model_type", "llama")
    if cfg.qkv_bias != cfg.out_bias and model_type != "qwen2":
        model_type = "qwen2"  # only Qwen2 has biases on q, k, v and not on o
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling:
        if cfg.rope_scaling["type"] == "ntk":
            raise ConfigError("static NTK RoPE scaling has no Hugging Face equivalent; use linear or dynamic")
        rope.update(rope_type=cfg.rope_scaling["type"], factor=cfg.rope_scaling["factor"])
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    hf = {
        "architectures": [arch[model_type] if architecture.endswith("ForCausalLM") else architecture],
        "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope, "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "attention_dropout": cfg.attn_dropout, "sliding_window": cfg.sliding_window,
    }
    if model_type == "llama":
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.ffn_bias)
    if model_type == "qwen2":
        hf["use_sliding_window"] = cfg.sliding_window is not None
    return hf


def rules(cfg: ModelConfig, task: str) -> list[Rule]:
    """lmforge <- HF names."""
    head = HEADS.get(task)
    p = head.base_prefix if head else PREFIX
    r = [Rule("body.tokens.weight", f"{p}embed_tokens.weight")]
    for i in range(cfg.n_layers):
        ours, theirs = f"body.decoder.blocks.{i}", f"{p}layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj"):
            r += linear(f"{ours}.attn.{name}", f"{theirs}.self_attn.{name}", cfg.qkv_bias)
        r += linear(f"{ours}.attn.o_proj", f"{theirs}.self_attn.o_proj", cfg.out_bias)
        for name in ("gate_proj", "up_proj", "down_proj"):
            r += linear(f"{ours}.ffn.{name}", f"{theirs}.mlp.{name}", cfg.ffn_bias)
        r += norm(f"{ours}.attn_norm", f"{theirs}.input_layernorm", bias=False)
        r += norm(f"{ours}.ffn_norm", f"{theirs}.post_attention_layernorm", bias=False)
    r += norm("body.decoder.final_norm", f"{p}norm", bias=False)
    r.append(Rule("lm_head.proj.weight", "lm_head.weight"))
    r += head_rules(head)
    return r


ALIASES: dict[str, str] = {}
IGNORED = ("rotary_emb.inv_freq",)
