"""GGUF (llama.cpp's one-file format) -> lmforge: the config, the weights (dequantised) and the tokenizer.

A GGUF file holds its config as metadata under llama.cpp's names (`llama.block_count`, ...), its tensors
under llama.cpp's names (`blk.0.attn_q.weight`, ...), often quantised, and its tokenizer as metadata too.
The config goes through the same `llama.config_from_hf` as a Hugging Face checkpoint's, so both routes
give the same ModelConfig. llama.cpp stores the rows of the query and key projections permuted for its
RoPE, which rotates adjacent pairs; lmforge (like transformers) rotates halves, so the rows are put back.

    model = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")      # or load_pretrained("smollm2-135m-instruct")
    tokenizer = load_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from gguf.quants import dequantize

from lmforge.gguf_file import GGUFContents, read_gguf
from lmforge.interop import llama
from lmforge.interop.hf import CheckpointError
from lmforge.interop.mapping import Rule, to_ours
from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import CausalLM
from lmforge.tokenizers import Tokenizer

ARCHITECTURES = ("llama",)

# HF `config.json` field <- GGUF metadata key (after the "<architecture>." prefix).
CONFIG_KEYS = {
    "num_hidden_layers": "block_count", "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length", "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "max_position_embeddings": "context_length", "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base", "vocab_size": "vocab_size",
}
TOKEN_IDS = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
             "pad_token_id": "tokenizer.ggml.padding_token_id"}

# lmforge block tensor <- GGUF block tensor (llama.cpp's `LLM_TENSOR_NAMES` for llama).
BLOCK_TENSORS = {
    "attn.q_proj.weight": "attn_q.weight", "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight", "attn.o_proj.weight": "attn_output.weight",
    "ffn.gate_proj.weight": "ffn_gate.weight", "ffn.up_proj.weight": "ffn_up.weight",
    "ffn.down_proj.weight": "ffn_down.weight", "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
# Block tensors whose rows llama.cpp permutes for its RoPE, and the config field with their head count.
ROPE_PERMUTED = {"attn_q.weight": "n_heads", "attn_k.weight": "n_kv_heads"}


# Type numbers ggml.h gives that this gguf package does not know (newer ones, and those removed from GGUF files).
GGML_TYPES_UNKNOWN_TO_GGUF = {4: "Q4_2", 5: "Q4_3", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
                              36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8", 42: "Q2_0"}


def open_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a GGUF file's metadata and tensor index (kept for the tokenizer and the next load: parsing takes seconds)."""
    try:
        return read_gguf(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:  # bad magic, a truncated header or tensor table, a tensor type gguf does not know
        unknown = _unknown_tensor_types(path) if "GGMLQuantizationType" in str(err) else []
        if unknown:
            raise CheckpointError(f"{Path(path).resolve()}: tensor types the gguf package {_gguf_version()} does not "
                                  f"know, so lmforge cannot read them: {_some(unknown)}") from None
        raise CheckpointError(f"{Path(path).resolve()}: not a readable GGUF file ({err})") from None


def _unknown_tensor_types(path: str | os.PathLike) -> list[str]:
    """'name (type N)' for each tensor whose type number gguf has no name for (`GGUFReader` stops at the first)."""
    from gguf import GGMLQuantizationType, GGUFReader

    class TensorIndex(GGUFReader):  # reads the header and the tensor table, then stops before the types
        def _build_tensors(self, start_offs, fields):
            self.tensor_fields = fields

    try:
        fields = TensorIndex(path).tensor_fields
    except Exception:  # the table itself is broken: the caller's message says so
        return []
    known = {t.value for t in GGMLQuantizationType}
    found = []
    for field in fields:  # parts: name length, name, n_dims, dims, type, offset
        name, kind = bytes(field.parts[1]).decode("utf-8", "replace"), int(field.parts[4][0])
        if kind not in known:
            label = f" = {GGML_TYPES_UNKNOWN_TO_GGUF[kind]}" if kind in GGML_TYPES_UNKNOWN_TO_GGUF else ""
            found.append(f"{name} (type {kind}{label})")
    return found


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"


def _architecture(file: GGUFContents) -> str:
    arch = file.metadata.get("general.architecture")
    if arch is None:
        raise CheckpointError(f"{file.path}: no general.architecture in the metadata")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{file.path}: GGUF architecture {arch!r} is not supported; "
                              f"supported: {', '.join(ARCHITECTURES)}")
    return arch


