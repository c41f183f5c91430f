"""The BERT path end to end through the CLI: WordPiece -> data prepare -> pretrain mlm-nsp -> BertForPreTraining."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
import transformers as T

from lmforge.data import TokenDataset
from lmforge.interop import load_model
from lmforge.tokenizers import Tokenizer
from lmforge.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow
WORDS = "the cat sat on a mat while the dog ran far away and we went home early today".split()
MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}


def _cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True)
    assert out.returncode == 0, (args, out.stderr[-3000:])
    return out


def test_wordpiece_to_bert_for_pretraining(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) + "."
                                  for _ in range(300)), encoding="utf-8")
    tok_dir, data, run = tmp_path / "tokenizer", tmp_path / "data", tmp_path / "run"
    _cli("tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", "200", "--output", str(tok_dir))
    _cli("data", "prepare", str(corpus), "--tokenizer", str(tok_dir), "--output", str(data))
    tok = Tokenizer.from_pretrained(tok_dir)
    ds = TokenDataset(data, "train", tok)
    assert tok.eos_id is None and ds.eos_id == tok.sep_id  # BERT separates documents with [SEP]
    assert all(int(ds.document(i, with_eos=True)[-1]) == tok.sep_id for i in range(5))

    _cli("pretrain", "--data.path", str(data), "--data.tokenizer", str(tok_dir), "--objective", "mlm-nsp",
         "--model.preset", "bert-tiny", "--model.overrides", json.dumps(MODEL), "--out_dir", str(run),
         "--train.steps", "4", "--train.batch_size", "8", "--train.seq_len", "48", "--train.eval_every", "4",
         "--train.checkpoint_every", "4", "--train.progress", "false", "--train.precision", "fp32")

    hf_dir = run / "hf"
    hf = T.BertForPreTraining.from_pretrained(hf_dir).eval()
    hf_tok = T.AutoTokenizer.from_pretrained(hf_dir)
    assert len(hf_tok) == tok.vocab_size == hf.config.vocab_size  # a BERT tokenizer needs no reserved ids
    a, b = "the cat sat on a mat", "we went home early today"
    batch = hf_tok([a, b], [b, a], padding=True, return_tensors="pt")
    ids_a = tok.encode(a, add_special_tokens=False)
    ids_b = tok.encode(b, add_special_tokens=False)
    assert batch["input_ids"][0, : len(ids_a) + len(ids_b) + 3].tolist() == [
        tok.cls_id, *ids_a, tok.sep_id, *ids_b, tok.sep_id]  # the template mlm-nsp trained with
    ours = load_model(latest_checkpoint(run) / "model")
    with torch.no_grad():
        theirs = hf(**batch)
        mine = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (theirs.prediction_logits[real] - mine.logits[real]).abs().max() < 1e-4
    assert (theirs.seq_relationship_logits - mine.nsp_logits).abs().max() < 1e-4
