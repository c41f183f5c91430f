"""lmforge -> GGUF (llama.cpp's one-file format): a LLaMA-family causal LM, its tokenizer and chat template.

The inverse of `lmforge.interop.gguf`: the config goes out as `llama.*` metadata under the keys the
reader reads (`CONFIG_KEYS`), the tensors under its names (`rules`), the query/key rows permuted into
llama.cpp's RoPE order (`permute_rope`, the inverse of `unpermute_rope`), and the tokenizer as
`tokenizer.ggml.*` metadata that `Tokenizer.from_gguf_metadata` (and llama.cpp) read back.

As llama.cpp's `convert_hf_to_gguf.py` does, norms (1-D) stay F32 in every type, 2-D weights take the
requested type (the token embedding and the output projection too), and a weight whose rows are not
a whole number of the type's blocks falls back to F16 (a warning names it). The quantised types use
`gguf.quants.quantize`, the gguf package's port of llama.cpp's reference formulas; every 2-D weight
gets the one type (what `llama-quantize --pure` gives, not its default mixes).

    save_gguf(model, tokenizer, "model.Q8_0.gguf", gguf_type="q8_0")
    # llama-completion -m model.Q8_0.gguf -p "Hello" -n 32 --temp 0 -no-cnv
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    TokenType,
)
from gguf.quants import quantize
from torch import nn

from lmforge.fileio import atomic_write
from lmforge.interop import llama
from lmforge.interop.gguf import CONFIG_KEYS, ROPE_PERMUTED, TOKEN_IDS, rules
from lmforge.interop.hf import CheckpointError
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import Model
from lmforge.models.norms import RMSNorm
from lmforge.models.tasks import task_of
from lmforge.tokenizers import Tokenizer

log = logging.getLogger(__name__)

ARCHITECTURE = "llama"
# --gguf-type -> (the tensor type of the 2-D weights, llama.cpp's LLAMA_FTYPE for general.file_type).
GGUF_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (GGMLQuantizationType.Q4_1, LlamaFileType.MOSTLY_Q4_1),
}
# Metadata stored as float32 (the rest of CONFIG_KEYS are uint32), as llama.cpp's writer types them.
FLOAT_KEYS = ("rope.freq_base", "attention.layer_norm_rms_epsilon")
FALLBACK = GGMLQuantizationType.F16  # convert_hf_to_gguf.py's type for rows a quantised type cannot block
# llama.cpp's `tokenizer.ggml.pre` for the reader's names where they differ (llama-vocab.cpp knows no "gpt2").
LLAMA_CPP_PRE = {"gpt2": "gpt-2"}


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's row order of a query/key projection (rotate-half halves -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------ the model


def _family_name(cfg: ModelConfig) -> str:
    from lmforge.interop.hf import export_family

    try:
        family = export_family(cfg).__name__.rsplit(".", 1)[-1]
    except ConfigError:
        return f"custom {cfg.family}"
    return {"bert": "BERT", "gpt2": "GPT-2", "llama": "LLaMA", "bart": "BART"}[family]


def check_llama(model: Model) -> None:
    """Raise `CheckpointError` listing every way `model` is not a LLaMA-family causal LM llama.cpp can run."""
    cfg, task = model.cfg, task_of(model)
    if cfg.has_layer_widths:
        from lmforge.interop.hf import per_layer_widths_message

        raise CheckpointError(per_layer_widths_message(cfg, "GGUF's llama metadata has one head_count / "
                                                            "head_count_kv / feed_forward_length"))
    family = _family_name(cfg)
    if task != "causal-lm" or family != "LLaMA":
        raise CheckpointError(f"GGUF export writes LLaMA-family causal LMs only; this is a {task} model of the "
                              f"{family} family")
    wanted = {"rope_fraction": 1.0, "activation": "silu", "norm_position": "pre", "final_norm": True,
              "embedding_norm": False, "scale_embeddings": False, "qkv_bias": False, "out_bias": False,
              "ffn_bias": False, "lm_head_bias": False, "type_vocab_size": 0, "sliding_window": None}
    problems = [f"{field}={getattr(cfg, field)!r} (llama.cpp's llama has {value!r})"
                for field, value in wanted.items() if getattr(cfg, field) != value]
    if cfg.attn_scale is not None and abs(cfg.attn_scale - cfg.head_dim ** -0.5) > 1e-12:
        problems.append(f"attn_scale={cfg.attn_scale} (llama.cpp's llama scales by 1/sqrt(head_dim))")
    if cfg.rope_scaling and cfg.rope_scaling.get("type") != "linear":
        problems.append(f"rope_scaling type {cfg.rope_scaling.get('type')!r} (GGUF's llama has linear only)")
    if problems:
        raise CheckpointError("this LLaMA-family model cannot be written as GGUF llama: " + "; ".join(problems))


def gguf_tensors(model: Model) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names, q/k rows in llama.cpp's order; only plain layers are read.

    A projection that is not a plain `nn.Linear` (a LoRA wrapper, a quantized layer, fused q/k/v) is an
    error naming it, as is a tensor that has no GGUF name: nothing is dropped silently.
    """
    cfg = model.cfg
    table = [r for r in rules(cfg) if not model.is_tied(r.ours)]  # no output.weight when the head is tied
    permuted = {f"blk.{i}.{name}": getattr(cfg, field)
                for i in range(cfg.n_layers) for name, field in ROPE_PERMUTED.items()}
    out, problems = {}, []
    for rule in table:
        module_name, _, param = rule.ours.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            problems.append(f"{module_name} is missing (fused by fuse_projections()? load the model again)")
            continue
        kind = nn.Embedding if rule.theirs == "token_embd.weight" else RMSNorm if module_name.endswith("norm") \
            else nn.Linear
        if type(module) is not kind:
            problems.append(f"{module_name} is a {type(module).__name__}, not a plain {kind.__name__}")
            continue
        tensor = getattr(module, param).detach()
        out[rule.theirs] = permute_rope(tensor, permuted[rule.theirs]) if rule.theirs in permuted else tensor
    mapped = {r.ours for r in table}
    unmapped = [k for k in model.state_dict() if k not in mapped and not model.is_tied(k)]
    if unmapped:
        problems.append(f"no GGUF name for {', '.join(unmapped[:8])}" + (" ..." if len(unmapped) > 8 else ""))
    if problems:
        raise CheckpointError("cannot export to GGUF (exporting quantized or adapter-wrapped layers is not "
                              "supported: merge adapters first, export the unquantized model): "
                              + "; ".join(problems[:8]))
    return out