def read_gguf_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a GGUF file, from its metadata (the one its Hugging Face conversion gives)."""
    file = open_gguf(path)
    arch, meta = _architecture(file), file.metadata
    hf = {"model_type": arch, "tie_word_embeddings": "output.weight" not in file.tensors}
    hf.update({field: meta[f"{arch}.{key}"] for field, key in CONFIG_KEYS.items() if f"{arch}.{key}" in meta})
    hf.update({field: meta[key] for field, key in TOKEN_IDS.items() if key in meta})
    if "vocab_size" not in hf and "tokenizer.ggml.tokens" in meta:  # older files: the tokenizer's size
        hf["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    scaling = meta.get(f"{arch}.rope.scaling.type", "linear" if f"{arch}.rope.scale_linear" in meta else "none")
    if scaling != "none":
        factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
        hf["rope_scaling"] = {"rope_type": scaling, "factor": factor}
    try:
        return llama.config_from_hf(hf)
    except KeyError as err:
        key = f"{arch}.{CONFIG_KEYS[err.args[0]]}" if err.args[0] in CONFIG_KEYS else err.args[0]
        raise CheckpointError(f"{file.path}: missing metadata {key}") from None
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{file.path}: {err}") from None


def rules(cfg: ModelConfig) -> list[Rule]:
    """lmforge <- GGUF tensor names."""
    r = [Rule("body.tokens.weight", "token_embd.weight")]
    for i in range(cfg.n_layers):
        r += [Rule(f"body.decoder.blocks.{i}.{ours}", f"blk.{i}.{gguf}") for ours, gguf in BLOCK_TENSORS.items()]
    r.append(Rule("body.decoder.final_norm.weight", "output_norm.weight"))
    r.append(Rule("lm_head.proj.weight", "output.weight"))  # absent when tied to the embedding
    return r


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order of a query/key projection (interleaved pairs -> rotate-half halves)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensor(file: GGUFContents, name: str) -> torch.Tensor:
    """One tensor of a GGUF file, dequantised to float32, in PyTorch's (out, in) layout."""
    tensor = file.tensors[name]
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, ValueError) as err:  # no dequantizer (F64, I32, Q8_K, ...), or a bad block size
        why = "" if isinstance(err, NotImplementedError) else f" ({err})"
        raise CheckpointError(f"{file.path}: tensor {name} is stored as {tensor.tensor_type.name}, which the "
                              f"gguf package {_gguf_version()} cannot dequantize{why}; lmforge reads F32, F16, "
                              "BF16 and the quantised types gguf dequantizes (Q4_0, Q8_0, K-quants, ...)") from None
    values = values.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims innermost first
    return torch.from_numpy(values if values.flags.writeable else values.copy())  # F32 is a read-only view


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              overrides: dict | None = None) -> CausalLM:
    """An lmforge CausalLM from a GGUF file (weights dequantised; built on the meta device, no random init).

    `overrides` change ModelConfig fields that do not change the weights' shapes (dropout, ...).
    """
    file = open_gguf(path)
    cfg = read_gguf_config(path)
    if overrides:
        try:
            cfg = cfg.replace(**overrides)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{file.path}: overrides {overrides}: {err}") from None
    table = rules(cfg)
    unused = sorted(set(file.tensors) - {r.theirs for r in table})
    if unused:
        raise CheckpointError(f"{file.path}: tensors the {file.metadata['general.architecture']} family has no "
                              f"place for: {_some(unused)}")
    permuted = {f"blk.{i}.{name}": getattr(cfg, field)
                for i in range(cfg.n_layers) for name, field in ROPE_PERMUTED.items()}
    theirs = {}
    for name in file.tensors:
        tensor = read_tensor(file, name)
        theirs[name] = unpermute_rope(tensor, permuted[name]) if name in permuted else tensor
    with torch.device("meta"):
        model = CausalLM(cfg)
    ours = to_ours(table, theirs)
    source_of = {r.ours: r.theirs for r in table}
    problems = []
    for name, expected in model.state_dict().items():
        source = source_of.get(name, name)
        if name not in ours and not model.is_tied(name):
            problems.append(f"missing tensor {source}")
        elif name in ours and ours[name].shape != expected.shape:
            problems.append(f"{source}: shape {tuple(ours[name].shape)} does not match the metadata's "
                            f"{tuple(expected.shape)}")
    if problems:
        raise CheckpointError(f"{file.path}: {_some(problems, '; ')}")
    model.load_state_dict(ours, strict=False, assign=True)
    model.materialize()  # ties the head, computes the RoPE frequencies; every parameter came from the file
    return model.to(dtype).eval()


def _some(items: list[str], sep: str = ", ", n: int = 8) -> str:
    return sep.join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def load_gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer a GGUF file stores in its metadata, with its special tokens and chat template."""
    file = open_gguf(path)
    return Tokenizer.from_gguf_metadata(file.metadata, source=str(file.path))
