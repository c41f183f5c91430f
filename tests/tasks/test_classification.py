"""Sequence classification and regression tasks against hand computations, sklearn, scipy and transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from tokenizers import Tokenizer as Backend
from tokenizers import models, normalizers, pre_tokenizers, processors
from torch.nn import functional as F

from lmforge.data.errors import DataError
from lmforge.models import build_model, get_preset
from lmforge.models.config import ConfigError
from lmforge.tasks import Example, TaskSpec, get_task
from lmforge.tasks.classification import ClassificationTask, RegressionTask, encode_text, pair_lengths
from lmforge.tokenizers import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["good", "the", "movie", "film", "was", "plot", "acting", "really", "very", "not", "quite", "and",
         "story", "music", "long", "short", "fine", "dull", "fun", "bad", "a", "b", "c", "d", "e", "f", "g"]
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, pad_token_id=0)


def wordpiece(bert_pairs: bool = True) -> Tokenizer:
    """A WordPiece tokenizer over WORDS; BERT's [CLS] a [SEP] b [SEP] template, or none at all."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    backend = Backend(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.add_special_tokens(SPECIALS)
    roles = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    if bert_pairs:
        backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                               pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                               special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    else:  # a decoder-style tokenizer: no template, eos only
        roles = {"pad": "[PAD]", "unk": "[UNK]", "eos": "[SEP]"}
    return Tokenizer(backend, roles)


def rows(values: list[dict], source: str = "train.jsonl") -> list[Example]:
    return [Example(v, source, i + 1) for i, v in enumerate(values)]


def model(preset: str, num_labels: int, seed: int = 0, init_std: float = 0.02):
    """A random tiny classifier in eval mode; a wide `init_std` makes its outputs vary from row to row (at
    0.02 a random BERT gives nearly the same [CLS] vector for every input)."""
    torch.manual_seed(seed)
    cfg = get_preset(preset, vocab_size=len(SPECIALS) + len(WORDS), **TINY, num_labels=num_labels,
                     init_std=init_std)
    return build_model(cfg, task="sequence-classification").eval()


