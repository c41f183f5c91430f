"""Bad checkpoints give one clear error naming the file and the problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import transformers as T

from lmforge.interop import CheckpointError, load_pretrained


@pytest.fixture
def llama_folder(tmp_path):
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=48))
    hf.save_pretrained(tmp_path)
    return tmp_path


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_pretrained(tmp_path)


def test_malformed_config_names_line(llama_folder):
    (llama_folder / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 32,,\n}')
    with pytest.raises(CheckpointError, match=r"config\.json: malformed JSON at line 3"):
        load_pretrained(llama_folder)


def test_config_missing_field(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    del cfg["hidden_size"]
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: missing field 'hidden_size'"):
        load_pretrained(llama_folder)


def test_unknown_architecture(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown architecture model_type='mamba'"):
        load_pretrained(llama_folder)


def test_shapes_that_do_not_match_config(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight: shape \(48, 32\) does not "
                                              r"match the config's \(64, 32\)"):
        load_pretrained(llama_folder)


def test_corrupt_safetensors(llama_folder):
    (llama_folder / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_pretrained(llama_folder)


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_untrusted_pickle_is_refused(llama_folder, capsys):
    (llama_folder / "model.safetensors").unlink()
    with open(llama_folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Exploit()}, f)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refusing to unpickle"):
        load_pretrained(llama_folder)
    assert "pwned" not in capsys.readouterr().out


def test_plain_tensor_pickle_loads(llama_folder):
    """A `pytorch_model.bin` of plain tensors is fine: weights_only=True reads it."""
    from safetensors.torch import load_file

    tensors = load_file(llama_folder / "model.safetensors")
    (llama_folder / "model.safetensors").unlink()
    torch.save(tensors, llama_folder / "pytorch_model.bin")
    model = load_pretrained(llama_folder)
    assert torch.equal(model.body.tokens.weight, tensors["model.embed_tokens.weight"])


def test_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=48))
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_pretrained(tmp_path)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_pretrained(tmp_path / "nope")
