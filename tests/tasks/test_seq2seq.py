"""Seq2seq fine-tuning: features, the teacher-forced loss against a hand computation, a tiny BART that learns to
reverse digit strings, and ROUGE over characters for Chinese (hand-computed LCS and n-gram overlaps)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from lmforge.data.errors import DataError
from lmforge.evaluate.generation import has_cjk, rouge_metrics
from lmforge.models import build_model, get_preset
from lmforge.tasks import Example, TaskSpec, get_task
from lmforge.tasks.seq2seq import rouge_scores
from lmforge.tokenizers import Tokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # BART's ids: bos 0, pad 1, eos 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """A BART-style tokenizer over the ten digits: `<s> 3 1 4 </s>`."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list("0123456789"))}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    return Tokenizer(backend, {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"})


def tiny_bart(vocab_size: int):
    torch.manual_seed(0)
    return build_model(get_preset("bart-tiny", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                  max_seq_len=32), task="seq2seq-lm")


def reverse_rows(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        d = [rng.choice("0123456789") for _ in range(rng.randint(3, 6))]
        rows.append(Example({"text": " ".join(d), "target": " ".join(reversed(d))}, "pairs.jsonl", i + 1))
    return rows


def test_features_truncate_the_source_and_end_the_target_with_eos(digits):
    task = get_task(TaskSpec(name="seq2seq", max_length=5))
    rows = [Example({"text": "1 2 3 4 5 6", "target": "9 8 7 6 5 4 3"}, "p.jsonl", 1),
            Example({"text": "7", "target": "8"}, "p.jsonl", 2)]
    first, second = task.features(rows, digits, "train")
    d = {str(i): 4 + i for i in range(10)}  # digit -> id
    assert first["input_ids"] == [0, d["1"], d["2"], d["3"], 2]  # <s> ... </s> kept by the truncation
    assert first["labels"] == [d["9"], d["8"], d["7"], d["6"], 2]
    assert second == {"input_ids": [0, d["7"], 2], "labels": [d["8"], 2], "example_index": 1}
    with pytest.raises(DataError, match=r"p.jsonl:3, column 'target': missing"):
        task.fit([Example({"text": "1"}, "p.jsonl", 3)])


def test_loss_equals_a_hand_computation(digits):
    task = get_task(TaskSpec(name="seq2seq"))
    features = task.features(reverse_rows(4, seed=1), digits, "train")
    model = tiny_bart(digits.vocab_size)
    batch = task.collate(features, digits.pad_id)
    loss, count = task.loss(model, batch)
    # by hand: decoder inputs are BART's start token (eos, 2) then each target but its last token, pad after
    width = max(len(f["labels"]) for f in features)
    decoder_inputs = torch.tensor([[2] + f["labels"][:-1] + [1] * (width - len(f["labels"])) for f in features])
    labels = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features])
    assert torch.equal(batch["labels"], labels)
    logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=decoder_inputs)
    total, n = 0.0, 0
    for row, f in enumerate(features):
        for t, target in enumerate(f["labels"]):
            total += -F.log_softmax(logits[row, t], -1)[target].item()
            n += 1
    assert count == n == sum(len(f["labels"]) for f in features)
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


def test_a_tiny_bart_learns_to_reverse_digit_strings(digits):
    task = get_task(TaskSpec(name="seq2seq", max_length=16, max_new_tokens=8))
    train, held_out = reverse_rows(256, seed=0), reverse_rows(32, seed=99)
    train_features = task.features(train, digits, "train")
    held_features = task.features(held_out, digits, "validation")
    model = tiny_bart(digits.vocab_size)
    before = task.evaluate(model, held_out, held_features, digits, batch_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        i = (step * 32) % len(train_features)
        loss, _ = task.loss(model, task.collate(train_features[i:i + 32], digits.pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(model, held_out, held_features, digits, batch_size=16)
    assert set(after) == {"rouge1", "rouge2", "rougeL", "exact_match"}
    assert before["rougeL"] < 0.3 < 0.9 < after["rougeL"]
    assert after["exact_match"] > 0.8


def test_rouge_over_characters_for_chinese_references():
    ref, pred = "今天天气真好。", "今天天气不好"
    assert has_cjk(ref) and not has_cjk("café 123")
    # rouge-score's own tokenizer keeps [a-z0-9] only: Chinese has no tokens, even space-joined
    assert rouge_metrics([" ".join(pred)], [" ".join(ref)])["rougeL"] == 0.0
    scores = rouge_scores([pred], [ref])
    # characters (punctuation dropped): 今天天气真好 vs 今天天气不好. LCS 今天天气好 = 5 of 6 on both sides;
    # unigrams overlap 5 of 6; bigrams 今天 天天 天气 of 5
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["exact_match"] == 0.0
    # a mixed split: each pair by its reference's script; English pairs as rouge_metrics scores them
    english = (["the cats sat on a mat", "hello"], ["The cat sat on the mat.", "goodbye"])
    mixed = rouge_scores([pred, *english[0]], [ref, *english[1]])
    words = rouge_metrics(*english)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert mixed[key] == pytest.approx((scores[key] + 2 * words[key]) / 3)
    assert rouge_scores(["abc"], ["abd"], chars=True)["rougeL"] == pytest.approx(2 / 3)  # forced on Latin text
