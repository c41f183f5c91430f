"""LoRA and DoRA adapters in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

PEFT names an adapter's tensors after the Hugging Face module they wrap, under the PeftModel's prefix:
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (LLaMA),
`base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight` (BERT),
`...q_proj.lora_magnitude_vector` (DoRA's magnitude), and a trained task head (`modules_to_save`) as
`base_model.model.classifier.weight`. lmforge's names map to Hugging Face's through the interop rules
of the model's family (`lmforge.interop.<family>.rules`), the same table `save_pretrained` uses, so a
LoRA trained here runs under `peft.PeftModel.from_pretrained` on the exported base, and a PEFT adapter
loads onto the lmforge model of that base (`load_peft`).

LoRA's factors have the same layout in both (A (r, in), B (out, r)); a GPT-2 Conv1D layer stores its
weight transposed, which PEFT handles with `fan_in_fan_out`. A fused Hugging Face projection (GPT-2's
`c_attn`, q, k and v in one) has no single lmforge layer, and is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.adapt.base import adapt
from lmforge.adapt.config import AdaptConfig, AdaptError
from lmforge.adapt.lora import DoRALinear, lora_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {
    "causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS",
    "question-answering": "QUESTION_ANS", "seq2seq-lm": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION",
}
# lmforge's tensor of a LoRA layer -> PEFT's, after the module name.
LORA_TENSORS = {"lora_A.weight": "lora_A.weight", "lora_B.weight": "lora_B.weight",
                "lora_magnitude": "lora_magnitude_vector"}
# PEFT options that change what an adapter computes, which `load_peft` does not implement: their defaults.
UNSUPPORTED = {"rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "exclude_modules": None,
               "lora_bias": False, "use_qalora": False, "target_parameters": None, "trainable_token_indices": None,
               "layer_replication": None}


@dataclass(frozen=True)
class HFLinear:
    """Where an lmforge Linear sits in the Hugging Face model of its family."""

    name: str
    """The HF module name, relative to the transformers model (`model.layers.0.self_attn.q_proj`)."""
    transposed: bool
    """Stored (in, out) in HF (GPT-2's Conv1D): PEFT's `fan_in_fan_out`."""
    fused: bool
    """One of several lmforge layers in one HF tensor (GPT-2's `c_attn`): no LoRA there."""


def linear_map(model: nn.Module) -> dict[str, HFLinear]:
    """lmforge Linear module name -> its Hugging Face module, for every Linear the family's rules name."""
    from lmforge.interop.hf import export_family, hf_architecture
    from lmforge.models.config import ConfigError
    from lmforge.models.tasks import task_of

    try:
        family, arch = export_family(model.cfg), hf_architecture(model)
        rules = family.rules(model.cfg, task_of(model))
    except ConfigError as err:
        raise AdaptError(f"this model has no Hugging Face (hence no PEFT) layout: {err}") from None
    bare = arch == "BertModel"  # a bare body carries no base prefix (as save_pretrained writes it)
    modules = dict(model.named_modules())
    out = {}
    for rule in rules:
        if not rule.ours.endswith(".weight"):
            continue
        ours, theirs = rule.ours.removesuffix(".weight"), rule.theirs.removesuffix(".weight")
        module = modules.get(ours)
        if module is None or not hasattr(module, "in_features"):  # absent here, or a norm / embedding
            continue
        if bare:
            theirs = theirs.removeprefix(family.PREFIX)
        out[ours] = HFLinear(theirs, rule.transpose, rule.part is not None)
    return out


def _head_tensors(model: nn.Module) -> dict[str, str]:
    """The task head's lmforge tensor names -> HF tensor names (none for models without a head)."""
    from lmforge.interop.hf import export_family
    from lmforge.models.tasks import task_of

    head = getattr(export_family(model.cfg), "HEADS", {}).get(task_of(model))
    if head is None or getattr(model, "head", None) is None:
        return {}
    names = {"head.proj.weight": f"{head.name}.weight"}
    if head.bias:
        names["head.proj.bias"] = f"{head.name}.bias"
    return names


def _compact_targets(chosen: list[str], candidates: list[str]) -> list[str]:
    """PEFT `target_modules` for the HF modules `chosen`: for each, its shortest dotted ending (`q_proj`,
    `intermediate.dense`, `layers.0.self_attn.q_proj`) that names none of the other `candidates` (PEFT
    matches a listed name against the end of each module's name)."""
    others = sorted(set(candidates) - set(chosen))
    names = set()
    for name in chosen:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            ending = ".".join(parts[-k:])
            if parts[-k].isdigit():  # `0.self_attn.q_proj` reads badly: take the layer list's name too
                continue
            if not any(o == ending or o.endswith("." + ending) for o in others):
                names.add(ending)
                break
    return sorted(names)


def save_peft(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write a LoRA/DoRA-adapted model's adapter as PEFT does (`PeftModel.from_pretrained` reads it)."""
    from lmforge.fileio import atomic_write
    from lmforge.models.tasks import task_of

    cfg = getattr(model, "adaptation", None)
    if cfg is None or cfg.method not in ("lora", "dora", "qlora"):
        method = cfg.method if cfg is not None else "none"
        raise AdaptError(f"save_peft writes LoRA and DoRA adapters; this model's adaptation is {method!r}")
    layers = lora_layers(model)
    mapping = linear_map(model)
    unmapped = [n for n in layers if n not in mapping]
    fused = [f"{n} (in {mapping[n].name})" for n in layers if n in mapping and mapping[n].fused]
    if unmapped or fused:
        raise AdaptError("these LoRA layers have no single Hugging Face module, so PEFT cannot hold them: "
                         + ", ".join(unmapped + fused)[:400]
                         + (" (GPT-2 fuses q, k and v into c_attn: target o_proj / ffn layers instead)" if fused else ""))
    transposed = {mapping[n].transposed for n in layers}
    if len(transposed) > 1:
        raise AdaptError("PEFT's fan_in_fan_out is one flag per adapter: target only Conv1D layers or only Linear ones")
    state = model.state_dict()
    tensors = {}
    for name, layer in layers.items():
        for ours, theirs in LORA_TENSORS.items():
            if ours != "lora_magnitude" or isinstance(layer, DoRALinear):
                tensors[f"{PREFIX}{mapping[name].name}.{theirs}"] = state[f"{name}.{ours}"]
    head = _head_tensors(model)
    trained_head = bool(head) and all(p.requires_grad for p in model.head.parameters())
    if trained_head:
        tensors.update({f"{PREFIX}{theirs}": state[ours] for ours, theirs in head.items()})
    candidates = [m.name for m in mapping.values() if not m.fused]
    peft_config = {
        "peft_type": "LORA", "task_type": TASK_TYPES.get(task_of(model)), "r": cfg.r,
        "lora_alpha": int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": _compact_targets([mapping[n].name for n in layers], candidates),
        "use_rslora": cfg.rslora, "use_dora": cfg.method == "dora", "bias": "none",
        "fan_in_fan_out": transposed.pop(), "modules_to_save": [head["head.proj.weight"].removesuffix(".weight")]
        if trained_head else None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "init_lora_weights": True, "revision": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(peft_config, indent=2) + "\n"))
    return folder


def read_peft_config(folder: str | os.PathLike) -> dict:
    """`adapter_config.json` of a PEFT LoRA folder, checked: errors name the file and field."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdaptError(f"{path}: missing (not a PEFT adapter folder)") from None
    except json.JSONDecodeError as err:
        raise AdaptError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise AdaptError(f"{path}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdaptError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA adapters (LoRA, DoRA) load here")
    problems = [f"{k} is missing" for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r} (only 'none': LoRA without trained biases)")
    problems += [f"{k}={config[k]!r} is not supported (leave it at {default!r})"
                 for k, default in UNSUPPORTED.items() if config.get(k, default) not in (default, None, {}, [])]
    if problems:
        raise AdaptError(f"{path}: " + "; ".join(problems))
    return config


def _peft_targets(config: dict, mapping: dict[str, HFLinear], source: str) -> list[str]:
    """The lmforge module names PEFT's `target_modules` picks (PEFT's rules: a list matches names by suffix,
    a string is a regular expression over the whole name); a name that picks nothing is an error."""
    by_hf = {m.name: ours for ours, m in mapping.items()}
    targets = config["target_modules"]
    if targets == "all-linear":  # PEFT: every Linear but the output layer
        return [ours for ours in mapping if ours.startswith("body.")]
    if isinstance(targets, str):
        picked = [hf for hf in by_hf if re.fullmatch(targets, hf)]
        missing = [targets] if not picked else []
    else:
        picked, missing = [], []
        for t in targets:
            hits = [hf for hf in by_hf if hf == t or hf.endswith("." + t)]
            missing += [] if hits else [t]
            picked += [h for h in hits if h not in picked]
    if missing:
        examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in by_hf})[:12])
        raise AdaptError(f"{source}: target_modules {', '.join(map(repr, missing))} name no Linear module of this "
                         f"model (its Hugging Face Linear modules end in: {examples})")
    fused = [hf for hf in picked if mapping[by_hf[hf]].fused]
    if fused:
        raise AdaptError(f"{source}: {fused[0]} is a fused projection (q, k and v in one), which lmforge keeps as "
                         "three layers: this adapter cannot be carried over")
    return [by_hf[hf] for hf in picked]


def load_peft(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Apply the PEFT LoRA/DoRA adapter in `folder` to `model` (the lmforge model of the same base), in place."""
    from lmforge.interop.hf import _load_safetensors

    folder = Path(folder)
    source = str(folder / CONFIG_FILE)
    config = read_peft_config(folder)
    mapping = linear_map(model)
    targets = _peft_targets(config, mapping, source)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdaptError(f"{weights}: missing (only adapter_model.safetensors is read, not pickles)")
    tensors = {}
    for key, tensor in _load_safetensors(weights).items():
        if not key.startswith(PREFIX):
            raise AdaptError(f"{weights}: tensor {key!r} is not under PEFT's {PREFIX!r}")
        tensors[key.removeprefix(PREFIX)] = tensor
    # PEFT's names -> ours: the LoRA tensors of each target, then a trained task head (modules_to_save).
    wanted = {f"{mapping[t].name}.{theirs}": f"{t}.{ours}" for t in targets for ours, theirs in LORA_TENSORS.items()
              if ours != "lora_magnitude" or config.get("use_dora")}
    head = {theirs: ours for ours, theirs in _head_tensors(model).items()}
    unknown = sorted(k for k in tensors if k not in wanted and k not in head)
    missing = sorted(k for k in wanted if k not in tensors)
    if unknown or missing:
        parts = ([f"no place in this model for {', '.join(unknown[:6])}"] if unknown else []) + \
                ([f"missing {', '.join(missing[:6])}"] if missing else [])
        raise AdaptError(f"{weights}: does not fit {CONFIG_FILE}'s targets: " + "; ".join(parts))
    with_head = any(k in head for k in tensors)
    adapt(model, AdaptConfig(method="dora" if config.get("use_dora") else "lora", r=int(config["r"]),
                             alpha=float(config["lora_alpha"]), dropout=float(config.get("lora_dropout", 0.0)),
                             rslora=bool(config.get("use_rslora", False)), target_modules=targets,
                             train_head=with_head))
    state = model.state_dict()
    ours_of = {**wanted, **head}
    shapes = [f"{k}: {tuple(t.shape)} vs {tuple(state[ours_of[k]].shape)}" for k, t in tensors.items()
              if t.shape != state[ours_of[k]].shape]
    if shapes:
        raise AdaptError(f"{weights}: tensor shapes do not fit this model (r={config['r']}): {'; '.join(shapes[:4])}")
    with torch.no_grad():
        for key, tensor in tensors.items():
            state[ours_of[key]].copy_(tensor)
    return model
