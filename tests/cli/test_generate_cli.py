"""`lmforge generate` and `lmforge chat` through the real entry point, on a tiny Hugging Face GPT-2 folder.

The greedy text must be what transformers' own `generate` gives for the same checkpoint; `--seed`
reproduces a sampled text; `--stop` cuts it; bad input is one line naming the flag, exit status 2.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
import transformers as T

import lmforge.cli as cli
from lmforge.cli.chat import chat
from lmforge.cli.generate import generate
from lmforge.tokenizers import train_tokenizer

ERRORS = [("lmforge.generate.console", "OptionError"), ("lmforge.generate.chat", "ChatError")]
PROMPT = "the cat sat on"


@pytest.fixture
def main():
    return cli.main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random GPT-2 (Hugging Face format) with a byte-level BPE tokenizer beside it; and the transformers model."""
    root = tmp_path_factory.mktemp("gen")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(["the cat sat on the mat and the dog ran far away, so we went home."] * 40))
    tokenizer = train_tokenizer([corpus], kind="bpe", vocab_size=300, special_tokens="gpt", show_progress=False)
    torch.manual_seed(0)
    eos = tokenizer.eos_id
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4,
                                        n_positions=256, bos_token_id=eos, eos_token_id=eos)).eval()
    hf.save_pretrained(root / "model")
    tokenizer.save(root / "model")
    return root / "model", hf, tokenizer


def _run(main, capsys, *argv) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_prints_what_transformers_generates(main, capsys, folder):
    path, hf, tokenizer = folder
    code, out, err = _run(main, capsys, "generate", str(path), PROMPT, "--max_tokens", "12", "--temperature", "0",
                          "--threads", "1")
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        new = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pad_token_id=tokenizer.eos_id)[0, ids.shape[1]:]
    assert code == 0 and err == ""
    assert out == tokenizer.decode(new.tolist()) + "\n" and len(out) > 1


def test_seed_reproduces_a_sampled_text(main, capsys, folder):
    path = str(folder[0])
    texts = [_run(main, capsys, "generate", path, PROMPT, "--max_tokens", "16", "--temperature", "1", "--top_p", "1",
                  "--seed", seed)[1] for seed in ("3", "3", "4")]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_stop_strings_cut_the_text(main, capsys, folder):
    path = str(folder[0])
    sampled = ["generate", path, PROMPT, "--max_tokens", "24", "--temperature", "1", "--top_p", "1", "--seed", "0"]
    full = _run(main, capsys, *sampled)[1].rstrip("\n")
    stop = full[len(full) // 2:len(full) // 2 + 3]  # across token boundaries, most likely
    assert len(stop) == 3 and full.index(stop) > 0
    code, out, _ = _run(main, capsys, *sampled, "--stop", stop)
    assert code == 0 and out == full[:full.index(stop)] + "\n"
    _, out, _ = _run(main, capsys, *sampled, "--stop", f'["never there", "{stop}"]')
    assert out == full[:full.index(stop)] + "\n"


def test_chat_mode_and_bfloat16_run(main, capsys, folder):
    path = str(folder[0])
    code, out, err = _run(main, capsys, "generate", path, "hello", "--chat", "true", "--system", "be terse",
                          "--max_tokens", "4", "--dtype", "bfloat16", "--temperature", "0")
    assert code == 0 and err == "" and out.endswith("\n")


def test_chat_reads_questions_from_stdin(main, capsys, folder, monkeypatch):
    path = str(folder[0])
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/system be terse\nhow are you\n"))
    code, out, err = _run(main, capsys, "chat", path, "--max_tokens", "4", "--temperature", "0")
    assert code == 0 and err == ""
    assert out.count(">>> ") == 4 and "[system prompt set]" in out and out.count("[the answer was cut at 4") == 2


@pytest.mark.parametrize(("argv", "named"), [
    (["generate", "{tmp}/no-such-model", "hi"], ["no-such-model", "not a checkpoint folder"]),
    (["generate", "{model}", "hi", "--temperature", "-1"], ["temperature=-1"]),
    (["generate", "{model}", "hi", "--top_p", "2"], ["top_p=2"]),
    (["generate", "{model}", "hi", "--top_p", "2", "--max_tokens", "0"], ["top_p=2", "max_tokens=0"]),
    (["generate", "{model}", "hi", "--max_tokens", "100000"], ["max_tokens=100000", "context of 256 tokens"]),
    (["generate", "{model}", "hi", "--system", "x"], ["--chat true"]),
    (["generate", "{model}", "hi", "--threads", "0"], ["threads=0"]),
    (["generate", "{model}", "hi", "--dtype", "float16"], ["dtype", "float16"]),
    (["generate", "{model}", "hi", "--temprature", "1"], ["temprature"]),
    (["chat", "{model}", "--temperature", "-1"], ["temperature=-1"]),
    (["chat", "{tmp}"], ["config.json"]),  # a folder, but no checkpoint in it
])
def test_bad_input_is_one_line_naming_the_flag_and_exit_status_2(main, capsys, folder, tmp_path, argv, named):
    argv = [a.format(tmp=tmp_path, model=folder[0]) for a in argv]
    code, out, err = _run(main, capsys, *argv)
    assert code == 2 and out == ""
    first = err.strip().splitlines()[0]
    assert first.startswith("lmforge: error: ") and len(err.strip().splitlines()) <= 2  # (+ a "see --help" line)
    assert all(name in first for name in named), first
    assert "Traceback" not in err


def test_help_does_not_import_torch():
    code = ("import sys, lmforge.cli as cli\n"
            "for verb in ('generate', 'chat'):\n"
            "    try:\n"
            "        cli.main([verb, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'torch' not in sys.modules, 'the help imported torch'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--max_tokens" in run.stdout and "--system" in run.stdout and "--repetition_penalty" in run.stdout


def test_the_verbs_and_their_errors_are_registered():
    """The verbs are in VERBS and their error types in USER_ERRORS (else bad flags give tracebacks)."""
    assert cli.VERBS.get("generate") is generate and cli.VERBS.get("chat") is chat
    assert all(error in cli.USER_ERRORS for error in ERRORS)
