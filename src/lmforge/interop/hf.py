"""Read and write Hugging Face checkpoint folders (`config.json` + safetensors) for every family."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from types import ModuleType

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge import assets
from lmforge.fileio import atomic_write
from lmforge.interop import bart, bert, gpt2, llama
from lmforge.interop.mapping import to_ours, to_theirs
from lmforge.models.config import LAYER_WIDTHS, ConfigError, ModelConfig
from lmforge.models.model import MaskedLM, Model
from lmforge.models.tasks import DEFAULT_TASK, TASKS, task_of

log = logging.getLogger(__name__)

FAMILIES: tuple[ModuleType, ...] = (bert, gpt2, llama, bart)
HEAD_PREFIXES = ("lm_head.", "mlm_head.", "nsp_head.", "pooler.", "head.", "heads.")
BARE_HEAD_PREFIXES = ("lm_head.", "cls.")  # HF heads that keep their names next to a bare body


class CheckpointError(ValueError):
    """A checkpoint folder or file cannot be read; the message names the file and the problem."""


def family_of(model_type: str, source: str = "config.json") -> ModuleType:
    """The interop module for an HF `model_type`."""
    for fam in FAMILIES:
        if model_type in fam.MODEL_TYPES:
            return fam
    known = ", ".join(t for fam in FAMILIES for t in fam.MODEL_TYPES)
    raise CheckpointError(f"{source}: unknown architecture model_type={model_type!r}; supported: {known}")


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder (or `.gguf` file) from a path or a named offline checkpoint (e.g. `all-minilm-l6-v2`)."""
    if (named := assets.named_folder(path)) is not None:
        return named
    folder = Path(path)
    if folder.suffix == ".gguf" and folder.is_file():
        return folder
    if not folder.is_dir():
        named = ", ".join(assets.NAMED_CHECKPOINTS)
        raise CheckpointError(f"{folder}: not a checkpoint folder nor a .gguf file (nor a named checkpoint: {named})")
    return folder


