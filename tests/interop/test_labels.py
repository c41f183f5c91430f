"""Classifier heads: the config is the one source of truth for their label count, names and pooling."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from lmforge.interop import load_model, load_pretrained, save_model, save_pretrained
from lmforge.models import build_model, get_preset

TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, pad_token_id=0)
NAMES = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("preset, hf_class", [("bert-tiny", T.BertForSequenceClassification),
                                              ("llama-tiny", T.LlamaForSequenceClassification)])
def test_label_names_round_trip_through_hf_configs(tmp_path, preset, hf_class):
    model = build_model(get_preset(preset, **TINY, num_labels=3, labels=NAMES), task="sequence-classification")
    save_pretrained(model, tmp_path / "hf")
    theirs = hf_class.from_pretrained(tmp_path / "hf")
    assert theirs.config.id2label == dict(enumerate(NAMES)) and theirs.config.label2id == {"negative": 0,
                                                                                             "neutral": 1,
                                                                                             "positive": 2}
    theirs.config.id2label = {0: "bad", 1: "so-so", 2: "good"}
    theirs.config.label2id = {"bad": 0, "so-so": 1, "good": 2}
    theirs.save_pretrained(tmp_path / "renamed")
    again = load_pretrained(tmp_path / "renamed")
    assert again.cfg.num_labels == 3 and again.cfg.labels == ["bad", "so-so", "good"]
    assert again.head.proj.out_features == 3


def test_default_names_are_not_stored():
    cfg = get_preset("bert-tiny", **TINY, num_labels=4)
    from lmforge.interop.mapping import labels_of

    assert labels_of({"id2label": {str(i): f"LABEL_{i}" for i in range(4)}}) is None
    assert cfg.labels is None


def test_head_arguments_are_written_into_the_config_and_saved(tmp_path):
    model = build_model(get_preset("bert-tiny", **TINY), task="sequence-classification", num_labels=5,
                        pooling="mean")
    assert (model.cfg.num_labels, model.cfg.pooling) == (5, "mean")
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.pooling == "mean" and again.cfg.num_labels == 5
    ids, mask = torch.randint(1, 97, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask), again(ids, mask))


def test_inconsistent_label_fields_are_refused():
    from lmforge.models import ConfigError

    with pytest.raises(ConfigError, match="labels has 3 names but num_labels=2"):
        get_preset("bert-tiny", **TINY, labels=NAMES)
    with pytest.raises(ConfigError, match="pooling='max'"):
        get_preset("bert-tiny", **TINY, pooling="max")
