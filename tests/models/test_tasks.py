"""Model tasks in one table, and the seams the trainer uses: `Model.blocks()`, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from lmforge.models import TASKS, ConfigError, build_model, get_preset, task_of

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
FAMILY_PRESET = {"encoder": "bert-tiny", "decoder": "llama-tiny", "encoder-decoder": "bart-tiny"}
TASK_FAMILY = {"encoder": "encoder", "causal-lm": "decoder", "seq2seq-lm": "encoder-decoder", "masked-lm": "encoder",
               "sequence-classification": "encoder", "token-classification": "decoder",
               "question-answering": "encoder", "electra-pretraining": "encoder", "multi-task": "encoder",
               "distillation": "decoder"}
TASK_FIELDS = {"multi-task": {"task_heads": {"a": {"kind": "sequence-classification", "num_labels": 3},
                                             "b": {"kind": "token-classification", "num_labels": 5}}},
               "distillation": {"extra": {"distillation": {"student_task": "causal-lm"}}}}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_builds_and_is_recognised(task):
    model = build_model(get_preset(FAMILY_PRESET[TASK_FAMILY[task]], **TINY, **TASK_FIELDS.get(task, {})), task=task)
    assert task_of(model) == task  # the most specific class, e.g. not "token-classification" for ELECTRA


def test_unknown_task_is_named():
    with pytest.raises(ConfigError, match="unknown task 'poetry'"):
        build_model("bert-tiny", task="poetry")


@pytest.mark.parametrize("family, n_blocks", [("encoder", 2), ("decoder", 2), ("encoder-decoder", 4)])
def test_blocks_lists_encoder_then_decoder(family, n_blocks):
    model = build_model(get_preset(FAMILY_PRESET[family], **TINY))
    blocks = model.blocks()
    assert len(blocks) == n_blocks
    expected = [b for stack in (model.body.encoder, model.body.decoder) if stack is not None for b in stack.blocks]
    assert all(a is b for a, b in zip(blocks, expected))
    if family == "encoder-decoder":
        assert blocks[0].cross_attn is None and blocks[-1].cross_attn is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(get_preset("bart-tiny", **TINY))
    src, tgt = torch.randint(0, 97, (2, 7)), torch.randint(0, 97, (2, 5))
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        assert all(s.gradient_checkpointing is enabled for s in (model.body.encoder, model.body.decoder))
        model(src, decoder_input_ids=tgt).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
