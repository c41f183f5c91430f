"""The lm-eval adapter (`lmforge.evaluate.harness`) against lm-eval's own `hf` backend, lmforge's scorer and by hand.

Fast tests use a tiny random LLaMA over a BPE tokenizer trained here on the synthetic items; the slow ones
run SmolLM2-135M-Instruct through lm-eval (adapter vs `hf` backend vs `lmforge.evaluate.choice`). Nothing
reaches a hub (tests/conftest.py sets HF_HUB_OFFLINE; lm-eval's datasets cache lies in the task folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from _assets import require_asset
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from lmforge.data import synthetic_mc
from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.harness import LMForgeLM, main, write_tasks

VOCAB = 400
WINDOW = 48  # the tiny model's context: the texts (50-100 tokens) take two or three rolling windows


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Text to train the tiny tokenizers on: the synthetic questions, choices and paragraphs."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    items = synthetic_mc.generate(300, seed=11)
    lines = [item["query"] + " " + " ".join(item["choices"]) for item in items] + synthetic_mc.paragraphs(100, 11)
    path.write_text("\n\n".join(lines), encoding="utf-8")
    return path


def _tokenizer(corpus: Path, preset: str):
    from lmforge.tokenizers.train import train_tokenizer

    tok = train_tokenizer([corpus], kind="bpe", vocab_size=VOCAB, special_tokens=preset, show_progress=False)
    assert tok.vocab_size == VOCAB
    return tok


@pytest.fixture(scope="module")
def chat_tok(corpus):
    """ChatML specials (<|im_start|> bos, <|im_end|> eos), nothing added on encode: as SmolLM2."""
    return _tokenizer(corpus, "chat")


@pytest.fixture(scope="module")
def llama_tok(corpus):
    """LLaMA specials: <s> is prepended on encode, which lm-eval's `hf` backend keeps."""
    return _tokenizer(corpus, "llama")


@pytest.fixture(scope="module")
def tiny_model():
    from lmforge.models import build_model, get_preset

    torch.manual_seed(0)
    cfg = get_preset("llama-tiny", vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96,
                     max_seq_len=WINDOW, init_std=0.2)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("tasks"), n_test=24, n_validation=8, seed=3)


@pytest.fixture(scope="module")
def manager(tasks) -> TaskManager:
    return TaskManager(include_path=str(tasks), include_defaults=False)  # our two tasks only: fast to index


def _evaluate(lm, names, manager, **kwargs) -> dict:
    return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, log_samples=True,
                                   bootstrap_iters=0, **kwargs)


def _resps(results: dict, task: str) -> list[float]:
    """Every log-likelihood lm-eval got for `task`, in document order (one per choice, or per text)."""
    values = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        for responses in sample["resps"]:  # one request per choice; its one response
            response = responses[0]
            values.append(response[0] if isinstance(response, (list, tuple)) else response)
    return values


