"""GPT-2 (`GPT2Model`, `GPT2LMHeadModel`) <-> lmforge decoder. GPT-2 stores Linear weights (in, out)."""

from __future__ import annotations

from lmforge.interop.mapping import Head, Rule, head_rules, label_fields, linear, norm
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.presets import GPT2

MODEL_TYPES = ("gpt2",)
PREFIX = "transformer."
TASK_OF_ARCH = {
    "GPT2Model": "causal-lm", "GPT2LMHeadModel": "causal-lm", "GPT2ForSequenceClassification": "sequence-classification",
    "GPT2ForTokenClassification": "token-classification", "GPT2ForQuestionAnswering": "question-answering",
}
HEADS = {
    "sequence-classification": Head("score", False, PREFIX),
    "token-classification": Head("classifier", True, PREFIX),
    "question-answering": Head("qa_outputs", True, PREFIX),
}
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf: dict) -> ModelConfig:
    """HF `config.json` contents -> ModelConfig."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(f"activation_function={act!r} is not supported; known: {', '.join(ACTIVATIONS)}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ConfigError(f"{flag}=true is not supported")
    d = hf["n_embd"]
    return ModelConfig(**{
        **GPT2,
        "vocab_size": hf["vocab_size"], "d_model": d, "n_layers": hf["n_layer"], "n_heads": hf["n_head"],
        "d_ff": hf.get("n_inner") or 4 * d, "max_seq_len": hf.get("n_positions", 1024),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "activation": ACTIVATIONS[act],
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id"),
        "pad_token_id": hf.get("pad_token_id"), **label_fields(hf),
        "sequence_classifier_bias": HEADS["sequence-classification"].bias,
        "attn_scale": None if hf.get("scale_attn_weights", True) else 1.0,
    })


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    """ModelConfig -> HF `config.json` contents."""
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
    return {
        "architectures": [architecture], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
        "n_positions": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": act,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attn_dropout,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "scale_attn_weights": cfg.attn_scale is None,
    }


def rules(cfg: ModelConfig, task: str) -> list[Rule]:
    """lmforge <- HF names; the fused `c_attn` splits into q, k and v."""
    head = HEADS.get(task)
    p = head.base_prefix if head else PREFIX
    r = [Rule("body.tokens.weight", f"{p}wte.weight"), Rule("body.decoder.positions.weight", f"{p}wpe.weight")]
    for i in range(cfg.n_layers):
        ours, theirs = f"body.decoder.blocks.{i}", f"{p}h.{i}"
        r += norm(f"{ours}.attn_norm", f"{theirs}.ln_1")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            r += linear(f"{ours}.attn.{name}", f"{theirs}.attn.c_attn", True, transpose=True, part=(j, 3))
        r += linear(f"{ours}.attn.o_proj", f"{theirs}.attn.c_proj", True, transpose=True)
        r += norm(f"{ours}.ffn_norm", f"{theirs}.ln_2")
        r += linear(f"{ours}.ffn.up_proj", f"{theirs}.mlp.c_fc", True, transpose=True)
        r += linear(f"{ours}.ffn.down_proj", f"{theirs}.mlp.c_proj", True, transpose=True)
    r += norm("body.decoder.final_norm", f"{p}ln_f")
    r.append(Rule("lm_head.proj.weight", "lm_head.weight"))
    r += head_rules(head)
    return r


ALIASES: dict[str, str] = {}
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints
