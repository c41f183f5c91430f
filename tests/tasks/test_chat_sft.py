"""Chat SFT: answer-only labels from the chat template (hand check: the labelled tokens decode to each assistant
turn's content plus its end-of-turn marker), packing, the loss against a hand computation, and evaluation
(batched, left-padded greedy generation equals generating each prompt alone; a tiny model that memorised
its answers scores exact match 1). On a small template written here and on SmolLM2's (assets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _assets import require_asset
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.data.errors import DataError
from lmforge.data.instructions import fixed_format_tasks
from lmforge.generate.chat import apply_chat_template
from lmforge.models import build_model, get_preset
from lmforge.tasks import Example, TaskSpec, get_task
from lmforge.tasks.chat import conversation_tokens, left_pad
from lmforge.tokenizers import Tokenizer

# A default system prompt when there is none (as SmolLM2's template has), turns ended by <|end|> and a newline.
TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}{{ '<|system|>Be brief.<|end|>\\n' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIALS = ["<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CONVERSATIONS = [
    [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello there"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "And goodbye?"},
     {"role": "assistant", "content": " Au revoir, mon ami."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"},
     {"role": "user", "content": "Another one, please"}, {"role": "assistant", "content": "Green and\nyellow"}],
    [{"role": "user", "content": "Say 你好"}, {"role": "assistant", "content": "你好！"}],
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A byte-level BPE trained here on the conversations, with the template's markers as special tokens."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([m["content"] for c in CONVERSATIONS for m in c] * 3 + ["Be brief."], trainer)
    return Tokenizer(backend, {"pad": "<pad>", "eos": "<|end|>"}, chat_template=TEMPLATE)


def examples(conversations) -> list[Example]:
    return [Example({"messages": c}, "chat.jsonl", i + 1) for i, c in enumerate(conversations)]


def labelled_spans(labels: list[int]) -> list[list[int]]:
    """The runs of labels that are not -100."""
    spans, current = [], []
    for label in [*labels, -100]:
        if label != -100:
            current.append(label)
        elif current:
            spans, current = [*spans, current], []
    return spans


def check_labels(tokenizer: Tokenizer, conversation, ids, labels, end_marker: str) -> None:
    """Hand check: each labelled run decodes to one assistant turn's content + end marker, and the ids are the
    template's text (the system prompt, user turns and headers all unlabelled)."""
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    spans = labelled_spans(labels)
    assert [tokenizer.decode(s, skip_special_tokens=False) for s in spans] == [a + end_marker for a in answers]
    assert all(label in (-100, i) for label, i in zip(labels, ids)) and len(labels) == len(ids)
    assert tokenizer.decode(ids, skip_special_tokens=False) == apply_chat_template(tokenizer, conversation, False)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_only_the_assistant_turns_are_labelled(tok, index):
    conversation = CONVERSATIONS[index]
    ids, labels = conversation_tokens(tok, conversation)
    check_labels(tok, conversation, ids, labels, "<|end|>")
    # the default system prompt is rendered and unlabelled
    text = tok.decode([i for i, label in zip(ids, labels) if label == -100], skip_special_tokens=False)
    assert text.startswith("<|system|>Be brief." if conversation[0]["role"] != "system" else "<|system|>Answer")


def test_task_features_from_messages_and_from_prompt_response_rows(tok):
    task = get_task(TaskSpec(name="chat", max_length=64))
    rows = [Example({"prompt": "What is two plus two?", "response": "Four."}, "pairs.csv", 2),
            Example({"messages": CONVERSATIONS[0]}, "chat.jsonl", 1)]
    task.fit(rows)
    pair, messages = task.features(rows, tok, "train")
    assert pair["input_ids"] == messages["input_ids"] and pair["labels"] == messages["labels"]
    # messages after the last assistant turn teach nothing and are dropped
    tail = Example({"messages": [*CONVERSATIONS[0], {"role": "user", "content": "Thanks"}]}, "chat.jsonl", 3)
    assert task.features([tail], tok, "train")[0]["input_ids"] == messages["input_ids"]
    # truncation keeps the first max_length tokens, labels aligned
    short = get_task(TaskSpec(name="chat", max_length=10)).features(rows[1:], tok, "train")[0]
    assert short["input_ids"] == messages["input_ids"][:10] and short["labels"] == messages["labels"][:10]


def test_bad_rows_are_data_errors_naming_the_row(tok):
    task = get_task(TaskSpec(name="chat"))
    cases = [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
         r"chat.jsonl:1, column 'messages': messages\[1\].role: 'robot' is not one of"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"chat.jsonl:1, column 'messages': .*no assistant"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, r"chat.jsonl:1, column 'messages': .*starts with"),
        ({"messages": "hi"}, r"chat.jsonl:1, column 'messages': expected list"),
        ({"prompt": "hi"}, r"chat.jsonl:1, column 'response': missing"),
    ]
    for fields, message in cases:
        with pytest.raises(DataError, match=message):
            task.fit([Example(fields, "chat.jsonl", 1)])
    # a template that does not append turns (it rewrites the text) cannot give answer-only labels
    rewriting = Tokenizer(Backend.from_str(tok.to_json()), dict(tok.special_tokens),
                          chat_template="{{ messages[-1]['content'] }}")
    with pytest.raises(DataError, match=r"chat.jsonl:1: the chat template does not render assistant turn 1"):
        task.features(examples(CONVERSATIONS[:1]), rewriting, "train")


