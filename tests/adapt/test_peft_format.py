"""LoRA / DoRA in PEFT's layout (lmforge.adapt.peft_format), with `peft` itself as the oracle both ways.

Each case: a tiny random lmforge model, exported with `save_pretrained` and read by transformers; an
lmforge-trained adapter must give lmforge's logits under `peft.PeftModel.from_pretrained`, and a PEFT
adapter with random (non-zero) factors must give PEFT's logits after `load_peft`.
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.adapt import AdaptConfig, AdaptError, adapt
from lmforge.adapt.peft_format import load_peft, save_peft
from lmforge.interop import save_pretrained
from lmforge.models import build_model
from lmforge.models.presets import get_preset

VOCAB = 256
TOL = 1e-4

# name: (preset, task, lmforge target patterns, PEFT target_modules, what save_peft writes as target_modules)
CASES = {
    "llama": ("llama-tiny", "causal-lm", ["*q_proj", "*v_proj", "*down_proj"], ["q_proj", "v_proj", "down_proj"],
              ["down_proj", "q_proj", "v_proj"]),
    "llama-one-layer": ("llama-tiny", "causal-lm", ["body.decoder.blocks.0.attn.q_proj"],
                        ["model.layers.0.self_attn.q_proj"], ["layers.0.self_attn.q_proj"]),
    "llama-classifier": ("llama-tiny", "sequence-classification", ["*q_proj", "*v_proj"], ["q_proj", "v_proj"],
                         ["q_proj", "v_proj"]),
    "bert-classifier": ("bert-tiny", "sequence-classification", ["*attn.q_proj", "*attn.v_proj", "*ffn.up_proj"],
                        ["query", "value", "intermediate.dense"], ["intermediate.dense", "query", "value"]),
    "gpt2": ("gpt2-tiny", "causal-lm", ["*attn.o_proj", "*ffn.up_proj"], ["attn.c_proj", "c_fc"],
             ["attn.c_proj", "c_fc"]),
}
# Every method on LLaMA; the rest of the grid where it adds something (a head, BERT's names, Conv1D, DoRA there).
PAIRS = [("llama", "lora"), ("llama", "dora"), ("llama", "rslora"), ("llama-one-layer", "lora"),
         ("llama-classifier", "lora"), ("bert-classifier", "lora"), ("bert-classifier", "dora"), ("gpt2", "lora"),
         ("gpt2", "dora")]
HF_CLASSES = {"causal-lm": T.AutoModelForCausalLM, "sequence-classification": T.AutoModelForSequenceClassification}


def _base(case: str) -> nn.Module:
    preset, task = CASES[case][:2]
    torch.manual_seed(0)
    kwargs = {"num_labels": 3} if task == "sequence-classification" else {}
    overrides = {"d_ff": 384} if preset == "llama-tiny" else {}
    cfg = get_preset(preset, vocab_size=VOCAB, n_layers=2, init_std=0.08, pad_token_id=0, **overrides)
    return build_model(cfg, task=task, **kwargs).eval()


def _batch():
    ids = torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding, with the pad id (transformers' decoder classifiers pool the last non-pad id)
    ids[1, 7:] = 0
    return ids, mask


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |difference| over real positions (classifier logits have no position axis)."""
    diff = (ours - theirs).abs()
    return (diff[mask.bool()] if diff.dim() == 3 else diff).max().item()