def model_metadata(cfg: ModelConfig) -> dict[str, Any]:
    """`llama.*` metadata for a config: the inverse of `read_gguf_config` (plus the key and rope lengths llama.cpp
    writes)."""
    try:
        hf = llama.config_to_hf(cfg, "LlamaForCausalLM")
    except ConfigError as err:
        raise CheckpointError(f"cannot export to GGUF: {err}") from None
    hf["rope_theta"] = cfg.rope_theta  # config_to_hf keeps it in rope_parameters
    meta: dict[str, Any] = {}
    for field, key in CONFIG_KEYS.items():
        meta[f"{ARCHITECTURE}.{key}"] = float(hf[field]) if key in FLOAT_KEYS else int(hf[field])
    meta[f"{ARCHITECTURE}.attention.value_length"] = int(cfg.head_dim)
    meta[f"{ARCHITECTURE}.rope.dimension_count"] = int(cfg.head_dim)
    if cfg.rope_scaling:  # linear only (check_llama)
        meta[f"{ARCHITECTURE}.rope.scaling.type"] = "linear"
        meta[f"{ARCHITECTURE}.rope.scaling.factor"] = float(cfg.rope_scaling["factor"])
    return meta


def encode_tensor(name: str, tensor: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[np.ndarray,
                                                                                          GGMLQuantizationType]:
    """(data, type) of one tensor as GGUF stores it: norms and other 1-D tensors F32, 2-D ones in `qtype`.

    Rows that are not a whole number of `qtype`'s blocks fall back to F16, as llama.cpp's converter does.
    """
    values = tensor.to(torch.float32).cpu().contiguous().numpy()
    if values.ndim < 2 or name.endswith("_norm.weight"):
        qtype = GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        log.warning("%s: rows of %d values are not a whole number of %s blocks (%d); written as %s, as llama.cpp's "
                    "converter does", name, values.shape[-1], qtype.name, block, FALLBACK.name)
        qtype = FALLBACK
    return quantize(values, qtype), qtype


# -------------------------------------------------------------------------------------- the tokenizer


def pre_tokenizer_name(tokenizer: Tokenizer) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for the way this tokenizer splits text before BPE, or None when none fits.

    The candidates are the splits lmforge's GGUF reader builds for each name (`gpt2`, written as llama.cpp's
    `gpt-2`: GPT-2's regex; `smollm`: every digit alone, then GPT-2's regex; `llama-bpe`: LLaMA 3's regex);
    the first whose serialized form equals this one's wins (`smollm` before `starcoder`, which splits alike).
    """
    from lmforge.tokenizers.tokenizer import GGUF_PRE_TOKENIZERS

    def canonical(config: dict | None) -> Any:  # trim_offsets moves offsets only, never the ids
        if isinstance(config, dict):
            return {k: canonical(v) for k, v in config.items() if k != "trim_offsets"}
        if isinstance(config, list):
            return [canonical(v) for v in config]
        return config

    ours = canonical(json.loads(tokenizer.to_json()).get("pre_tokenizer"))
    for name, build in GGUF_PRE_TOKENIZERS.items():
        if canonical(json.loads(build().__getstate__())) == ours:
            return LLAMA_CPP_PRE.get(name, name)
    return None


def _specials_added(tokenizer: Tokenizer, source: str) -> tuple[bool, bool]:
    """(add_bos_token, add_eos_token): what `encode` puts around a text, which llama.cpp can only say this way."""
    plain, wrapped = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
    start = next((i for i in range(len(wrapped) - len(plain) + 1) if wrapped[i:i + len(plain)] == plain), None)
    prefix = wrapped[:start] if start is not None else None
    suffix = wrapped[start + len(plain):] if start is not None else None
    if prefix not in ([], [tokenizer.bos_id]) or suffix not in ([], [tokenizer.eos_id]):
        shown = [tokenizer.id_to_token(i) for i in wrapped]
        raise CheckpointError(f"{source}: encode wraps text as {shown}; GGUF can only say 'add the bos token' "
                              "and 'add the eos token'")
    return bool(prefix), bool(suffix)


def to_gguf_metadata(tokenizer: Tokenizer, vocab_size: int, *, pre: str | None = None,
                     chat_template: str | None = None, token_ids: dict[str, int | None] | None = None,
                     source: str = "tokenizer") -> dict[str, Any]:
    """The `tokenizer.ggml.*` (and `tokenizer.chat_template`) metadata of a byte-level BPE tokenizer.

    The token list is padded to the model's `vocab_size` with unused `[PAD<i>]` entries, as llama.cpp's
    converter pads it. `pre` is llama.cpp's pre-tokenizer name (None: `pre_tokenizer_name`, else `gpt-2`
    with a warning); `token_ids` gives the bos/eos/pad ids a tokenizer without those roles should carry
    (the model config's). Kinds llama.cpp cannot represent exactly raise `CheckpointError`.
    """
    data = json.loads(tokenizer.to_json())
    model, normalizer = data.get("model") or {}, data.get("normalizer")
    byte_level = "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not byte_level or model.get("byte_fallback"):
        kind = {"WordPiece": "WordPiece (BERT-style)", "Unigram": "Unigram (SentencePiece-style)"}.get(
            model.get("type"), f"{model.get('type')} without byte-level pre-tokenization")
        raise CheckpointError(f"{source}: a {kind} tokenizer cannot be written as GGUF: llama.cpp's tokenizers would "
                              "not give the same ids; export models with a byte-level BPE tokenizer "
                              "(`lmforge tokenizer train --kind bpe`)")
    if normalizer is not None:
        raise CheckpointError(f"{source}: the tokenizer normalizes text first ({normalizer.get('type')}, e.g. "
                              "lower-casing), which llama.cpp's BPE tokenizer does not; it cannot be written as GGUF")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CheckpointError(f"{source}: BPE with a subword prefix/suffix cannot be written as GGUF")
    if pre is None:
        pre = pre_tokenizer_name(tokenizer)
        if pre is None:
            log.warning("%s: its pre-tokenizer matches none llama.cpp names; writing tokenizer.ggml.pre=gpt-2 "
                        "(GPT-2's regex), so llama.cpp may split some texts differently", source)
            pre = "gpt-2"
    pre = LLAMA_CPP_PRE.get(pre, pre)
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(f"{source}: {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                              f"{vocab_size}")
    specials = {i: t for i, t in tokenizer.backend.get_added_tokens_decoder().items()}
    roles = set(tokenizer.special_tokens.values())
    tokens, types = [], []
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(token)
            added = specials.get(i)
            types.append(TokenType.CONTROL if (added is not None and added.special) or token in roles
                         else TokenType.USER_DEFINED if added is not None else TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    add_bos, add_eos = _specials_added(tokenizer, source)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(t) for t in types], "tokenizer.ggml.merges": merges,
    }
    fallback = token_ids or {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "pad_token_id")):
        token_id = getattr(tokenizer, f"{role}_id")
        token_id = fallback.get(key) if token_id is None else token_id
        if token_id is not None:
            meta[TOKEN_IDS[key]] = int(token_id)
    if tokenizer.unk_id is not None:
        meta["tokenizer.ggml.unknown_token_id"] = int(tokenizer.unk_id)
    meta.update({"tokenizer.ggml.add_bos_token": add_bos, "tokenizer.ggml.add_eos_token": add_eos,
                 "tokenizer.ggml.add_space_prefix": False})
    template = chat_template if chat_template is not None else tokenizer.chat_template
    if template:
        meta["tokenizer.chat_template"] = template
    return meta


# -------------------------------------------------------------------------------------------- writing


def add_metadata(writer: GGUFWriter, key: str, value: Any) -> None:
    """One metadata entry, typed as llama.cpp's writer types it: bool, uint32, float32, string, array."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)  # strings, or int32 (token types)


def save_gguf(model: Model, tokenizer: Tokenizer, path: str | os.PathLike, gguf_type: str = "f16",
              chat_template: str | None = None, *, name: str | None = None, pre: str | None = None) -> Path:
    """Write a LLaMA-family causal LM and its tokenizer as one GGUF file (atomically) that llama.cpp runs.

    `gguf_type` is the type of the 2-D weights (f32, f16, bf16, q8_0, q4_0, q4_1; norms stay F32);
    `chat_template` replaces the tokenizer's; `name` is `general.name` (default: the file's stem); `pre`
    is llama.cpp's pre-tokenizer name (default: the one matching the tokenizer; pass the source file's
    `tokenizer.ggml.pre` when the tokenizer came from GGUF).
    """
    if gguf_type not in GGUF_TYPES:
        raise CheckpointError(f"gguf_type={gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    path = Path(path)
    check_llama(model)
    cfg = model.cfg
    qtype, file_type = GGUF_TYPES[gguf_type]
    tensors = gguf_tensors(model)
    meta = {"general.name": name or path.stem, "general.file_type": int(file_type),
            "general.quantization_version": GGML_QUANT_VERSION, **model_metadata(cfg),
            **to_gguf_metadata(tokenizer, cfg.vocab_size, pre=pre, chat_template=chat_template,
                               token_ids={"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                                          "pad_token_id": cfg.pad_token_id})}
    encoded = {n: encode_tensor(n, t, qtype) for n, t in tensors.items()}

    def write(tmp: str) -> None:
        writer = GGUFWriter(tmp, ARCHITECTURE)
        for key, value in meta.items():
            add_metadata(writer, key, value)
        for tensor_name, (data, kind) in encoded.items():
            writer.add_tensor(tensor_name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path