def read_hf_config(folder: Path) -> dict:
    """`config.json` as a dict, with errors that name the file, line and column."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a Hugging Face checkpoint folder needs config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if "model_type" not in data:
        raise CheckpointError(f"{path}: no 'model_type' field, so the architecture is unknown")
    return data


def config_from_folder(folder: Path) -> tuple[ModelConfig, str, ModuleType]:
    """(ModelConfig, default task, family module) for a checkpoint folder."""
    hf = read_hf_config(folder)
    source = str(folder / "config.json")
    fam = family_of(hf["model_type"], source)
    try:
        cfg = fam.config_from_hf(hf)
    except KeyError as err:
        raise CheckpointError(f"{source}: missing field {err.args[0]!r}") from None
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None
    arch = (hf.get("architectures") or [""])[0]
    task = fam.TASK_OF_ARCH.get(arch, DEFAULT_TASK[cfg.family])
    return cfg, task, fam


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: safetensors (single or sharded), else `pytorch_model.bin` safely."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: malformed shard index ({err})") from None
        out = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which is missing")
            out.update(_load_safetensors(folder / shard))
        return out
    pickled = folder / "pytorch_model.bin"
    if pickled.is_file():
        return _load_pickle(pickled)
    raise CheckpointError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle, through `weights_only=True`: tensors load, arbitrary code never runs."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refusing to unpickle: the file holds more than plain tensors ({first}). "
            "Untrusted pickles can run code; convert the checkpoint to safetensors with a tool you trust."
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return data


def load_pretrained(path: str | os.PathLike, task: str | None = None, dtype: torch.dtype = torch.float32,
                    overrides: dict | None = None, **model_kwargs) -> Model:
    """Build an lmforge model from a Hugging Face checkpoint folder, a GGUF file or a named offline checkpoint.

    `task` picks the head ("causal-lm", "masked-lm", "sequence-classification", ...); by default
    the one the checkpoint's `architectures` names. `overrides` change ModelConfig fields that do not
    change the weights' shapes (dropout, pooler, ...). The model is built on the meta device and takes
    the checkpoint's tensors themselves (`assign=True`: no random init, no second copy in memory);
    heads absent from the checkpoint are initialised, and a warning names them (and what is tied).
    """
    folder = resolve(path)
    if folder.suffix == ".gguf":  # llama.cpp's one file holds a causal LM: config, weights and tokenizer
        from lmforge.interop.gguf import load_gguf

        if task not in (None, "causal-lm"):
            raise CheckpointError(f"{folder}: a GGUF file loads as a causal-lm model only; for {task}, convert it "
                                  f"first (`lmforge convert {path} OUT --to hf`) and load that folder")
        return load_gguf(folder, dtype, overrides)
    cfg, default_task, fam = config_from_folder(folder)
    if overrides:
        try:
            cfg = cfg.replace(**overrides)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{folder}: overrides {overrides}: {err}") from None
    task = task or default_task
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    theirs = read_state_dict(folder)
    theirs = {fam.ALIASES.get(k, k): v for k, v in theirs.items()}
    rules = fam.rules(cfg, task)
    sources = {r.theirs for r in rules}
    body_names = [k for k in theirs if not k.startswith(BARE_HEAD_PREFIXES)]
    if not sources.intersection(body_names):  # a bare body (BertModel, LlamaModel, ...): no base prefix
        theirs = {k if k.startswith(BARE_HEAD_PREFIXES) else fam.PREFIX + k: v for k, v in theirs.items()}
    if task == "masked-lm" and "cls.seq_relationship.weight" in theirs:
        model_kwargs.setdefault("nsp", True)
    with torch.device("meta"):
        model = TASKS[task](cfg, **model_kwargs)
    ours = to_ours(rules, theirs)
    expected = model.state_dict()
    problems, tied = [], []
    for name, tensor in expected.items():
        if name not in ours:
            if model.is_tied(name):
                tied.append(name)
            elif not name.startswith(HEAD_PREFIXES):
                problems.append(f"missing tensor for {name}")
        elif ours[name].shape != tensor.shape:
            source = next(r.theirs for r in rules if r.ours == name)
            problems.append(f"{source}: shape {tuple(ours[name].shape)} does not match the config's {tuple(tensor.shape)}")
    if problems:
        raise CheckpointError(f"{folder}: checkpoint does not fit config.json: " + "; ".join(problems[:8])
                              + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))
    used = {r.theirs for r in rules if r.ours in expected}
    unused = sorted(k for k in theirs if k not in used and not k.endswith(fam.IGNORED))
    if unused:
        log.info("%s: %d checkpoint tensors not used by %s: %s", folder, len(unused), task, ", ".join(unused[:5]))
    model.load_state_dict({k: v for k, v in ours.items() if k in expected}, strict=False, assign=True)
    fresh = model.materialize()
    model.newly_initialised = fresh  # what fine-tuning must train (or store) since no checkpoint holds it
    if fresh:
        log.warning("%s: newly initialised (not in the checkpoint): %s%s", folder, ", ".join(fresh),
                    f"; tied to the token embedding: {', '.join(tied)}" if tied else "")
    return model.to(dtype).eval()


def export_family(cfg: ModelConfig) -> ModuleType:
    """Which Hugging Face family a config is saved as (a `ConfigError` when it has none)."""
    if cfg.has_layer_widths:
        raise ConfigError(per_layer_widths_message(cfg, "Hugging Face's config has one num_attention_heads / "
                                                        "num_key_value_heads / intermediate_size"))
    if cfg.family == "encoder":
        return bert
    if cfg.family == "encoder-decoder":
        return bart
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.gated_ffn:
        return llama
    if cfg.position == "learned" and cfg.norm == "layernorm" and not cfg.gated_ffn:
        return gpt2
    raise ConfigError("this decoder is neither GPT-2- nor LLaMA-shaped, so it has no Hugging Face format")


def per_layer_widths_message(cfg: ModelConfig, why: str) -> str:
    """Why a model with per-layer widths (structured pruning) cannot be written in a one-width format."""
    given = ", ".join(f"{name}={getattr(cfg, name)}" for name in LAYER_WIDTHS if getattr(cfg, name) is not None)
    return (f"this model has per-layer widths (pruned: {given}); {why}, so it would lose them: save it in "
            "lmforge's format (lmforge.interop.native.save_model, `lmforge convert --to lmforge`)")


def hf_architecture(model: Model) -> str:
    """The HF `architectures[0]` for an lmforge model."""
    cfg, task = model.cfg, task_of(model)
    family = export_family(cfg)
    names = {
        bert: {"encoder": "BertModel", "masked-lm": "BertForMaskedLM",
               "sequence-classification": "BertForSequenceClassification",
               "token-classification": "BertForTokenClassification", "question-answering": "BertForQuestionAnswering"},
        gpt2: {"causal-lm": "GPT2LMHeadModel", "sequence-classification": "GPT2ForSequenceClassification",
               "token-classification": "GPT2ForTokenClassification", "question-answering": "GPT2ForQuestionAnswering"},
        llama: {"causal-lm": "LlamaForCausalLM", "sequence-classification": "LlamaForSequenceClassification",
                "token-classification": "LlamaForTokenClassification",
                "question-answering": "LlamaForQuestionAnswering"},
        bart: {"seq2seq-lm": "BartForConditionalGeneration"},
    }[family]
    if isinstance(model, MaskedLM) and model.nsp_head is not None:
        return "BertForPreTraining"
    if task not in names:
        raise ConfigError(f"{task} models of the {family.__name__.rsplit('.', 1)[-1]} family cannot be saved yet")
    return names[task]


def label_names(cfg: ModelConfig) -> list[str]:
    """The class names of a classifier: `cfg.labels`, or transformers' LABEL_0, LABEL_1, ..."""
    return list(cfg.labels) if cfg.labels else [f"LABEL_{i}" for i in range(cfg.num_labels)]


def save_pretrained(model: Model, path: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` that `transformers` loads unchanged (atomically)."""
    cfg = model.cfg
    fam = export_family(cfg)
    arch = hf_architecture(model)
    task = task_of(model)
    hf_config = fam.config_to_hf(cfg, arch)
    hf_config["dtype"] = str(model.dtype).removeprefix("torch.")
    if task in ("sequence-classification", "token-classification"):
        names = label_names(cfg)
        hf_config["id2label"] = {str(i): name for i, name in enumerate(names)}
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}
    state = {k: v for k, v in model.state_dict().items() if not model.is_tied(k)}
    try:  # never drop a tensor silently (a wrapper, a head bias transformers does not have)
        theirs = to_theirs(fam.rules(cfg, task), state)
    except ConfigError as err:
        raise ConfigError(f"{arch} has no place for some tensors ({err}); this model cannot be saved in the "
                          "Hugging Face format") from None
    if arch in ("BertModel",):  # bare bodies carry no base prefix
        theirs = {k.removeprefix(fam.PREFIX): v for k, v in theirs.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda p: save_file(theirs, p, metadata={"format": "pt"}))
    atomic_write(folder / "config.json",
                  lambda p: Path(p).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n"))
    return folder
