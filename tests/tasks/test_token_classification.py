"""Token classification: sub-token alignment by hand, loss against torch, evaluation against seqeval."""

from __future__ import annotations

import random

import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score
from tokenizers import Tokenizer as Backend
from tokenizers import models, normalizers, pre_tokenizers, processors
from torch import nn
from torch.nn import functional as F

from lmforge.data.errors import DataError
from lmforge.models import build_model, get_preset
from lmforge.tasks import Example, TaskSpec, get_task
from lmforge.tasks.token_classification import IGNORE, TokenClassificationTask, align_labels
from lmforge.tokenizers import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = ["john", "lives", "in", "new", "york", "wash", "##ing", "##ton", ".", "works", "at", "acme", "u",
          "s", "北", "京", "是", "首", "都"]
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, pad_token_id=0)
SENTENCE = {"tokens": ["John", "lives", "in", "Washington", "."], "tags": ["B-PER", "O", "O", "B-LOC", "O"]}


def wordpiece(pieces=PIECES, lowercase: bool = True) -> Tokenizer:
    """A BERT-style WordPiece tokenizer ([CLS] a [SEP]) over a hand-written vocabulary."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list(pieces))}
    backend = Backend(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.add_special_tokens(SPECIALS)
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    roles = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    return Tokenizer(backend, roles)


def rows(values, source: str = "train.jsonl") -> list[Example]:
    return [Example(v, source, i + 1) for i, v in enumerate(values)]


def fitted(spec: TaskSpec | None = None, train=None) -> TokenClassificationTask:
    task = TokenClassificationTask(spec or TaskSpec(name="token-classification"))
    task.fit(rows(train or [SENTENCE, {"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}]))
    return task


def test_label_set_keeps_o_first_and_both_prefixes_of_every_type():
    task = fitted()
    assert isinstance(get_task(TaskSpec(name="token-classification")), TokenClassificationTask)
    assert task.labels.names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # I-PER never occurs, but exists
    assert task.model_overrides() == {"num_labels": 5, "labels": ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]}


def test_a_word_of_three_pieces_under_both_policies():
    tok = wordpiece()
    assert tok.tokenize("Washington") == ["wash", "##ing", "##ton"]
    # [CLS] john lives in wash ##ing ##ton . [SEP];  O=0 B-LOC=1 I-LOC=2 B-PER=3 I-PER=4
    first = fitted().features(rows([SENTENCE]), tok, "train")[0]
    assert first["labels"] == [IGNORE, 3, 0, 0, 1, IGNORE, IGNORE, 0, IGNORE]
    assert first["word_ids"] == [-1, 0, 1, 2, 3, 3, 3, 4, -1]
    assert first["input_ids"] == tok.encode("John lives in Washington .")
    every = fitted(TaskSpec(name="token-classification", label_all_subtokens=True))
    labels = every.features(rows([SENTENCE]), tok, "train")[0]["labels"]
    assert labels == [IGNORE, 3, 0, 0, 1, 2, 2, 0, IGNORE]


def test_align_labels_by_hand():
    word_ids = [None, 0, 0, 1, None]
    assert align_labels(word_ids, [5, 7], [6, 7], all_subtokens=False) == [IGNORE, 5, IGNORE, 7, IGNORE]
    assert align_labels(word_ids, [5, 7], [6, 7], all_subtokens=True) == [IGNORE, 5, 6, 7, IGNORE]


def test_words_split_by_the_pre_tokenizer_stay_one_word_and_specials_are_ignored():
    tok = wordpiece()
    row = {"tokens": ["John", "works", "at", "U.S."], "tags": ["B-PER", "O", "O", "B-LOC"]}
    feature = fitted().features(rows([row]), tok, "train")[0]
    assert tok.backend.id_to_token(feature["input_ids"][0]) == "[CLS]" and feature["labels"][0] == IGNORE
    assert tok.backend.id_to_token(feature["input_ids"][-1]) == "[SEP]" and feature["labels"][-1] == IGNORE
    assert feature["word_ids"] == [-1, 0, 1, 2, 3, 3, 3, 3, -1]  # u . s .
    assert feature["labels"] == [IGNORE, 3, 0, 0, 1, IGNORE, IGNORE, IGNORE, IGNORE]
    batch = fitted().collate(fitted().features(rows([row, SENTENCE]), tok, "train"), pad_id=0)
    assert batch["labels"].shape == batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


def test_truncation_drops_words_beyond_max_length():
    tok = wordpiece()
    task = fitted(TaskSpec(name="token-classification", max_length=6))
    feature = task.features(rows([SENTENCE]), tok, "train")[0]
    assert len(feature["input_ids"]) == 6  # [CLS] john lives in wash [SEP]
    assert feature["labels"] == [IGNORE, 3, 0, 0, 1, IGNORE] and feature["num_words"] == 5


def test_loss_equals_cross_entropy_over_the_labelled_pieces():
    tok = wordpiece()
    task = fitted(TaskSpec(name="token-classification", label_all_subtokens=True))
    examples = rows([SENTENCE, {"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}])
    torch.manual_seed(0)
    net = build_model(get_preset("bert-tiny", vocab_size=len(SPECIALS) + len(PIECES), **TINY, num_labels=5),
                      task="token-classification").eval()
    loss, count = task.loss(net, task.collate(task.features(examples, tok, "train"), pad_id=0))
    terms = []
    for text, labels in (("John lives in Washington .", [3, 0, 0, 1, 2, 2, 0]), ("New York", [1, 2])):
        logits = net(torch.tensor([tok.encode(text)]))[0, 1:-1]  # without [CLS] and [SEP]
        terms.append(F.cross_entropy(logits, torch.tensor(labels), reduction="none"))
    assert count == 9 and torch.allclose(loss, torch.cat(terms).mean(), atol=1e-6)


class LookupModel(nn.Module):
    """Predicts a fixed label for each token id: logits one-hot of `table[id]`."""

    def __init__(self, table: dict[int, int], num_labels: int) -> None:
        super().__init__()
        self.table, self.num_labels = table, num_labels

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        labels = torch.tensor([[self.table.get(i, 0) for i in row] for row in input_ids.tolist()])
        return F.one_hot(labels, self.num_labels).float() * 5.0  # (B, T, labels)


def test_evaluate_equals_seqeval_on_a_hand_made_prediction():
    tok = wordpiece()
    task = fitted(TaskSpec(name="token-classification", max_length=8))
    names = task.labels.names
    token = {t: i for i, t in enumerate(SPECIALS + PIECES)}
    # john -> B-PER (right); wash -> B-LOC, ##ing -> I-PER (ignored: not a first piece); new -> B-LOC,
    # york -> B-LOC (wrong: splits "New York" in two); acme -> B-ORG is unknown, so acme -> B-PER (wrong)
    table = {token["john"]: names.index("B-PER"), token["wash"]: names.index("B-LOC"),
             token["##ing"]: names.index("I-PER"), token["new"]: names.index("B-LOC"),
             token["york"]: names.index("B-LOC"), token["acme"]: names.index("B-PER")}
    validation = [SENTENCE,
                  {"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]},
                  {"tokens": ["Acme", "works", "in", "New", "York", "."], "tags": ["O", "O", "O", "B-LOC",
                                                                                  "I-LOC", "O"]},
                  # 8 pieces + 2 specials > 8: "New" and "York" are cut, so predicted O (so is SENTENCE's ".")
                  {"tokens": ["John", "lives", "in", "Washington", "New", "York"],
                   "tags": ["B-PER", "O", "O", "B-LOC", "B-LOC", "I-LOC"]}]
    examples = rows(validation, "val.jsonl")
    result = task.evaluate(LookupModel(table, len(names)), examples, task.features(examples, tok, "val"), tok,
                           batch_size=3)
    gold = [r["tags"] for r in validation]
    pred = [["B-PER", "O", "O", "B-LOC", "O"],
            ["B-LOC", "B-LOC"],
            ["B-PER", "O", "O", "B-LOC", "B-LOC", "O"],
            ["B-PER", "O", "O", "B-LOC", "O", "O"]]
    assert result["entity_f1"] == pytest.approx(f1_score(gold, pred))
    assert result["entity_precision"] == pytest.approx(precision_score(gold, pred))
    assert result["entity_recall"] == pytest.approx(recall_score(gold, pred))
    words = sum(map(len, gold))
    assert result["token_accuracy"] == pytest.approx(sum(a == b for g, p in zip(gold, pred)
                                                         for a, b in zip(g, p)) / words)
    assert 0 < result["entity_f1"] < 1


def test_bad_rows_are_data_errors_naming_the_row():
    task = fitted()
    tok = wordpiece()
    with pytest.raises(DataError, match=r"train\.jsonl:1, column 'tags': 2 tags for 3 words"):
        TokenClassificationTask(TaskSpec()).fit(rows([{"tokens": ["a", "b", "c"], "tags": ["O", "B-X"]}]))
    with pytest.raises(DataError, match=r"train\.jsonl:1, column 'tags': tag 2 is 'PER', not a BIO tag"):
        TokenClassificationTask(TaskSpec()).fit(rows([{"tokens": ["a", "b"], "tags": ["O", "PER"]}]))
    with pytest.raises(DataError, match=r"val\.jsonl:1, column 'tags': label 'B-ORG' was not seen"):
        task.features(rows([{"tokens": ["Acme"], "tags": ["B-ORG"]}], "val.jsonl"), tok, "validation")
    with pytest.raises(DataError, match=r"train\.jsonl:1, column 'tokens': missing"):
        TokenClassificationTask(TaskSpec()).fit(rows([{"words": ["a"], "tags": ["O"]}]))
    with pytest.raises(DataError, match="every tag is 'O'"):
        TokenClassificationTask(TaskSpec()).fit(rows([{"tokens": ["a"], "tags": ["O"]}]))


def test_space_separated_columns_of_a_csv_file():
    task = fitted()
    feature = task.features(rows([{"tokens": "John lives in Washington .", "tags": "B-PER O O B-LOC O"}],
                                 "val.csv"), wordpiece(), "validation")[0]
    assert feature["labels"] == [IGNORE, 3, 0, 0, 1, IGNORE, IGNORE, 0, IGNORE]


def test_chinese_characters_are_one_word_each():
    tok = wordpiece()
    row = {"tokens": list("北京是首都"), "tags": ["B-LOC", "I-LOC", "O", "O", "O"]}
    task = fitted(train=[row])
    feature = task.features(rows([row]), tok, "validation")[0]
    assert feature["word_ids"] == [-1, 0, 1, 2, 3, 4, -1]
    assert feature["labels"] == [IGNORE, 1, 2, 0, 0, 0, IGNORE]


def test_a_tiny_encoder_learns_synthetic_english_ner():
    from lmforge.data.synthetic import english_ner

    train, test = english_ner(384, seed=0), english_ner(64, seed=1)
    words = sorted({w for r in train + test for w in r["tokens"]})
    tok = wordpiece(words, lowercase=False)
    task = TokenClassificationTask(TaskSpec(name="token-classification"))
    train_rows, test_rows = rows(train), rows(test, "test.jsonl")
    task.fit(train_rows)
    torch.manual_seed(0)
    net = build_model(get_preset("bert-tiny", vocab_size=len(SPECIALS) + len(words), **TINY,
                                 **task.model_overrides()), task="token-classification")
    feats = task.features(train_rows, tok, "train")
    before = task.evaluate(net, test_rows, task.features(test_rows, tok, "test"), tok, batch_size=32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(60):
        loss, _ = task.loss(net, task.collate(rng.sample(feats, 32), tok.pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(net, test_rows, task.features(test_rows, tok, "test"), tok, batch_size=32)
    assert before["entity_f1"] < 0.3 < 0.8 < after["entity_f1"]
