"""The Hugging Face export carries the tokenizer the model trained with, adding the tokens the task added."""

from __future__ import annotations

import pytest
import transformers as T

from lmforge.data import TokenDataset
from lmforge.tokenizers import Tokenizer
from lmforge.train import DataSpec, ModelSpec, TrainConfig, run_pretraining
from lmforge.train.objective import get_objective

TEXTS = ["the cat sat on a mat", "我们 去 公园 散步", "dog ran far away and we went home"]
ENCODER = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 64}


def _export(tiny_data, tmp_path, objective: str, preset: str):
    data, tok = tiny_data
    cfg = TrainConfig(steps=1, batch_size=4, seq_len=32, progress=False, eval_every=1, checkpoint_every=1,
                      sample_prompts=[], precision="fp32")
    overrides = {**ENCODER, "dropout": 0.1 if objective == "contrastive" else 0.0}  # SimCSE's views need dropout
    run_pretraining(DataSpec(str(data), str(tok)), ModelSpec(preset, overrides), objective, cfg, str(tmp_path / "run"))
    # The special ids the run trained with, resolved again from the same files.
    binding = get_objective(objective).bind(TokenDataset(data, "train"), Tokenizer.from_pretrained(tok))
    return tmp_path / "run" / "hf", getattr(binding.objective, "ids", None), Tokenizer.from_pretrained(tok)


@pytest.mark.parametrize("objective", ["mlm", "mlm-nsp", "rtd", "contrastive"])
def test_encoder_exports_add_cls_and_sep_as_training_did(tiny_data, tmp_path, objective):
    folder, ids, original = _export(tiny_data, tmp_path, objective, "bert-tiny")
    hf_tok = T.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        body = original.encode(text, add_special_tokens=False)  # what `data prepare` stored
        assert hf_tok(text).input_ids == [ids.cls, *body, ids.sep]
    a, b = (original.encode(t, add_special_tokens=False) for t in TEXTS[:2])
    pair = hf_tok(TEXTS[0], TEXTS[1])
    assert pair.input_ids == [ids.cls, *a, ids.sep, *b, ids.sep]  # NSP's [CLS] A [SEP] B [SEP]
    assert pair.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert T.AutoConfig.from_pretrained(folder).vocab_size >= len(hf_tok)
    if objective != "contrastive":  # SimCSE reserves no [MASK]
        assert hf_tok.mask_token_id == ids.mask


def test_span_export_appends_eos_as_training_did(tiny_data, tmp_path):
    folder, ids, original = _export(tiny_data, tmp_path, "span", "bart-tiny")
    hf_tok = T.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert hf_tok(text).input_ids == [*original.encode(text, add_special_tokens=False), ids.eos]
    assert T.BartForConditionalGeneration.from_pretrained(folder).config.vocab_size >= len(hf_tok)


def test_clm_export_adds_nothing(tiny_data, tmp_path):
    folder, _, original = _export(tiny_data, tmp_path, "clm", "llama-tiny")
    hf_tok = T.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert hf_tok(text).input_ids == original.encode(text, add_special_tokens=False)
