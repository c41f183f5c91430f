"""Task heads against transformers, both ways: sequence classification, token classification, extractive QA.

Each head sits on a BERT, a LLaMA and a GPT-2 body. lmforge -> HF: every weight of an lmforge model is
perturbed (so biases and norms are not their zero/one initial values), saved with `save_pretrained`
and loaded into the matching transformers class, which must find every tensor it expects and give
the same logits. HF -> lmforge: a random transformers model (init std 0.2, biases randomised too) is
saved and read back by `load_pretrained`, which picks the task from `architectures`.

The batch is right-padded with the pad id (0) exactly where `attention_mask` is 0, and no real token
is 0. That is where the two ways of finding a decoder's pooled token agree: lmforge takes the last
position the mask marks real, transformers the last id that is not `pad_token_id`. Token-level outputs
are compared at real positions only; what a model puts at padded positions is meaningless.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from lmforge.interop import load_pretrained, save_pretrained
from lmforge.models import (
    ConfigError,
    QuestionAnswering,
    SequenceClassifier,
    TokenClassifier,
    build_model,
    get_preset,
)

TOL = 1e-5
VOCAB, PAD, LABELS = 128, 0, 3
TINY = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64, pad_token_id=PAD,
            init_std=0.2)
PRESETS = {"bert": "bert-tiny", "llama": "llama-tiny", "gpt2": "gpt2-tiny"}
# transformers' sequence classifiers on decoders (`score`) have no bias; BERT's `classifier` has one.
SEQUENCE_BIAS = {"bert": True, "llama": False, "gpt2": False}
TASK_CLASSES = {"sequence-classification": SequenceClassifier, "token-classification": TokenClassifier,
                "question-answering": QuestionAnswering}
HF_CLASSES = {
    ("bert", "sequence-classification"): T.BertForSequenceClassification,
    ("bert", "token-classification"): T.BertForTokenClassification,
    ("bert", "question-answering"): T.BertForQuestionAnswering,
    ("llama", "sequence-classification"): T.LlamaForSequenceClassification,
    ("llama", "token-classification"): T.LlamaForTokenClassification,
    ("llama", "question-answering"): T.LlamaForQuestionAnswering,
    ("gpt2", "sequence-classification"): T.GPT2ForSequenceClassification,
    ("gpt2", "token-classification"): T.GPT2ForTokenClassification,
    ("gpt2", "question-answering"): T.GPT2ForQuestionAnswering,
}
CASES = sorted(HF_CLASSES)


def _hf_config(family: str, task: str):
    # BertForQuestionAnswering sizes qa_outputs by num_labels, which must stay 2 (start, end) there.
    common = dict(num_labels=2 if task == "question-answering" else LABELS, pad_token_id=PAD, initializer_range=0.2)
    if family == "bert":
        return T.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    if family == "llama":
        return T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=96, **common)
    return T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)


def _batch():
    """Three rows of 12, 8 and 5 real tokens (ids >= 3), right-padded with PAD; BERT segments 0 then 1."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def _outputs(model, family: str, task: str, hf: bool) -> list[torch.Tensor]:
    """The model's outputs on the batch, each as (B, ...) with padded positions dropped where per token."""
    ids, mask, types = _batch()
    kwargs = {"token_type_ids": types} if family == "bert" else {}
    with torch.no_grad():
        if hf:
            out = model(input_ids=ids, attention_mask=mask, **kwargs)
            out = [out.start_logits, out.end_logits] if task == "question-answering" else [out.logits]
        else:
            out = model(ids, mask, types) if family == "bert" else model(ids, mask)
            out = list(out) if task == "question-answering" else [out]
    return [o if task == "sequence-classification" else o[mask.bool()] for o in out]


def _assert_same(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert b.abs().max() > 1.0  # a real signal, not logits near zero
        assert (a - b).abs().max() <= TOL


@pytest.mark.parametrize("family, task", CASES)
def test_lmforge_head_is_read_by_transformers(family, task, tmp_path):
    torch.manual_seed(0)
    cfg = get_preset(PRESETS[family], **TINY, sequence_classifier_bias=SEQUENCE_BIAS[family])
    kwargs = {} if task == "question-answering" else {"num_labels": LABELS}
    model = build_model(cfg, task=task, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    save_pretrained(model, tmp_path)
    hf_cls = HF_CLASSES[family, task]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [hf_cls.__name__]
    hf, info = hf_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    if task != "question-answering":
        assert hf.config.num_labels == LABELS
    _assert_same(_outputs(model, family, task, hf=False), _outputs(hf.eval(), family, task, hf=True))
    again = load_pretrained(tmp_path)  # and back: the same tensors exactly
    assert type(again) is type(model)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family, task", CASES)
def test_transformers_head_is_read_by_lmforge(family, task, tmp_path):
    torch.manual_seed(0)
    hf = HF_CLASSES[family, task](_hf_config(family, task))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):  # transformers starts biases at zero; make a lost bias show
                p.normal_(std=0.2)
    hf.eval().save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)  # the task comes from config.json's architectures
    assert type(model) is TASK_CLASSES[task]
    if task != "question-answering":
        assert model.cfg.num_labels == LABELS
        assert model.head.proj.out_features == LABELS
    _assert_same(_outputs(model, family, task, hf=False), _outputs(hf, family, task, hf=True))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_classifier_with_a_bias_is_not_saved_without_it(family, tmp_path):
    """transformers' `score` has no bias: saving one would drop it silently, so it is an error."""
    model = build_model(get_preset(PRESETS[family], **TINY, sequence_classifier_bias=True),
                        task="sequence-classification")
    with pytest.raises(ConfigError, match=r"has no place for .*head\.proj\.bias"):
        save_pretrained(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