def _test_items(tasks: Path, split: str = "test") -> list[dict]:
    lines = (tasks / f"lmforge_mc_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# ----------------------------------------------------------------------------------------------- tests

def test_lmforge_is_a_registered_lm_eval_model_next_to_lm_evals_own():
    from lm_eval.api.registry import get_model

    assert get_model("lmforge") is LMForgeLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours first must not hide lm-eval's models


@pytest.mark.parametrize("shots", [0, 2])
def test_mc_accuracy_through_lm_eval_equals_lmforge_multiple_choice(tiny_model, chat_tok, tasks, manager, shots):
    """lm-eval's acc / acc_norm through the adapter = `lmforge.evaluate.choice` on the same items (and shots:
    both draw them from the validation split with seed 1234), per item's log-likelihoods too."""
    from lmforge.evaluate.choice import ChoiceItem, multiple_choice

    results = _evaluate(LMForgeLM(model=tiny_model, tokenizer=chat_tok, batch_size=8), ["lmforge_mc"], manager,
                        num_fewshot=shots)
    got = results["results"]["lmforge_mc"]
    items = [ChoiceItem(r["query"], r["choices"], r["answer"]) for r in _test_items(tasks)]
    pool = [ChoiceItem(r["query"], r["choices"], r["answer"]) for r in _test_items(tasks, "validation")]
    ours = multiple_choice(tiny_model, chat_tok, items, template="{query}", num_fewshot=shots, shots_pool=pool,
                           seed=1234)
    assert len(results["samples"]["lmforge_mc"]) == len(items) == 24
    # the same prompts; float32 sums differ in the last bits when batches are padded differently
    assert _resps(results, "lmforge_mc") == pytest.approx([lp for p in ours["predictions"] for lp in p["logprobs"]],
                                                          rel=1e-6)
    assert got["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert got["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-12)


def test_adapter_equals_lm_evals_hf_backend_on_the_same_weights(tiny_model, llama_tok, tasks, manager, tmp_path):
    """Same tiny LLaMA written as an HF folder: per-request log-likelihoods, accuracy, perplexities, generations."""
    from lm_eval.models.huggingface import HFLM

    from lmforge.interop.hf import save_pretrained

    save_pretrained(tiny_model, tmp_path)
    llama_tok.save(tmp_path)
    hf = HFLM(pretrained=str(tmp_path), device="cpu", dtype="float32", batch_size=4)
    ours = LMForgeLM(model=str(tmp_path), batch_size=4)  # loaded by path, as --model_args model=DIR
    assert ours.max_length == hf.max_length == WINDOW
    names = ["lmforge_mc", "lmforge_text"]
    ref, got = _evaluate(hf, names, manager, limit=12), _evaluate(ours, names, manager, limit=12)
    for task in names:
        assert _resps(got, task) == pytest.approx(_resps(ref, task), rel=1e-5, abs=1e-5)
    assert got["results"]["lmforge_mc"]["acc,none"] == ref["results"]["lmforge_mc"]["acc,none"]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert got["results"]["lmforge_text"][metric] == pytest.approx(ref["results"]["lmforge_text"][metric],
                                                                       rel=1e-5)
    # the texts are longer than the window, and <s> starts each (the hf backend keeps the tokenizer's bos)
    text = json.loads((tasks / "lmforge_text.jsonl").read_text().splitlines()[0])["text"]
    assert len(ours.tok_encode(text)) > WINDOW and ours.tok_encode(text)[0] == llama_tok.bos_id
    requests = [Instance("generate_until", {}, ("Question: What is 3 plus 4?\nAnswer:", {"until": ["\n"],
                                                                                          "max_gen_toks": 12}), 0),
                Instance("generate_until", {}, ("The month after", {"until": ["."], "max_gen_toks": 9}), 0)]
    generated = ours.generate_until(requests)
    assert generated == hf.generate_until(requests) and all(generated)


def test_rolling_loglikelihood_is_the_sum_over_disjoint_windows_by_hand(tiny_model, chat_tok):
    lm = LMForgeLM(model=tiny_model, tokenizer=chat_tok, max_length=16, batch_size=3)
    texts = synthetic_mc.paragraphs(3, seed=5) + ["One cat."]
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), 0) for t in texts])
    for text, value in zip(texts, got):
        ids = chat_tok.encode(text)
        seq, n, size = [chat_tok.bos_id] + ids, len(ids), 16  # seq[t] is predicted from seq[:t]
        total, done = 0.0, 0
        while done < n:  # a window predicts seq[done+1 : end+1] from the (at most) 16 tokens before `end`
            end = min(done + size, n)
            inputs = seq[max(0, end - size):end]
            with torch.no_grad():
                logp = torch.log_softmax(tiny_model(torch.tensor([inputs])).double()[0], -1)
            targets = seq[done + 1:end + 1]
            rows = logp[len(inputs) - len(targets):]
            total += float(rows.gather(1, torch.tensor(targets)[:, None]).sum())
            done = end
        assert n > 16 or text == "One cat."
        assert value == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_generate_until_cuts_at_the_first_until_string_and_at_max_gen_toks(tiny_model, chat_tok):
    from lmforge.generate.engine import generate, stop_ids

    lm = LMForgeLM(model=tiny_model, tokenizer=chat_tok, batch_size=2)
    contexts = ["Question: What is 9 minus 2?\nAnswer:", "After Monday comes", "The opposite of hot is"]
    ends = stop_ids(chat_tok, tiny_model)  # EOS and the end-of-turn tokens end a generation too

    def greedy(context: str, n: int) -> str:  # the reference: n greedy tokens, cut at the first end id
        ids = generate(tiny_model, torch.tensor([chat_tok.encode(context)]), n)[0].tolist()
        return chat_tok.decode(next((ids[:i] for i, t in enumerate(ids) if t in ends), ids))

    full = [greedy(context, 20) for context in contexts]
    assert all(len(text) > 8 for text in full)
    stops = [text[5:7] for text in full]  # strings the greedy text holds (maybe earlier than at 5, too)
    requests = [Instance("generate_until", {}, (c, {"until": [s], "max_gen_toks": 20}), 0)
                for c, s in zip(contexts, stops)]
    requests.append(Instance("generate_until", {}, (contexts[0], {"until": ["\x00"], "max_gen_toks": 20}), 0))
    requests.append(Instance("generate_until", {}, (contexts[1], {"until": [], "max_gen_toks": 3}), 0))
    got = lm.generate_until(requests)
    assert got[:3] == [text[:text.find(s)] for text, s in zip(full, stops)]
    assert got[3] == full[0]  # no stop string met: all max_gen_toks tokens
    assert got[4] == greedy(contexts[1], 3)


