"""Multiple choice: items from JSONL, prompts, seeded shots (as lm-eval's sampler), acc / acc_norm as lm-eval."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import transformers as T

import lmforge.evaluate.lm as lm_module
from lmforge.evaluate.choice import (
    ChoiceItem,
    choose_shots,
    multiple_choice,
    read_choice_items,
    render_prompt,
)
from lmforge.evaluate.errors import EvaluationError
from lmforge.interop.native import load_any

ITEMS = [
    ChoiceItem("The capital of France is", ["Paris", "Berlin", "a small town by the sea"], 0, "q0"),
    ChoiceItem("Two plus two equals", ["four", "five"], 0, "q1"),
    ChoiceItem("The opposite of hot is", ["warm", "cold", "boiling water"], 1, "q2"),
    ChoiceItem("A baby cat is called a", ["puppy", "kitten"], 1, "q3"),
    ChoiceItem("Water freezes at zero degrees", ["Celsius", "Fahrenheit"], 0, "q4"),
    ChoiceItem("The sun rises in the", ["west", "east", "north"], 1, "q5"),
]


# ------------------------------------------------------------------------------------------------ reading

def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_read_choice_items_accepts_query_or_question_and_an_index_or_the_answer_text(tmp_path):
    path = _write(tmp_path / "items.jsonl", [
        {"query": "2 + 2 =", "choices": ["3", "4"], "answer": 1, "id": 7},
        "",
        {"question": "Sky colour?", "choices": ["green", "blue", "red"], "answer": "blue"},
    ])
    assert read_choice_items(path) == [ChoiceItem("2 + 2 =", ["3", "4"], 1, "7"),
                                       ChoiceItem("Sky colour?", ["green", "blue", "red"], 1, None)]


def test_read_choice_items_names_file_line_and_field_of_every_problem(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        {"query": "ok", "choices": ["a", "b"], "answer": 0},
        "{not json",
        {"choices": ["a", "b"], "answer": 0},
        {"query": "q", "choices": ["a"], "answer": 0},
        {"query": "q", "choices": ["a", "b"], "answer": 2},
        {"query": "q", "choices": ["a", "b"], "answer": "c"},
        {"query": 3, "choices": ["a", "b"]},
        [1, 2],
    ])
    with pytest.raises(EvaluationError) as err:
        read_choice_items(path)
    message = str(err.value)
    for expected in [f"{path}:2: not valid JSON", f'{path}:3: field "query" (or "question") is missing',
                     f'{path}:4: field "choices" must be a list of at least two strings',
                     f'{path}:5: field "answer" 2 is not an index of the 2 choices',
                     f"{path}:6: field \"answer\" 'c' is none of the choices",
                     f'{path}:7: field "query" must be a string, got int', f'{path}:7: field "answer" is missing',
                     f"{path}:8: expected a JSON object, got list"]:
        assert expected in message
    assert f"{path}:1" not in message
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(EvaluationError, match="no multiple-choice items"):
        read_choice_items(empty)
    with pytest.raises(EvaluationError, match="cannot read"):
        read_choice_items(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------ prompts

def test_render_prompt_zero_and_few_shot_by_hand():
    item, shots = ITEMS[0], [ITEMS[1], ITEMS[3]]
    assert render_prompt(item) == ("The capital of France is", [" Paris", " Berlin", " a small town by the sea"])
    context, continuations = render_prompt(item, "Q: {query}\nA:", shots)
    assert context == "Q: Two plus two equals\nA: four\n\nQ: A baby cat is called a\nA: kitten\n\nQ: The capital of France is\nA:"
    assert continuations == [" Paris", " Berlin", " a small town by the sea"]
    context, continuations = render_prompt(ITEMS[3], "{query}?\n{choices}\nAnswer:", [ITEMS[1]], "\n###\n", "")
    assert context == "Two plus two equals?\nA. four\nB. five\nAnswer:four\n###\nA baby cat is called a?\nA. puppy\nB. kitten\nAnswer:"
    assert continuations == ["puppy", "kitten"]
    with pytest.raises(EvaluationError, match=r"unknown field \{question\}"):
        render_prompt(item, "{question}")


def test_choose_shots_draws_as_lm_evals_sampler_and_never_the_item():
    from lm_eval.api.samplers import ContextSampler

    pool = ITEMS * 2 + [ChoiceItem(f"extra {i}", ["x", "y"], 0) for i in range(6)]
    pool = list(dict.fromkeys(map(_key, pool)))  # distinct items, as lm-eval's docs (compared with ==)
    pool = [ChoiceItem(q, list(c), a, i) for q, c, a, i in pool]
    reference = ContextSampler([vars(x) for x in pool], rnd=1234)
    rng = random.Random(1234)
    for item in pool:  # one sampler, in item order, as lm-eval's fewshot_context draws
        ours = choose_shots(pool, 3, rng, exclude=item)
        assert [vars(x) for x in ours] == reference.sample(3, eval_doc=vars(item))
        assert item not in ours and len(set(map(_key, ours))) == 3
    assert choose_shots(pool, 4, 99) == choose_shots(pool, 4, 99) != choose_shots(pool, 4, 100)
    tiny = ITEMS[:3]
    for seed in range(20):  # k + 1 = the whole pool: the item is always drawn, and always dropped
        assert sorted(map(_key, choose_shots(tiny, 2, seed, exclude=tiny[1]))) == sorted(map(_key, [tiny[0], tiny[2]]))
    with pytest.raises(EvaluationError, match="3 shots asked for, but the pool holds only 2 other items"):
        choose_shots(tiny, 3, 0, exclude=tiny[0])


def _key(item: ChoiceItem):
    return item.query, tuple(item.choices), item.answer, item.id


# ------------------------------------------------------------------------------------------------ scoring

def test_acc_and_acc_norm_from_known_log_likelihoods(monkeypatch):
    """lm-eval's rule: acc = argmax of the sums; acc_norm = argmax of sum / characters of the choice."""
    items = [ChoiceItem("q1", ["a", "much longer"], 1), ChoiceItem("q2", ["yes", "no"], 0),
             ChoiceItem("q3", ["xx", "y"], 0)]
    known = {"q1": [-3.0, -5.0], "q2": [-2.0, -2.0], "q3": [-4.0, -2.1]}

    def fake_loglikelihood(model, tokenizer, requests, batch_size=16, **kw):
        counters: dict[str, int] = {}
        out = []
        for context, _ in requests:
            i = counters.get(context, 0)
            counters[context] = i + 1
            out.append((known[context][i], False))
        return out

    monkeypatch.setattr(lm_module, "loglikelihood", fake_loglikelihood)
    result = multiple_choice(None, None, items)
    by_hand = [(0, 1), (0, 0), (1, 0)]  # q1: -3/1 < -5/11; q2: a tie goes to the first; q3: -4/2 > -2.1/1
    assert [(p["pred"], p["pred_norm"]) for p in result["predictions"]] == by_hand
    assert result["acc"] == pytest.approx(1 / 3) and result["acc_norm"] == 1.0
    assert result["n"] == 3 and result["num_fewshot"] == 0
    assert result["predictions"][0] == {"pred": 0, "pred_norm": 1, "answer": 1, "logprobs": [-3.0, -5.0]}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """(transformers GPT-2, lmforge's load of it, the BPE tokenizer), tiny and random."""
    from lmforge.tokenizers import Tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("choice")
    text = "\n\n".join(f"{x.query} {' '.join(x.choices)}." for x in ITEMS * 3)
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    tok = train_tokenizer([folder / "corpus.txt"], kind="bpe", vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=tok.vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                        initializer_range=0.2, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(folder / "hf")
    tok.save(folder / "hf")
    return hf, load_any(folder / "hf", dtype=torch.float32, task="causal-lm"), Tokenizer.from_pretrained(folder / "hf")


def _reference_loglikelihood(hf, tok, context: str, continuation: str) -> float:
    """Tokens split as lm-eval does (trailing spaces move to the continuation), scored with transformers."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    n_context = len(tok.encode(context, add_special_tokens=False))
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(n_context, len(whole))))


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_multiple_choice_equals_a_hand_computation_on_transformers(tiny_lm, num_fewshot):
    hf, model, tok = tiny_lm
    template = "Question: {query}\nAnswer:"
    result = multiple_choice(model, tok, ITEMS, template=template, num_fewshot=num_fewshot, seed=3, batch_size=5)
    rng = random.Random(3)
    acc = acc_norm = 0
    for item, prediction in zip(ITEMS, result["predictions"]):
        shots = [x for x in rng.sample(ITEMS, num_fewshot + 1) if x != item][:num_fewshot] if num_fewshot else []
        context = "".join(f"Question: {s.query}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
        context += f"Question: {item.query}\nAnswer:"
        lls = np.array([_reference_loglikelihood(hf, tok, context, " " + c) for c in item.choices])
        np.testing.assert_allclose(prediction["logprobs"], lls, rtol=1e-5)
        lengths = np.array([len(c) for c in item.choices], dtype=float)
        assert prediction["pred"] == np.argmax(lls) and prediction["pred_norm"] == np.argmax(lls / lengths)
        acc, acc_norm = acc + (np.argmax(lls) == item.answer), acc_norm + (np.argmax(lls / lengths) == item.answer)
    assert result["acc"] == acc / len(ITEMS) and result["acc_norm"] == acc_norm / len(ITEMS)
    again = multiple_choice(model, tok, ITEMS, template=template, num_fewshot=num_fewshot, seed=3, batch_size=5)
    assert again["predictions"] == result["predictions"]  # the same seed draws the same shots


def test_multiple_choice_rejects_bad_input(tiny_lm):
    _, model, tok = tiny_lm
    with pytest.raises(EvaluationError, match="no multiple-choice items"):
        multiple_choice(model, tok, [])
    with pytest.raises(EvaluationError, match="item 0 \\(bad\\): answer 5 is not an index of its 2 choices"):
        multiple_choice(model, tok, [ChoiceItem("q", ["a", "b"], 5, "bad")])
    with pytest.raises(EvaluationError, match="6 shots asked for, but the pool holds only 5 other items"):
        multiple_choice(model, tok, ITEMS, num_fewshot=6)
