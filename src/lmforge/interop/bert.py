"""BERT (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`, ...) <-> lmforge encoder."""

from __future__ import annotations

from lmforge.interop.mapping import Head, Rule, head_rules, label_fields, linear, norm
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.presets import BERT

MODEL_TYPES = ("bert",)
PREFIX = "bert."
TASK_OF_ARCH = {
    "BertModel": "encoder", "BertForMaskedLM": "masked-lm", "BertForPreTraining": "masked-lm",
    "BertForSequenceClassification": "sequence-classification",
    "BertForTokenClassification": "token-classification", "BertForQuestionAnswering": "question-answering",
}
# Task heads; BertForTokenClassification and BertForQuestionAnswering have no pooler.
HEADS = {
    "sequence-classification": Head("classifier", True, PREFIX),
    "token-classification": Head("classifier", True, PREFIX),
    "question-answering": Head("qa_outputs", True, PREFIX),
}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def config_from_hf(hf: dict) -> ModelConfig:
    """HF `config.json` contents -> ModelConfig."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported (only absolute)")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={act!r} is not supported; known: {', '.join(ACTIVATIONS)}")
    return ModelConfig(**{
        **BERT,
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"], "d_ff": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 512), "type_vocab_size": hf.get("type_vocab_size", 2),
        "norm_eps": hf.get("layer_norm_eps", 1e-12), "activation": ACTIVATIONS[act],
        "pad_token_id": hf.get("pad_token_id", 0), **label_fields(hf),
        "sequence_classifier_bias": HEADS["sequence-classification"].bias,
    })


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    """ModelConfig -> HF `config.json` contents."""
    act = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}[cfg.activation]
    return {
        "architectures": [architecture], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff, "hidden_act": act, "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_token_id,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "initializer_range": cfg.init_std, "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }


def rules(cfg: ModelConfig, task: str) -> list[Rule]:
    """lmforge <- HF names, with the `bert.` base prefix (stripped for bare BertModel checkpoints)."""
    head = HEADS.get(task)
    p = head.base_prefix if head else PREFIX
    r = [
        Rule("body.tokens.weight", f"{p}embeddings.word_embeddings.weight"),
        Rule("body.encoder.positions.weight", f"{p}embeddings.position_embeddings.weight"),
        Rule("body.encoder.token_types.weight", f"{p}embeddings.token_type_embeddings.weight"),
        *norm("body.encoder.embed_norm", f"{p}embeddings.LayerNorm"),
    ]
    for i in range(cfg.n_layers):
        ours, theirs = f"body.encoder.blocks.{i}", f"{p}encoder.layer.{i}"
        r += linear(f"{ours}.attn.q_proj", f"{theirs}.attention.self.query", True)
        r += linear(f"{ours}.attn.k_proj", f"{theirs}.attention.self.key", True)
        r += linear(f"{ours}.attn.v_proj", f"{theirs}.attention.self.value", True)
        r += linear(f"{ours}.attn.o_proj", f"{theirs}.attention.output.dense", True)
        r += norm(f"{ours}.attn_norm", f"{theirs}.attention.output.LayerNorm")
        r += linear(f"{ours}.ffn.up_proj", f"{theirs}.intermediate.dense", True)
        r += linear(f"{ours}.ffn.down_proj", f"{theirs}.output.dense", True)
        r += norm(f"{ours}.ffn_norm", f"{theirs}.output.LayerNorm")
    r += linear("pooler.dense", f"{p}pooler.dense", True)
    r += linear("mlm_head.dense", "cls.predictions.transform.dense", True)
    r += norm("mlm_head.norm", "cls.predictions.transform.LayerNorm")
    r += [Rule("mlm_head.proj.weight", "cls.predictions.decoder.weight"),
          Rule("mlm_head.proj.bias", "cls.predictions.bias")]
    r += linear("nsp_head.proj", "cls.seq_relationship", True)
    r += head_rules(head)
    return r


# Names some checkpoints use for the same tensor; and buffers that carry no weights.
ALIASES = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED = ("embeddings.position_ids",)
