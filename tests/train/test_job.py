"""One job from any starting point: continued MLM pretraining of the packaged MiniLM encoder, checkpoints of
the trainable parameters only (with a checked base), and an ELECTRA run checkpoint loaded without the trainer."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from lmforge.data import TokenDataset
from lmforge.interop import CheckpointError, load_model
from lmforge.tokenizers import Tokenizer
from lmforge.train import DataSpec, ModelSpec, TrainConfig, run_pretraining, train
from lmforge.train.distributed import DistEnv
from lmforge.train.metrics import read_metrics
from lmforge.train.objective import get_objective
from lmforge.train.pretrain import start_model

pytestmark = pytest.mark.slow
TEXT = ("The quick brown fox jumps over the lazy dog. A man is eating food. The stock market fell sharply today. "
        "Rain is expected over the mountains by Thursday evening. She sold the old bicycle for twenty dollars.")


@pytest.fixture(scope="module")
def minilm_data(tmp_path_factory, minilm_dir):
    """Data prepared with MiniLM's own tokenizer (vocab.txt), as continued pretraining needs."""
    from lmforge.data.shards import prepare

    root = tmp_path_factory.mktemp("minilm-data")
    words = TEXT.split()
    docs = [" ".join(words[(i * 7) % len(words):] + words[:(i * 7) % len(words)]) for i in range(240)]
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    prepare([root / "corpus.txt"], minilm_dir, root / "data", progress=False, val_fraction=0.1)
    return root / "data", minilm_dir


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 8, "batch_size": 8, "seq_len": 48, "lr": 5e-4, "warmup_steps": 0,
                          "schedule": "constant", "eval_every": 1, "eval_batches": 2, "checkpoint_every": 4,
                          "log_every": 1, "progress": False, "precision": "fp32", "sample_prompts": [], **kw})


def test_continued_mlm_pretraining_of_minilm(minilm_data, tmp_path, caplog):
    data, tok = minilm_data
    with caplog.at_level(logging.WARNING, logger="lmforge.interop.hf"):
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec(checkpoint="all-minilm-l6-v2"), "mlm", _cfg(),
                        str(tmp_path / "run"))
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "newly initialised" in log and "mlm_head.dense.weight" in log  # MiniLM ships no MLM head ...
    assert "tied to the token embedding: mlm_head.proj.weight" in log  # ... its decoder is the embedding
    val = [r["val_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert val[-1] < val[0] - 1.0, val  # the new head learns quickly on top of the pretrained body
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    assert facts["base"]["path"].endswith("model") and facts["base"]["overrides"] == {"pooler": False}
    assert facts["model_config"]["pooler"] is False and facts["parameters"] == facts["trainable_parameters"]
    hf = T.BertForMaskedLM.from_pretrained(tmp_path / "run" / "hf").eval()
    ours = load_model(sorted((tmp_path / "run").glob("step-*"))[-1] / "model")
    batch = T.AutoTokenizer.from_pretrained(tmp_path / "run" / "hf")(["A man is eating [MASK]."], return_tensors="pt")
    with torch.no_grad():
        assert (hf(**batch).logits - ours(batch["input_ids"], batch["attention_mask"]).logits).abs().max() < 1e-4


def test_a_checkpoint_with_another_tokenizer_is_refused(tiny_data, tmp_path):
    from lmforge.models.config import ConfigError

    data, tok = tiny_data  # a BPE tokenizer of its own, not MiniLM's WordPiece
    with pytest.raises(ConfigError, match="token ids|not the tokenizer of model.checkpoint"):
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec(checkpoint="all-minilm-l6-v2"), "mlm", _cfg(),
                        str(tmp_path / "run"))


def _frozen_body_run(minilm_data, run_dir, steps: int, resume: bool = False):
    """MLM on MiniLM with the body frozen (only the new head trains), checkpoints of the trainable part only."""
    data, tok = minilm_data
    tokenizer = Tokenizer.from_pretrained(tok)
    train_data, val_data = TokenDataset(data, "train", tokenizer), TokenDataset(data, "val", tokenizer)
    binding = get_objective("mlm").bind(train_data, tokenizer)
    torch.manual_seed(0)
    model, base = start_model(ModelSpec(checkpoint="all-minilm-l6-v2"), binding, train_data, tokenizer)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("mlm_head.") and not model.is_tied(name))
    cfg = _cfg(steps=steps, checkpoint_every=2, checkpoint_trainable_only=True, eval_every=100)
    train(model, binding.objective, train_data, val_data, cfg, run_dir, DistEnv(), resume=resume, base=base)
    return base


def test_trainable_only_checkpoints_resume_exactly_on_their_base(minilm_data, tmp_path):
    base = _frozen_body_run(minilm_data, tmp_path / "whole", steps=4)
    stored = load_file(tmp_path / "whole" / "step-0000004" / "model" / "model.safetensors")
    assert set(stored) == {"mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.norm.weight",
                           "mlm_head.norm.bias", "mlm_head.proj.bias"}  # 0.3 M of MiniLM's 22.7 M parameters
    meta = json.loads((tmp_path / "whole" / "step-0000004" / "model" / "lmforge.json").read_text())
    assert meta["tensors"] == "trainable" and meta["base"] == base
    _frozen_body_run(minilm_data, tmp_path / "split", steps=2)
    _frozen_body_run(minilm_data, tmp_path / "split", steps=4, resume=True)

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}

    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    again = load_model(tmp_path / "whole" / "step-0000004" / "model")  # base + trainable part, as exported
    assert torch.equal(again.mlm_head.dense.weight, stored["mlm_head.dense.weight"])
    from lmforge.train.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="resume with the same model.checkpoint"):
        load_checkpoint(tmp_path / "whole" / "step-0000004", model=again, optimizer=None, scheduler=None,
                        base={"path": "elsewhere", "sha256": "0" * 64})


def test_an_electra_checkpoint_loads_without_the_trainer(tiny_data, tmp_path):
    data, tok = tiny_data
    model = {"n_layers": 1, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}
    run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("bert-tiny", model), "rtd",
                    _cfg(steps=1, seq_len=32, checkpoint_every=1), str(tmp_path / "run"), export=False)
    folder = tmp_path / "run" / "step-0000001" / "model"
    code = ("import sys; from lmforge.interop import load_model; m = load_model(sys.argv[1]); "
            "assert not [k for k in sys.modules if k.startswith('lmforge.train')], 'the trainer was imported'; "
            "print(type(m).__name__, m.generator.cfg.d_model)")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ElectraPretraining", "16"]