def toy_rows(n: int, seed: int) -> list[dict]:
    """Label 1 when "good" occurs, else 0: trivially separable."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS[1:20]) for _ in range(rng.randint(3, 8))]
        label = rng.random() < 0.5
        if label:
            words.insert(rng.randrange(len(words) + 1), "good")
        out.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    return out


def test_get_task_builds_the_classification_tasks():
    assert isinstance(get_task(TaskSpec(name="classification")), ClassificationTask)
    assert isinstance(get_task(TaskSpec(name="regression")), RegressionTask)
    assert ClassificationTask.model_task == RegressionTask.model_task == "sequence-classification"


@pytest.mark.parametrize("preset", ["bert-tiny", "llama-tiny"])
def test_loss_equals_cross_entropy_of_the_model_on_a_hand_padded_batch(preset):
    tok = wordpiece()
    task = ClassificationTask(TaskSpec())
    train = rows([{"text": "the movie was good", "label": "pos"}, {"text": "dull", "label": "neg"},
                  {"text": "a b c d e f g the plot", "label": "meh"}])
    task.fit(train)
    net = model(preset, 3)
    batch = task.collate(task.features(train, tok, "train"), pad_id=0)
    loss, count = task.loss(net, batch)

    ids = [tok.encode(e.fields["text"]) for e in train]  # [CLS] ... [SEP], padded by hand with 0
    width = max(map(len, ids))
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    gold = torch.tensor([task.labels.names.index(e.fields["label"]) for e in train])
    expected = F.cross_entropy(net(input_ids, mask), gold)
    assert count == 3 and torch.allclose(loss, expected, atol=1e-6)
    assert torch.equal(batch["input_ids"], input_ids) and torch.equal(batch["attention_mask"], mask)
    # padding changes nothing: the batch loss is the mean of each row's loss alone, unpadded
    alone = torch.stack([F.cross_entropy(net(torch.tensor([r])), gold[i:i + 1]) for i, r in enumerate(ids)])
    assert torch.allclose(loss, alone.mean(), atol=1e-5)


def test_label_map_is_sorted_stable_and_saved_with_the_model(tmp_path):
    task = ClassificationTask(TaskSpec())
    task.fit(rows([{"text": "a", "label": v} for v in ["positive", "negative", "neutral", "negative"]]))
    again = ClassificationTask(TaskSpec())
    again.fit(rows([{"text": "a", "label": v} for v in ["neutral", "positive", "negative"]]))
    assert task.labels.names == again.labels.names == ["negative", "neutral", "positive"]
    overrides = task.model_overrides()
    assert overrides == {"num_labels": 3, "labels": ["negative", "neutral", "positive"]}

    from lmforge.interop import save_pretrained

    cfg = get_preset("bert-tiny", vocab_size=40, **TINY, num_labels=2).replace(**overrides)
    net = build_model(cfg, task="sequence-classification")
    save_pretrained(net, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert net.head.proj.out_features == 3


def test_integer_labels_sort_numerically_and_csv_strings_match_json_ints():
    task = ClassificationTask(TaskSpec())
    task.fit(rows([{"text": "a", "label": v} for v in [10, 2, 1, 2]]))
    assert task.labels.names == [1, 2, 10] and task.model_overrides()["labels"] == ["1", "2", "10"]
    from_csv = ClassificationTask(TaskSpec())
    from_csv.fit(rows([{"text": "a", "label": v} for v in ["10", "2", "1"]], "train.csv"))
    assert from_csv.labels.names == [1, 2, 10]
    val = rows([{"text": "a", "label": "10"}, {"text": "a", "label": 1.0}])
    feats = task.features(val, wordpiece(), "val")
    assert [f["label"] for f in feats] == [2, 0]


def test_unseen_label_and_bad_rows_are_data_errors_naming_the_row():
    task = ClassificationTask(TaskSpec())
    task.fit(rows([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]))
    val = rows([{"text": "a", "label": "pos"}, {"text": "b", "label": "maybe"}], "val.jsonl")
    with pytest.raises(DataError, match=r"val\.jsonl:2, column 'label': label 'maybe' was not seen.*neg, po"):
        task.features(val, wordpiece(), "validation")
    with pytest.raises(DataError, match=r"train\.jsonl:2, column 'text': missing"):
        task.fit(rows([{"text": "a", "label": "x"}, {"label": "y"}]))
    with pytest.raises(DataError, match=r"train\.jsonl:1, column 'label': a class label must be a name"):
        task.fit(rows([{"text": "a", "label": 0.5}, {"text": "a", "label": 1}]))
    with pytest.raises(DataError, match="1 distinct label"):
        task.fit(rows([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]))
    with pytest.raises(RuntimeError, match="fit"):
        ClassificationTask(TaskSpec()).features(val, wordpiece(), "validation")


def test_truncation_keeps_the_special_tokens():
    tok = wordpiece()
    task = ClassificationTask(TaskSpec(max_length=5))
    train = rows([{"text": "the movie was really very good", "label": 1}, {"text": "bad", "label": 0}])
    task.fit(train)
    first, second = task.features(train, tok, "train")
    assert first["input_ids"] == tok.encode("the movie was")  # [CLS] the movie was [SEP]
    assert second["input_ids"] == tok.encode("bad")
    with pytest.raises(ConfigError, match="max_length=2 leaves no room"):
        encode_text(tok, "a", None, 2)


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 6, 9])
def test_pair_truncation_agrees_with_the_tokenizers_library(budget):
    tok = wordpiece()
    reference = Backend.from_str(tok.to_json())  # a copy: truncation is stateful
    reference.enable_truncation(budget + 3, strategy="longest_first")
    for len_a in range(0, 8):
        for len_b in range(0, 8):
            a, b = " ".join(WORDS[5:5 + len_a]), " ".join(WORDS[12:12 + len_b])
            ids, types = encode_text(tok, a, b, budget + 3)
            theirs = reference.encode(a, b)
            assert (ids, types) == (theirs.ids, theirs.type_ids), (len_a, len_b, budget)
            assert sum(pair_lengths(len_a, len_b, budget)) == min(len_a + len_b, budget)


def test_decoder_style_pairs_are_joined_by_the_eos_token():
    tok = wordpiece(bert_pairs=False)
    ids, types = encode_text(tok, "the movie", "was fun", 16)
    word = {w: i + len(SPECIALS) for i, w in enumerate(WORDS)}
    assert ids == [word["the"], word["movie"], tok.eos_id, word["was"], word["fun"]]
    assert types == [0, 0, 0, 1, 1]
    ids, _ = encode_text(tok, "a b c d e", "f g", 5)  # longest first: a b | f g
    assert ids == [word["a"], word["b"], tok.eos_id, word["f"], word["g"]]


@pytest.mark.assets
def test_pair_encoding_matches_transformers_bert_tokenizers(minilm_dir):
    from transformers import BertTokenizer, BertTokenizerFast

    tok = Tokenizer.from_pretrained(minilm_dir)
    slow = BertTokenizer(str(minilm_dir / "vocab.txt"))
    fast = BertTokenizerFast.from_pretrained(minilm_dir)
    pairs = [("A man is eating food.", "A man is eating a piece of bread."),
             ("Is this the way to Berlin?", "Unbelievably, the floccinaucinihilipilification tokenizes."),
             ("short", "a much longer second sentence that will have to give up most of its tokens")]
    for a, b in pairs:
        ids, types = encode_text(tok, a, b, 512)
        theirs = slow(a, b)
        assert ids == theirs["input_ids"] and types == theirs["token_type_ids"]
        for max_length in (8, 11, 16):
            ids, types = encode_text(tok, a, b, max_length)
            theirs = fast(a, b, truncation=True, max_length=max_length, padding=False)
            assert ids == theirs["input_ids"] and types == theirs["token_type_ids"], (a, b, max_length)


def test_evaluate_equals_sklearn_on_the_models_own_predictions():
    tok = wordpiece()
    task = ClassificationTask(TaskSpec())
    data = [{"text": r["text"], "label": i % 3} for i, r in enumerate(toy_rows(40, seed=1))]
    examples = rows(data)
    task.fit(examples)
    net = model("bert-tiny", 3, seed=3, init_std=0.5)
    feats = task.features(examples, tok, "validation")
    result = task.evaluate(net, examples, feats, tok, batch_size=7)

    with torch.no_grad():
        logits = torch.cat([net(torch.tensor([tok.encode(d["text"])])) for d in data])
    pred, gold = logits.argmax(-1).tolist(), [d["label"] for d in data]
    assert len(set(pred)) > 1  # a check with teeth: not one class everywhere
    assert result["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert result["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(gold))), rel=1e-5)
    assert "f1" not in result and not net.training


def test_a_tiny_encoder_learns_a_separable_toy_set():
    tok = wordpiece()
    task = ClassificationTask(TaskSpec())
    train, val = rows(toy_rows(256, seed=0)), rows(toy_rows(64, seed=1), "val.jsonl")
    task.fit(train)
    net = model("bert-tiny", 2).train()
    feats = task.features(train, tok, "train")
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(40):
        loss, _ = task.loss(net, task.collate(rng.sample(feats, 32), tok.pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = task.evaluate(net, val, task.features(val, tok, "validation"), tok, batch_size=32)
    assert result["accuracy"] > 0.9 and result["f1"] > 0.9 and net.training


def test_regression_loss_and_metrics_against_torch_and_scipy():
    from scipy.stats import pearsonr, spearmanr

    tok = wordpiece()
    task = RegressionTask(TaskSpec())
    data = [{"text": r["text"], "label": str(0.25 * i - 2)} for i, r in enumerate(toy_rows(24, seed=2))]
    examples = rows(data, "train.csv")
    task.fit(examples)
    assert task.model_overrides() == {"num_labels": 1, "labels": None}
    net = model("bert-tiny", 1, seed=5, init_std=0.5)
    feats = task.features(examples, tok, "train")
    loss, count = task.loss(net, task.collate(feats[:5], tok.pad_id))
    with torch.no_grad():
        outputs = torch.cat([net(torch.tensor([tok.encode(d["text"])]))[:, 0] for d in data])
    gold = torch.tensor([float(d["label"]) for d in data])
    assert count == 5 and loss.item() == pytest.approx(F.mse_loss(outputs[:5], gold[:5]).item(), rel=1e-5)
    result = task.evaluate(net, examples, feats, tok, batch_size=4)
    assert result["pearson"] == pytest.approx(pearsonr(gold, outputs)[0], abs=1e-4)
    assert result["spearman"] == pytest.approx(spearmanr(gold, outputs)[0], abs=1e-4)
    assert result["mse"] == pytest.approx(F.mse_loss(outputs, gold).item(), rel=1e-5)
    with pytest.raises(DataError, match=r"train\.jsonl:2, column 'label': expected a finite number, got 'hi"):
        task.fit(rows([{"text": "a", "label": 1}, {"text": "b", "label": "high"}]))