def _train(model: nn.Module, task: str, steps: int = 2) -> None:
    """A few Adam steps so B (and DoRA's magnitude, a trained head) move away from their init."""
    ids, mask = _batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(ids, mask)
        if task == "causal-lm":
            loss = nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        else:
            loss = nn.functional.cross_entropy(out, torch.tensor([0, 2, 1]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _hf_base(case: str, base: nn.Module, tmp_path):
    save_pretrained(base, tmp_path / "hf")
    return HF_CLASSES[CASES[case][1]].from_pretrained(tmp_path / "hf").eval()


@pytest.mark.parametrize("case, method", PAIRS)
def test_lmforge_adapter_runs_under_peft(case, method, tmp_path):
    _, task, ours, _, written = CASES[case]
    base = _base(case)
    hf = _hf_base(case, base, tmp_path)
    model = copy.deepcopy(base)
    adapt(model, AdaptConfig(method="dora" if method == "dora" else "lora", r=4, alpha=8.0,
                             rslora=method == "rslora", target_modules=ours))
    _train(model, task)
    save_peft(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == written
    assert config["use_dora"] == (method == "dora") and config["use_rslora"] == (method == "rslora")
    assert config["modules_to_save"] == ({"bert-classifier": ["classifier"], "llama-classifier": ["score"]}
                                         .get(case))
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = _batch()
    with torch.no_grad():
        mine = model(ids, mask)
        theirs = _logits(peft_model(input_ids=ids, attention_mask=mask))
        untouched = base(ids, mask)
    assert _close(mine, untouched, mask) > 1e-3  # the adapter changed the model
    assert _close(mine, theirs, mask) <= TOL


@pytest.mark.parametrize("case, method", PAIRS)
def test_peft_adapter_loads_into_lmforge(case, method, tmp_path):
    _, task, _, theirs_targets, _ = CASES[case]
    base = _base(case)
    hf = _hf_base(case, base, tmp_path)
    task_type = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}[task]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=theirs_targets, task_type=task_type,
                             use_dora=method == "dora", use_rslora=method == "rslora", init_lora_weights=False)
    peft_model = peft.get_peft_model(hf, config).eval()
    with torch.no_grad():  # a trained-looking adapter: magnitudes and the saved head moved too
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    peft_model.save_pretrained(tmp_path / "adapter")
    model = load_peft(copy.deepcopy(base), tmp_path / "adapter")
    assert model.adaptation.method == ("dora" if method == "dora" else "lora")
    ids, mask = _batch()
    with torch.no_grad():
        theirs = _logits(peft_model(input_ids=ids, attention_mask=mask))
        mine = model(ids, mask)
        untouched = base(ids, mask)
    assert _close(theirs, untouched, mask) > 1e-3
    assert _close(mine, theirs, mask) <= TOL


def _peft_folder(tmp_path, targets=("q_proj", "v_proj")):
    """A PEFT LoRA folder for the llama case (random factors), and the lmforge base it belongs to."""
    base = _base("llama")
    hf = _hf_base("llama", base, tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    peft.get_peft_model(hf, config).save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_load_peft_with_targets_this_model_lacks(tmp_path):
    base, folder = _peft_folder(tmp_path)
    _edit_config(folder, target_modules=["q_proj", "query_key_value"])
    with pytest.raises(AdaptError, match="'query_key_value' name no Linear module"):
        load_peft(base, folder)


def test_load_peft_with_tensors_without_a_place(tmp_path):
    base, folder = _peft_folder(tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = torch.zeros(4, base.cfg.d_model)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(AdaptError, match="no place in this model for .*up_proj.lora_A"):
        load_peft(base, folder)


@pytest.mark.parametrize("changes, message", [
    ({"peft_type": "IA3"}, "only LORA"),
    ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
    ({"bias": "all"}, "bias='all'"),
    ({"r": 2}, r"tensor shapes do not fit this model \(r=2\)"),
])
def test_load_peft_refuses_what_it_cannot_carry(tmp_path, changes, message):
    base, folder = _peft_folder(tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(AdaptError, match=message):
        load_peft(base, folder)


def test_fused_gpt2_attention_is_refused(tmp_path):
    model = _base("gpt2")
    adapt(model, AdaptConfig(method="lora", r=2, target_modules=["*q_proj"]))
    with pytest.raises(AdaptError, match="c_attn"):
        save_peft(model, tmp_path / "adapter")
    base = _base("gpt2")
    hf = _hf_base("gpt2", base, tmp_path)
    peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(tmp_path / "theirs")
    with pytest.raises(AdaptError, match="fused projection"):
        load_peft(base, tmp_path / "theirs")


def test_save_peft_needs_a_lora_adapter(tmp_path):
    model = _base("llama")
    with pytest.raises(AdaptError, match="'none'"):
        save_peft(model, tmp_path / "adapter")
    adapt(model, AdaptConfig(method="pfeiffer", bottleneck=8))
    with pytest.raises(AdaptError, match="'pfeiffer'"):
        save_peft(model, tmp_path / "adapter")