def test_loglikelihood_of_an_empty_context_starts_from_the_prefix_token(tiny_model, chat_tok):
    lm = LMForgeLM(model=tiny_model, tokenizer=chat_tok)
    (value, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("", "After Monday comes Tuesday."), 0)])
    ids = [chat_tok.bos_id] + chat_tok.encode("After Monday comes Tuesday.")
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(torch.tensor([ids[:-1]])).double()[0], -1)
    assert value == pytest.approx(float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum()), rel=1e-9)


def test_chat_template_prompt_and_an_open_last_message(tiny_model, chat_tok):
    from lmforge.generate.chat import CHATML

    lm = LMForgeLM(model=tiny_model, tokenizer=chat_tok)
    chat = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]
    assert lm.chat_template(True) == CHATML and lm.chat_template(False) is None
    assert lm.apply_chat_template(chat[:1]) == "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    assert lm.apply_chat_template(chat, add_generation_prompt=False).endswith("<|im_start|>assistant\n4")


def test_bad_model_args_and_gen_kwargs_are_named(tiny_model, chat_tok):
    from lmforge.models import build_model, get_preset

    with pytest.raises(EvaluationError, match="unknown model_args.*temprature"):
        LMForgeLM(model=tiny_model, tokenizer=chat_tok, temprature=0.5)
    with pytest.raises(EvaluationError, match="needs model_args model="):
        LMForgeLM()
    with pytest.raises(EvaluationError, match="needs its tokenizer"):
        LMForgeLM(model=tiny_model)
    with pytest.raises(EvaluationError, match="causal LM"):
        LMForgeLM(model=build_model(get_preset("bert-tiny", vocab_size=VOCAB, n_layers=1)), tokenizer=chat_tok)
    with pytest.raises(EvaluationError, match="batch_size=0"):
        LMForgeLM(model=tiny_model, tokenizer=chat_tok, batch_size=0)
    with pytest.raises(EvaluationError, match="max_length=999"):
        LMForgeLM(model=tiny_model, tokenizer=chat_tok, max_length=999)
    with pytest.raises(EvaluationError, match="dtype='float16'"):
        LMForgeLM(model="smollm2-135m-instruct", dtype="float16")
    lm = LMForgeLM(model=tiny_model, tokenizer=chat_tok, batch_size="auto")
    assert lm.batch_size == 16
    with pytest.raises(EvaluationError, match="num_beams"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"until": ["\n"], "num_beams": 4}), 0)])
    with pytest.raises(EvaluationError, match="max_gen_toks=48 leaves no room"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"max_gen_toks": WINDOW}), 0)])


