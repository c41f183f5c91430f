"""Extractive QA: windows over long contexts, answer-position labels, n-best post-processing, SQuAD metrics.

References: hand counts on a word-level tokenizer (one token per word), transformers' fast tokenizer with
`return_overflowing_tokens` and the labelling loop of its `run_qa.py` example on MiniLM's vocabulary
(assets), and hand-computed SQuAD scores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from lmforge.data.errors import DataError
from lmforge.data.synthetic_qa import squad_like
from lmforge.evaluate.qa import normalize_answer, squad_metrics
from lmforge.models import build_model, get_preset
from lmforge.tasks import Example, TaskSpec, get_task
from lmforge.tasks.qa import answer_tokens, best_answers, best_span, context_windows
from lmforge.tokenizers import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def word_tokenizer(texts) -> Tokenizer:
    """A BERT-style word-level tokenizer over the words of `texts`: one token per word or punctuation run."""
    split = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    backend = Backend(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = split
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return Tokenizer(backend, {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]"})


def qa_example(question, context, answer, line=1, start=None) -> Example:
    start = context.index(answer) if start is None else start
    return Example({"question": question, "context": context,
                    "answers": {"text": [answer], "answer_start": [start]}}, "train.jsonl", line)


CONTEXT = " ".join(f"w{i}" for i in range(50))  # 50 one-token words


def test_windows_of_a_long_context_match_a_hand_count():
    tok = word_tokenizer([CONTEXT, "where"])
    # [CLS] where [SEP] ... [SEP]: 4 tokens around the context, 16 for it; windows start every 16 - 6 = 10 words
    windows = context_windows(tok, "where", CONTEXT, max_length=20, stride=6)
    starts = [0, 10, 20, 30, 40]
    assert len(windows) == len(starts)
    for window, first in zip(windows, starts):
        words = [f"w{i}" for i in range(first, min(first + 16, 50))]
        assert tok.backend.decode(window["input_ids"], skip_special_tokens=False).split() == (
            ["[CLS]", "where", "[SEP]", *words, "[SEP]"])
        assert len(window["input_ids"]) <= 20
        assert window["token_type_ids"] == [0] * 3 + [1] * (len(words) + 1)
        assert window["offsets"][:3] == [None] * 3 and window["offsets"][-1] is None
        assert [CONTEXT[a:b] for a, b in window["offsets"][3:-1]] == words  # offsets point into the context


def test_the_answer_is_labelled_in_exactly_the_windows_that_hold_it():
    tok = word_tokenizer([CONTEXT, "where"])
    task = get_task(TaskSpec(name="qa", max_length=20, stride=6))
    features = task.features([qa_example("where", CONTEXT, "w23 w24")], tok, "train")
    # words 23-24 lie wholly in the windows starting at words 10 (10..25) and 20 (20..35) only
    labels = [(f["start_positions"], f["end_positions"]) for f in features]
    assert labels == [(0, 0), (3 + 23 - 10, 3 + 24 - 10), (3 + 23 - 20, 3 + 24 - 20), (0, 0), (0, 0)]
    for f, (s, e) in zip(features, labels):
        assert f["example_index"] == 0
        if s:
            assert CONTEXT[f["offsets"][s][0]:f["offsets"][e][1]] == "w23 w24"
    # an answer cut by a window's edge (words 25-26: the window 10..25 ends at word 25; 20..35 holds both)
    cut = task.features([qa_example("where", CONTEXT, "w25 w26")], tok, "train")
    assert [(f["start_positions"], f["end_positions"]) for f in cut] == [(0, 0), (0, 0), (8, 9), (0, 0), (0, 0)]


def test_answer_tokens_inside_words_and_outside_the_window():
    offsets = [None, None, (0, 5), (6, 11), (12, 14), None]  # "hello world xy"
    assert answer_tokens(offsets, 6, 11) == (3, 3)
    assert answer_tokens(offsets, 7, 13) == (3, 4)  # characters inside tokens: the tokens that hold them
    assert answer_tokens(offsets, 12, 20) == (0, 0)  # runs past the window


def test_a_misaligned_answer_start_is_a_data_error_naming_the_row():
    task = get_task(TaskSpec(name="qa"))
    bad = qa_example("Where?", "Alice lives in Paris.", "Paris", line=7, start=3)
    with pytest.raises(DataError, match=r"train.jsonl:7, column 'answers'.*'Paris' is not at answer_start 3"):
        task.fit([bad])
    with pytest.raises(DataError, match=r"train.jsonl:2, column 'answers'"):
        task.fit([Example({"question": "q", "context": "c", "answers": {"text": [], "answer_start": []}},
                          "train.jsonl", 2)])
    with pytest.raises(DataError, match=r"train.jsonl:3, column 'context': missing"):
        task.fit([Example({"question": "q", "answers": {}}, "train.jsonl", 3)])


def test_a_question_too_long_for_the_window_is_a_data_error():
    tok = word_tokenizer([CONTEXT])
    with pytest.raises(DataError, match=r"train.jsonl:1: .*leaving 6 for the context: not more than stride=6"):
        context_windows(tok, " ".join(CONTEXT.split()[:11]), CONTEXT, 20, 6, qa_example("q", CONTEXT, "w1"))


def test_post_processing_picks_the_best_valid_span_across_windows():
    tok = word_tokenizer([CONTEXT, "where"])
    features = context_windows(tok, "where", CONTEXT, max_length=20, stride=6)[:2]  # words 0..15 and 10..25
    for f in features:
        f["example_index"] = 0
    starts = [[-10.0] * len(f["input_ids"]) for f in features]
    ends = [[-10.0] * len(f["input_ids"]) for f in features]
    # window 0 ([CLS] where [SEP] w0..w15 [SEP]): its best-scoring pairs are invalid: a start on the question
    # and an end on [SEP] (9 each), an end before its start (w12, w10), spans of more than 5 tokens (w0, w9);
    # its best valid span is w4..w5, scoring 3 + 3
    starts[0][1], ends[0][2] = 9.0, 9.0
    starts[0][3 + 12], ends[0][3 + 10] = 8.0, 8.5
    starts[0][3 + 0], ends[0][3 + 9] = 7.0, 7.0
    starts[0][3 + 4], ends[0][3 + 5] = 3.0, 3.0
    # window 1 ([CLS] where [SEP] w10..w25 [SEP]): w21..w23 scores 5 + 4.5, the best valid span of the example
    starts[1][3 + 11], ends[1][3 + 13] = 5.0, 4.5
    assert best_span(starts[0], ends[0], features[0]["offsets"], 20, 5) == (6.0, 7, 8)
    assert best_answers([CONTEXT], features, starts, ends, n_best=20, max_answer_tokens=5) == ["w21 w22 w23"]
    # with n_best=1 each window keeps only its top start and end: window 0 has no valid pair, window 1 does
    assert best_answers([CONTEXT], features, starts, ends, n_best=1, max_answer_tokens=5) == ["w21 w22 w23"]
    # a span of 3 tokens is too long for max_answer_tokens=2: window 0's w4..w5 wins
    assert best_answers([CONTEXT], features, starts, ends, n_best=20, max_answer_tokens=2) == ["w4 w5"]
    # an example none of whose windows has a valid span predicts ""
    assert best_answers([CONTEXT, "x"], features, starts, ends, 20, 5) == ["w21 w22 w23", ""]


def test_squad_metrics_normalise_and_take_the_best_gold_answer():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  an Apple,  a  day ") == "apple day"
    scores = squad_metrics(["The Cat!", "the cat sat", "Denver Broncos", "nothing"],
                           [["cat"], ["cat", "a dog"], ["Denver Broncos", "Broncos"], ["something else"]])
    # EM: 1, 0, 1, 0. F1: 1; "cat sat" vs "cat": P 1/2, R 1 -> 2/3; 1; 0
    assert scores["exact_match"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)


def test_loss_is_the_mean_of_start_and_end_cross_entropies():
    rows = squad_like(6, seed=3)
    tok = word_tokenizer([r["question"] + " " + r["context"] for r in rows])
    task = get_task(TaskSpec(name="qa", max_length=48, stride=16))
    features = task.features([Example(r, "qa.jsonl", i + 1) for i, r in enumerate(rows)], tok, "train")
    torch.manual_seed(0)
    model = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                   d_ff=64, max_seq_len=64), task="question-answering")
    batch = task.collate(features, tok.pad_id)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    loss, count = task.loss(model, batch)
    start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    expected = (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
    assert count == len(features) > len(rows)  # long contexts gave several windows
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_tiny_bert_learns_the_synthetic_questions_and_evaluate_scores_them():
    # one question per context (a model this small, trained this briefly, does not learn to read the question):
    # 8 one-person contexts and 2 long ones, whose answers lie in some of their windows only
    by_context = {}
    for r in squad_like(60, seed=5):
        by_context.setdefault(r["context"], r)
    rows = ([r for c, r in by_context.items() if len(c.split()) < 100][:8]
            + [r for c, r in by_context.items() if len(c.split()) > 200][:2])
    examples = [Example(r, "qa.jsonl", i + 1) for i, r in enumerate(rows)]
    tok = word_tokenizer([r["question"] + " " + r["context"] for r in rows])
    task = get_task(TaskSpec(name="qa", max_length=96, stride=32))
    task.fit(examples)
    features = task.features(examples, tok, "train")
    assert len(features) > len(rows) and any(f["start_positions"] == 0 for f in features)
    torch.manual_seed(0)
    model = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=2,
                                   d_ff=128, max_seq_len=128), task="question-answering")
    before = task.evaluate(model, examples, features, tok, batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = task.collate(features, tok.pad_id)
    model.train()
    for _ in range(30):
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(model, examples, features, tok, batch_size=8)
    assert model.training  # evaluate restores the mode
    assert after["exact_match"] >= 90 and after["f1"] >= after["exact_match"]
    assert after["f1"] > before["f1"] + 50


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    import transformers as T

    return Tokenizer.from_pretrained(minilm_dir), T.BertTokenizerFast.from_pretrained(str(minilm_dir))


@pytest.mark.assets
@pytest.mark.parametrize("max_length, stride", [(64, 16), (48, 20), (384, 128)])
def test_windows_and_labels_match_transformers_on_minilm(minilm, max_length, stride):
    ours, theirs = minilm
    rows = [r for r in squad_like(30, seed=11) if len(r["context"].split()) > 200][:6]
    rows.append({"question": "Which café?", "context": "They met at the Café Ümlaut, naïvely, in 1999.",
                 "answers": {"text": ["Café Ümlaut"], "answer_start": [16]}})
    task = get_task(TaskSpec(name="qa", max_length=max_length, stride=stride))
    features = task.features([Example(r, "qa.jsonl", i + 1) for i, r in enumerate(rows)], ours, "train")
    enc = theirs([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second",
                 max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert len(features) == len(enc["input_ids"])
    assert len(features) > len(rows)  # the long contexts took several windows
    for i, feature in enumerate(features):
        sequence_ids = enc.sequence_ids(i)
        assert feature["example_index"] == enc["overflow_to_sample_mapping"][i]
        assert feature["input_ids"] == enc["input_ids"][i]
        assert feature["token_type_ids"] == enc["token_type_ids"][i]
        assert feature["offsets"] == [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i],
                                                                                  sequence_ids)]
        # transformers' run_qa.py `prepare_train_features`, as written there
        row = rows[enc["overflow_to_sample_mapping"][i]]
        start_char = row["answers"]["answer_start"][0]
        end_char = start_char + len(row["answers"]["text"][0])
        offsets = enc["offset_mapping"][i]
        token_start = 0
        while sequence_ids[token_start] != 1:
            token_start += 1
        token_end = len(enc["input_ids"][i]) - 1
        while sequence_ids[token_end] != 1:
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            expected = (0, 0)
        else:
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            expected = (token_start - 1, token_end + 1)
        assert (feature["start_positions"], feature["end_positions"]) == expected
