"""YAML configs with command-line overrides, the resolved config saved, and clear config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny import TINY_MODEL

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, tiny_data, **train) -> Path:
    data, tok = tiny_data
    cfg = {"data": {"path": str(data), "tokenizer": str(tok)},
           "model": {"preset": "llama-tiny", "overrides": TINY_MODEL}, "objective": "clm",
           "train": {"steps": 2, "batch_size": 4, "seq_len": 16, "progress": False, "eval_every": 2,
                     "checkpoint_every": 2, "sample_prompts": [], **train},
           "out_dir": str(tmp_path / "run")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_overrides_win_and_resolved_config_is_saved(tmp_path, tiny_data):
    main(["pretrain", "--config", str(_write(tmp_path, tiny_data)), "--train.steps", "3", "--train.lr", "0.002",
          "--model.overrides", "{n_layers: 1, d_model: 32, n_heads: 2, n_kv_heads: 1, d_ff: 64}"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3 and saved["train"]["lr"] == 0.002
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    assert facts["model_config"]["n_layers"] == 1 and facts["model_config"]["d_model"] == 32
    assert saved["train"]["batch_size"] == 4  # from the file


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True)


def test_unknown_key_in_yaml(tmp_path, tiny_data):
    path = _write(tmp_path, tiny_data)
    path.write_text(path.read_text().replace("seq_len:", "seq_lenn:"))
    out = _run_cli("pretrain", "--config", str(path))
    assert out.returncode != 0 and "seq_lenn" in out.stderr


def test_wrong_type_on_command_line(tmp_path, tiny_data):
    out = _run_cli("pretrain", "--config", str(_write(tmp_path, tiny_data)), "--train.steps", "many")
    assert out.returncode != 0 and "train.steps" in out.stderr and "many" in out.stderr


def test_unknown_model_field_is_named(tmp_path, tiny_data):
    out = _run_cli("pretrain", "--config", str(_write(tmp_path, tiny_data)), "--model.overrides", "{n_layer: 2}")
    assert out.returncode == 2
    assert "n_layer" in out.stderr and "Traceback" not in out.stderr


def test_tokenizer_that_does_not_match_the_shards(tmp_path, tiny_data):
    from lmforge.tokenizers import train_tokenizer

    other = tmp_path / "other.txt"
    other.write_text("completely different text for another tokenizer " * 200)
    train_tokenizer([other], vocab_size=280, show_progress=False).save(tmp_path / "tok2")
    out = _run_cli("pretrain", "--config", str(_write(tmp_path, tiny_data)), "--data.tokenizer", str(tmp_path / "tok2"))
    assert out.returncode == 2 and "manifest" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "pretrain").glob("*.yaml")))
def test_shipped_configs_parse(name):
    from jsonargparse import ArgumentParser

    from lmforge.cli.pretrain import pretrain

    parser = ArgumentParser()
    parser.add_function_arguments(pretrain)
    parser.add_argument("--config", action="config")
    cfg = parser.parse_args(["--config", str(ROOT / "configs" / "pretrain" / name)])
    assert cfg.data.path and cfg.objective


def test_a_mapping_for_a_dict_option_merges_with_the_yaml(tmp_path, capsys):
    """`--model.overrides '{...}'` changes the keys it names and keeps the YAML's others, with their types."""
    cfg = yaml.safe_load((ROOT / "configs" / "pretrain" / "llama-tiny.yaml").read_text())
    cfg["model"]["overrides"]["rope_scaling"] = {"type": "linear", "factor": 2.0}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--config", str(path), "--model.overrides",
              "{n_layers: 2, rope_scaling: {type: dynamic, factor: 4.0}, norm_eps: 1e-5}", "--print_config"])
    overrides = yaml.safe_load(capsys.readouterr().out)["model"]["overrides"]
    assert exit_.value.code == 0
    assert overrides == {**cfg["model"]["overrides"], "n_layers": 2, "norm_eps": 1e-5,
                         "rope_scaling": {"type": "dynamic", "factor": 4.0}}
    assert type(overrides["n_layers"]) is int and type(overrides["norm_eps"]) is float
    assert overrides["tie_embeddings"] is True