def test_write_tasks_files_and_bad_texts(tmp_path):
    import yaml

    folder = write_tasks(tmp_path / "t", n_test=30, n_validation=10, seed=7)
    test = [json.loads(x) for x in (folder / "lmforge_mc_test.jsonl").read_text().splitlines()]
    validation = [json.loads(x) for x in (folder / "lmforge_mc_validation.jsonl").read_text().splitlines()]
    assert len(test) == 30 and len(validation) == 10
    assert not {r["query"] for r in test} & {r["query"] for r in validation if r["kind"] != "largest"}
    config = yaml.safe_load((folder / "lmforge_mc.yaml").read_text())
    assert config["fewshot_split"] == "validation" and config["output_type"] == "multiple_choice"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in config["dataset_kwargs"]["data_files"].values())
    texts = [json.loads(x)["text"] for x in (folder / "lmforge_text.jsonl").read_text().splitlines()]
    assert texts == synthetic_mc.paragraphs(8, 7)
    write_tasks(tmp_path / "own", texts=["First text.", "Second one."])
    assert (tmp_path / "own" / "lmforge_text.jsonl").read_text().count("\n") == 2
    with pytest.raises(EvaluationError, match=r"texts\[1\] is empty"):
        write_tasks(tmp_path / "bad", texts=["fine", "  "])
    with pytest.raises(EvaluationError, match="not one string"):
        write_tasks(tmp_path / "bad", texts="one string")


def test_few_shot_examples_come_from_the_validation_split(tiny_model, chat_tok, tasks, manager):
    results = _evaluate(LMForgeLM(model=tiny_model, tokenizer=chat_tok), ["lmforge_mc"], manager, num_fewshot=2,
                        limit=3)
    validation = {json.loads(x)["query"] for x in (tasks / "lmforge_mc_validation.jsonl").read_text().splitlines()}
    for sample in results["samples"]["lmforge_mc"]:
        context = sample["arguments"][0][0]
        shots = context.split("\n\n")[:-1]
        assert len(shots) == 2
        assert all(shot.rsplit(" ", 1)[0] in validation for shot in shots)  # "Question: ...\nAnswer: CHOICE"


