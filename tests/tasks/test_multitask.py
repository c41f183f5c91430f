"""Multi-task training: one body, a head per sub-task; each sub-task's loss is exactly the single-task one,
sub-tasks are drawn with the temperature's probabilities, the mixing resumes exactly, and both heads learn."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from lmforge.tasks import Example, TaskSpec, get_task

POS, NEG = ["good", "great"], ["bad", "awful"]
FILL = "the a film plot was is and very it".split()
NAMES = ["anna", "omar", "li"]
TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64}


def _rows(n_cls: int, n_ner: int, seed: int) -> list[Example]:
    rng, rows = random.Random(seed), []
    for _ in range(n_cls):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILL) for _ in range(4)] + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        rows.append({"task": "sentiment", "text": " ".join(words), "label": label})
    for _ in range(n_ner):
        words = [rng.choice(FILL) for _ in range(5)]
        at = rng.randrange(5)
        words[at] = rng.choice(NAMES)
        rows.append({"task": "ner", "tokens": words, "tags": ["B-PER" if j == at else "O" for j in range(5)]})
    rng.shuffle(rows)
    return [Example(r, "mt.jsonl", i + 1) for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lmforge.tokenizers import train_tokenizer

    path = tmp_path_factory.mktemp("mt") / "corpus.txt"
    path.write_text(" ".join(FILL + POS + NEG + NAMES) * 20, encoding="utf-8")
    return train_tokenizer([path], kind="wordpiece", vocab_size=80, min_frequency=1, show_progress=False)


def _setup(tokenizer, temperature=1.0, n_cls=96, n_ner=32):
    from lmforge.models import build_model, get_preset

    spec = TaskSpec(name="multitask", subtasks={"sentiment": "classification", "ner": "token-classification"},
                    temperature=temperature, max_length=16)
    task = get_task(spec)
    train = _rows(n_cls, n_ner, 0)
    task.fit(train)
    torch.manual_seed(0)
    cfg = get_preset("bert-tiny", vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id, **TINY)
    model = build_model(cfg.replace(**task.model_overrides()), task="multi-task")
    return task, model, train


def test_each_subtask_loss_is_the_single_task_loss(tokenizer):
    from lmforge.models import SequenceClassifier, TokenClassifier

    task, model, train = _setup(tokenizer)
    feats = task.features(train, tokenizer, "train")
    model.eval()
    for name, cls in (("sentiment", SequenceClassifier), ("ner", TokenClassifier)):
        sub = get_task(replace(task.spec, name=task.spec.subtasks[name]))
        rows = [ex for ex in train if ex.fields["task"] == name]
        sub.fit(rows)
        single = cls(model.cfg.replace(task_heads=None, **sub.model_overrides()))
        keep = ("body.", "pooler.") if name == "sentiment" else ("body.",)  # a token classifier has no pooler
        state = {k: v for k, v in model.state_dict().items() if k.startswith(keep)}
        state.update({k.replace(f"heads.{name}.", "head."): v for k, v in model.state_dict().items()
                      if k.startswith(f"heads.{name}.")})
        single.load_state_dict(state)
        batch = task.collate([f for f in feats if f["task"] == name][:8], tokenizer.pad_id)
        plain = {k: v for k, v in batch.items() if k != "task_id"}
        with torch.no_grad():
            got, n_got = task.loss(model, batch)
            want, n_want = sub.loss(single.eval(), plain)
        assert n_got == n_want and torch.equal(got, want), name


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_subtasks_are_drawn_with_the_temperature_and_resume_exactly(tokenizer, temperature):
    from lmforge.train.objective_finetune import FinetuneObjective, TaskSplit

    task, model, train = _setup(tokenizer, temperature, n_cls=96, n_ner=32)
    split = TaskSplit(train, task.features(train, tokenizer, "train"))
    objective = FinetuneObjective(task, tokenizer, tokenizer.pad_id)
    loader = objective.train_loader(split, 8, 16, seed=3, rank=0, world_size=1)
    drawn = [int(next(loader)["task_id"]) for _ in range(3000)]
    sizes = torch.tensor([96.0, 32.0]) ** (1 / temperature)
    expected = float(sizes[1] / sizes.sum())  # the share of "ner" batches
    assert abs(drawn.count(1) / len(drawn) - expected) < 0.03
    again = objective.train_loader(split, 8, 16, seed=3, rank=0, world_size=1)
    for _ in range(17):
        next(again)
    resumed = objective.train_loader(split, 8, 16, seed=3, rank=0, world_size=1)
    resumed.load_state_dict(again.state_dict())
    for _ in range(5):
        a, b = next(again), next(resumed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_heads_learn(tokenizer):
    from lmforge.train.objective_finetune import FinetuneObjective, TaskSplit

    task, model, train = _setup(tokenizer, 2.0)
    split = TaskSplit(train, task.features(train, tokenizer, "train"))
    objective = FinetuneObjective(task, tokenizer, tokenizer.pad_id)
    loader = objective.train_loader(split, 16, 16, seed=0, rank=0, world_size=1)
    before = objective.eval_metrics(model, split, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        loss, _ = objective.loss(model, next(loader), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = objective.eval_metrics(model, split, torch.device("cpu"))
    assert after["sentiment_accuracy"] > 0.9 and after["ner_entity_f1"] > 0.9, (before, after)
    assert after["mean"] == pytest.approx((after["sentiment_accuracy"] + after["ner_entity_f1"]) / 2)


def test_a_row_of_an_unknown_subtask_is_an_error(tokenizer):
    from lmforge.data.errors import DataError

    task, _, _ = _setup(tokenizer)
    with pytest.raises(DataError, match="mt.jsonl:7, column 'task': sub-task 'pos' is not one of sentiment, ner"):
        task.fit([Example({"task": "pos", "text": "x", "label": "pos"}, "mt.jsonl", 7)])