def test_packing_keeps_whole_conversations_and_their_labels(tok):
    conversations = CONVERSATIONS * 3
    plain = get_task(TaskSpec(name="chat", max_length=96)).features(examples(conversations), tok, "train")
    packer = get_task(TaskSpec(name="chat", max_length=96, packing=True))
    packed = packer.features(examples(conversations), tok, "train")
    assert len(packed) < len(plain)
    assert [i for w in packed for i in w["example_index"]] == list(range(len(conversations)))
    for window in packed:
        members = [plain[i] for i in window["example_index"]]
        assert len(window["input_ids"]) <= 96
        assert window["input_ids"] == [t for m in members for t in m["input_ids"]]
        start = 0
        for m in members:  # each conversation's slice of the window has its own labels, at its own positions
            piece = slice(start, start + len(m["input_ids"]))
            check_labels(tok, conversations[m["example_index"]], window["input_ids"][piece], window["labels"][piece],
                         "<|end|>")
            start = piece.stop
        assert start == len(window["labels"])
    # the number of targets survives packing (each conversation starts with an unlabelled token)
    from lmforge.objectives import num_predicted_tokens

    count = [num_predicted_tokens(labels=packer.collate(f, tok.pad_id)["labels"]) for f in (plain, packed)]
    assert count[0] == count[1] > 0
    # validation features are not packed
    assert packer.features(examples(conversations), tok, "validation") == plain


def tiny_llama(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_preset("llama-tiny", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4,
                                  n_kv_heads=2, d_ff=128, max_seq_len=128, eos_token_id=4), task="causal-lm")


def test_loss_is_next_token_cross_entropy_on_the_assistant_tokens(tok):
    task = get_task(TaskSpec(name="chat"))
    features = task.features(examples(CONVERSATIONS), tok, "train")
    model = tiny_llama(tok.vocab_size)
    batch = task.collate(features, tok.pad_id)
    loss, count = task.loss(model, batch)
    logits = model(batch["input_ids"], batch["attention_mask"])
    total, n = 0.0, 0
    for row, f in enumerate(features):
        for j in range(1, len(f["labels"])):
            if f["labels"][j] != -100:  # token j is predicted from position j - 1
                total += -F.log_softmax(logits[row, j - 1], -1)[f["labels"][j]].item()
                n += 1
    assert count == n == sum(label != -100 for f in features for label in f["labels"])
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


def greedy_alone(model, tokenizer, conversation, max_new_tokens: int, stops: set[int]) -> str:
    """The reference: one prompt, no cache, no padding, argmax until a stop token."""
    text = apply_chat_template(tokenizer, conversation, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
    return tokenizer.decode(new).strip()


def test_batched_evaluation_equals_generating_each_prompt_alone(tok):
    from lmforge.generate.engine import stop_ids

    model = tiny_llama(tok.vocab_size, seed=3).eval()
    prompts = [c[:-1] for c in CONVERSATIONS] + [[{"role": "user", "content": "Hi"}]]  # lengths differ: padding
    answers = [greedy_alone(model, tok, p, 6, stop_ids(tok, model)) for p in prompts]
    assert len(set(answers)) > 1 and all(answers)  # a random model, but not a degenerate one
    rows = [[*p, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
    task = get_task(TaskSpec(name="chat", max_new_tokens=6))
    scores = task.evaluate(model, examples(rows), [], tok, batch_size=3)
    assert scores["exact_match"] == 1.0
    # and a wrong reference is not an exact match
    rows[0][-1] = {"role": "assistant", "content": answers[0] + " extra"}
    assert task.evaluate(model, examples(rows), [], tok, batch_size=3)["exact_match"] == pytest.approx(4 / 5)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_tiny_llama_learns_its_answers_and_evaluate_sees_it(tok):
    task = get_task(TaskSpec(name="chat", max_new_tokens=16))
    rows = examples(CONVERSATIONS)
    features = task.features(rows, tok, "train")
    model = tiny_llama(tok.vocab_size, seed=1)
    before = task.evaluate(model, rows, [], tok, batch_size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = task.collate(features, tok.pad_id)
    for _ in range(80):
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(model, rows, [], tok, batch_size=4)
    assert before["exact_match"] == 0.0 and after["exact_match"] == 1.0 and after["rougeL"] == 1.0


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Tokenizer:
    from lmforge.assets import smollm2_gguf

    return Tokenizer.from_pretrained(require_asset(smollm2_gguf))


@pytest.mark.assets
def test_smollm2_template_labels_the_answers_and_im_end(smollm2_tokenizer):
    tok = smollm2_tokenizer
    rows = fixed_format_tasks(6, seed=0)
    conversations = [*CONVERSATIONS, *([{"role": "user", "content": r["prompt"]},
                                        {"role": "assistant", "content": r["response"]}] for r in rows)]
    for conversation in conversations:
        ids, labels = conversation_tokens(tok, conversation)
        check_labels(tok, conversation, ids, labels, "<|im_end|>")
        # ChatML's pieces meet at special tokens, so they tokenize as the whole text does
        assert ids == tok.encode(apply_chat_template(tok, conversation, False), add_special_tokens=False)
        # the default system prompt is there, before the first labelled token
        first = next(j for j, label in enumerate(labels) if label != -100)
        assert ("You are a helpful AI assistant named SmolLM" in tok.decode(ids[:first])) == (
            conversation[0]["role"] != "system")