def test_main_write_tasks_subcommand(tmp_path, capsys):
    main(["write-tasks", str(tmp_path / "cli"), "--n_test", "5", "--n_validation", "2"])
    assert capsys.readouterr().out.strip() == str((tmp_path / "cli").resolve())
    assert len((tmp_path / "cli" / "lmforge_mc_test.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_items_are_well_formed_seeded_and_distinct(seed):
    items = synthetic_mc.generate(400, seed)
    assert items == synthetic_mc.generate(400, seed) and items != synthetic_mc.generate(400, seed + 2)
    assert {item["kind"] for item in items} == set(synthetic_mc.KINDS)
    for item in items:
        choices = item["choices"]
        assert len(choices) == len(set(choices)) == 4 and 0 <= item["answer"] < 4
        assert item["query"].startswith("Question: ") and item["query"].endswith("\nAnswer:")
    queries = [item["query"] for item in items if item["kind"] != "largest"]
    assert len(queries) == len(set(queries))
    positions = [item["answer"] for item in items]
    assert min(positions.count(p) for p in range(4)) > 60  # the gold position is shuffled
    arithmetic = [item for item in items if item["kind"] in ("addition", "subtraction")]
    for item in arithmetic:  # the gold answer is right
        words = item["query"].split()
        a, b = int(words[3]), int(words[5].rstrip("?"))
        assert int(item["choices"][item["answer"]]) == (a + b if words[4] == "plus" else a - b)
    with pytest.raises(ValueError, match="hold only 7 distinct items"):
        synthetic_mc.generate(8, kinds=("next_day",))


# ---------------------------------------------------------------------------------- SmolLM2 (slow)

@pytest.fixture(scope="module")
def smollm2():
    from lmforge.assets import smollm2_gguf

    return require_asset(smollm2_gguf)


@pytest.fixture(scope="module")
def smol_tasks(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("smol_tasks"), n_test=40, n_validation=8, seed=0)


@pytest.fixture(scope="module")
def smol_lm(smollm2):
    return LMForgeLM(model="smollm2-135m-instruct", batch_size=16, max_length=32)  # 32: texts take 3-4 windows


@pytest.mark.slow
def test_smollm2_mc_accuracy_through_lm_eval_equals_lmforge_multiple_choice(smol_lm, smol_tasks):
    from lmforge.evaluate.choice import ChoiceItem, multiple_choice

    manager = TaskManager(include_path=str(smol_tasks), include_defaults=False)
    lm = LMForgeLM(model=smol_lm.model, tokenizer=smol_lm.tokenizer, batch_size=16)  # full context for questions
    got = _evaluate(lm, ["lmforge_mc"], manager)["results"]["lmforge_mc"]
    items = [ChoiceItem(r["query"], r["choices"], r["answer"]) for r in _test_items(smol_tasks)]
    ours = multiple_choice(smol_lm.model, smol_lm.tokenizer, items, template="{query}")
    print(f"SmolLM2-135M-Instruct on {len(items)} lmforge_mc items: acc {got['acc,none']:.3f} "
          f"acc_norm {got['acc_norm,none']:.3f} (chance 0.25); lmforge: {ours['acc']:.3f} / {ours['acc_norm']:.3f}")
    assert got["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert got["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-12)
    assert got["acc,none"] > 0.25  # above chance


@pytest.mark.slow
def test_smollm2_word_perplexity_equals_lm_evals_hf_backend(smol_lm, smol_tasks, smollm2):
    from lm_eval.models.huggingface import HFLM

    manager = TaskManager(include_path=str(smol_tasks), include_defaults=False)
    hf = HFLM(pretrained=str(smollm2.parent), gguf_file=smollm2.name, device="cpu", dtype="float32",
              batch_size=16, max_length=32)
    ref = _evaluate(hf, ["lmforge_text"], manager)
    got = _evaluate(smol_lm, ["lmforge_text"], manager)
    r, g = ref["results"]["lmforge_text"], got["results"]["lmforge_text"]
    print(f"lmforge_text word perplexity: lmforge {g['word_perplexity,none']:.6f}, hf {r['word_perplexity,none']:.6f}")
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert g[metric] == pytest.approx(r[metric], rel=1e-4)
    assert _resps(got, "lmforge_text") == pytest.approx(_resps(ref, "lmforge_text"), rel=1e-4)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for open_end in (True, False):  # the tokenizer's own chat template, rendered as transformers renders it
        assert smol_lm.apply_chat_template(chat[:1] if open_end else chat, open_end) == \
            hf.apply_chat_template(chat[:1] if open_end else chat, open_end)


@pytest.mark.slow
def test_smollm2_command_line_prints_the_accuracy_table(smol_tasks, smollm2, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmforge.evaluate.harness", "run", "--model", "lmforge", "--model_args",
           "model=smollm2-135m-instruct", "--batch_size", "8", "--tasks", "lmforge_mc", "--include_path",
           str(smol_tasks), "--limit", "4", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lmforge_mc" in done.stdout and "|acc" in done.stdout and "acc_norm" in done.stdout
    assert not any(p.name != "hf_home" for p in tmp_path.iterdir())  # nothing written into the working folder


def test_the_command_line_reports_a_missing_model_in_one_line(tmp_path):
    tasks = write_tasks(tmp_path / "tasks", n_test=2, n_validation=0)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmforge.evaluate.harness", "run", "--model", "lmforge", "--model_args",
           f"model={tmp_path / 'no-such-model'}", "--tasks", "lmforge_mc", "--include_path", str(tasks),
           "--limit", "1", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "lmforge-lm-eval: error:" in done.stderr and "no-such-model" in done.stderr
    assert "Traceback" not in done.stderr
