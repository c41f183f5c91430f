"""lmforge's own format: strict loading that names what does not fit, delta checkpoints on a checked base,
models built on the meta device; the HF writer refuses tensors it has no name for."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from lmforge.interop import CheckpointError, load_model, load_pretrained, save_model, save_pretrained
from lmforge.interop.native import load_any, weights_digest
from lmforge.models import ConfigError, build_model, get_preset

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


def _saved(tmp_path, preset="llama-tiny", **kw):
    torch.manual_seed(0)
    model = build_model(get_preset(preset, **TINY), **kw)
    save_model(model, tmp_path / "m")
    return model, tmp_path / "m"


def test_round_trip_is_exact_and_nothing_is_left_on_meta(tmp_path):
    model, folder = _saved(tmp_path)
    again = load_model(folder)
    assert all(not t.is_meta for t in list(again.parameters()) + list(again.buffers()))
    assert again.lm_head.proj.weight.shape == model.lm_head.proj.weight.shape
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), again(ids))


def test_a_tensor_without_a_place_in_the_model_is_named(tmp_path):
    _, folder = _saved(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["body.decoder.blocks.0.attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)  # what an adapter would add
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no place in a causal-lm model for .*q_proj\.lora_A\.weight"):
        load_model(folder)


def test_a_missing_tensor_is_named(tmp_path):
    _, folder = _saved(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["body.decoder.blocks.1.ffn.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing body\.decoder\.blocks\.1\.ffn\.down_proj\.weight"):
        load_model(folder)


def test_save_pretrained_refuses_a_tensor_it_has_no_name_for(tmp_path):
    model = build_model(get_preset("llama-tiny", **TINY))
    model.body.decoder.blocks[0].attn.q_proj.register_parameter("lora_A", torch.nn.Parameter(torch.zeros(4, 32)))
    with pytest.raises(ConfigError, match=r"no Hugging Face name for .*q_proj\.lora_A"):
        save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_trainable_only_checkpoint_reads_its_base_and_checks_it(tmp_path):
    torch.manual_seed(0)
    base = build_model(get_preset("bert-tiny", **TINY), task="sequence-classification")
    save_model(base, tmp_path / "base")
    tuned = load_model(tmp_path / "base")
    for name, p in tuned.named_parameters():
        p.requires_grad_(name.startswith("head."))  # everything frozen but the classifier
    with torch.no_grad():
        tuned.head.proj.weight.add_(1.0)  # the head "trained"
    digest = weights_digest(tmp_path / "base")
    save_model(tuned, tmp_path / "delta", trainable_only=True, base={"path": str(tmp_path / "base"), "sha256": digest})
    stored = load_file(tmp_path / "delta" / "model.safetensors")
    assert set(stored) == {"head.proj.weight", "head.proj.bias"}  # only what trains
    assert json.loads((tmp_path / "delta" / "lmforge.json").read_text())["base"]["sha256"] == digest
    again = load_model(tmp_path / "delta")
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids), tuned.eval()(ids))
    changed = load_file(tmp_path / "base" / "model.safetensors")
    changed["body.tokens.weight"] += 1
    save_file(changed, tmp_path / "base" / "model.safetensors")
    with pytest.raises(CheckpointError, match="its base .* changed since this checkpoint was written"):
        load_model(tmp_path / "delta")
    with pytest.raises(ConfigError, match="needs the base"):
        save_model(tuned, tmp_path / "nobase", trainable_only=True)


def test_load_any_refuses_another_task_of_an_lmforge_folder(tmp_path):
    _, folder = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="holds a causal-lm model, not a masked-lm one"):
        load_any(folder, task="masked-lm")


def test_hf_loading_initialises_only_the_missing_head_and_says_so(minilm_dir, caplog):
    """MiniLM ships a bare BertModel: as a masked LM its MLM head is new, its decoder tied to the embedding."""
    with caplog.at_level(logging.WARNING, logger="lmforge.interop.hf"):
        model = load_pretrained("all-minilm-l6-v2", task="masked-lm")
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "newly initialised" in message and "mlm_head.dense.weight" in message
    assert "tied to the token embedding: mlm_head.proj.weight" in message
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert model.mlm_head.proj.weight is model.body.tokens.weight
    assert 0.01 < float(model.mlm_head.dense.weight.detach().std()) < 0.03  # Normal(0, init_std 0.02), not empty memory
    assert float(model.mlm_head.proj.bias.detach().abs().max()) == 0.0
    reference = T.BertModel.from_pretrained(minilm_dir).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        assert (reference(ids).last_hidden_state - model.body.encode(ids)).abs().max() < 1e-5
