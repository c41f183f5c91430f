"""`run_generate` and the `run_chat` loop: streamed text, commands, history, context overflow, Ctrl-C.

The model is a tiny random LLaMA saved as an lmforge folder with a word-level tokenizer (so its answers
are words), whose end-of-turn tokens can never win the argmax: answers run to `max_tokens`. The loop
runs in-process on a text stream, and in a child process on a real pseudo-terminal (its controlling
terminal, so \\x03 is a SIGINT and \\x04 an end of file), where the answers must be exactly what the
engine gives for the conversation written out by hand.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _assets import require_asset
from tokenizers import AddedToken, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from lmforge.generate import engine
from lmforge.generate.chat import CHATML, apply_chat_template
from lmforge.generate.console import (
    OptionError,
    chat_params,
    load,
    run_chat,
    run_generate,
    sampling_params,
)
from lmforge.interop.native import save_model
from lmforge.models import build_model, get_preset
from lmforge.tokenizers import Tokenizer

WORDS = ("the a cat dog sat ran on under mat tree and but so we you they see saw big small red green paris france "
         "capital of is was hello hi how are today story tell me pirate speak like terse").split()
SPECIALS = ("<unk>", "<pad>", "<|im_start|>", "<|im_end|>")
GREEDY = dict(temperature=0.0, top_p=1.0)
ENGINE_STREAM = engine.stream  # the tests below record (or interrupt) engine.stream; `answer` uses the real one



def save_chat_model(folder: Path, max_seq_len: int = 4096) -> Path:
    """A random 2-layer LLaMA and a word-level tokenizer in one lmforge folder; no special token is ever greedy."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS, "user", "assistant", "system"])}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer = Tokenizer(backend, {"unk": "<unk>", "pad": "<pad>", "eos": "<|im_end|>"})
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=2, d_ff=64, max_seq_len=max_seq_len))
    with torch.no_grad():  # logit 0 for the special tokens, below the best of ~40 random logits
        model.lm_head.proj.weight[sorted(vocab[t] for t in SPECIALS)] = 0.0
    save_model(model, folder)
    tokenizer.save(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_chat_model(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture(scope="module")
def loaded(folder):
    return load(str(folder))


def answer(model, tokenizer, messages, max_tokens: int) -> str:
    """What the engine answers to `messages` (greedy), written out without the chat loop."""
    ids = tokenizer.encode(apply_chat_template(tokenizer, messages), add_special_tokens=False)
    params = chat_params(sampling_params(max_tokens=max_tokens, **GREEDY), tokenizer)
    return "".join(event.text for event in ENGINE_STREAM(model, tokenizer, ids, params))


class Recorder(io.StringIO):
    """A text stream that logs its writes and flushes."""

    def __init__(self):
        super().__init__()
        self.log: list[str] = []

    def write(self, text):
        self.log.append(text)
        return super().write(text)

    def flush(self):
        self.log.append("<flush>")


@pytest.fixture
def prompts(monkeypatch):
    """The (prompt ids, max_tokens) of every `engine.stream` call; the calls go on to the engine."""
    seen = []

    def recording(model, tokenizer, ids, params, compile=False):
        seen.append((list(ids), params.max_tokens))
        return ENGINE_STREAM(model, tokenizer, ids, params, compile=compile)

    monkeypatch.setattr(engine, "stream", recording)
    return seen


# ------------------------------------------------------------------------------------------ generate


def test_run_generate_streams_each_token_as_it_comes(loaded):
    model, tokenizer = loaded
    out = Recorder()
    text = run_generate(model, tokenizer, "tell me a story", sampling_params(max_tokens=12, **GREEDY), out=out)
    ids = torch.tensor([tokenizer.encode("tell me a story")])
    reference = engine.generate(model, ids, max_new_tokens=12)[0].tolist()  # the batch loop, not the stream
    assert text.split() == [tokenizer.id_to_token(i) for i in reference]
    assert out.getvalue() == text + "\n"
    words = [w for w in out.log if w not in ("<flush>", "\n")]
    assert len(words) == 12 and all(out.log[2 * i + 1] == "<flush>" for i in range(12))  # one write + flush a token


def test_run_generate_compiled_writes_the_same_text(loaded):
    """`--compile true`: the decode forward under torch.compile streams the same greedy text."""
    model, tokenizer = loaded
    plain = run_generate(model, tokenizer, "tell me a story", sampling_params(max_tokens=8, **GREEDY), out=Recorder())
    compiled = run_generate(model, tokenizer, "tell me a story", sampling_params(max_tokens=8, **GREEDY),
                            out=Recorder(), compile=True)
    assert compiled == plain


def test_run_generate_with_chat_wraps_the_prompt_in_the_template(loaded, prompts):
    model, tokenizer = loaded
    text = run_generate(model, tokenizer, "hello", sampling_params(max_tokens=5, **GREEDY), chat=True,
                        system="be terse", out=io.StringIO())
    messages = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello"}]
    assert prompts[0][0] == tokenizer.encode(apply_chat_template(CHATML, messages), add_special_tokens=False)
    assert text == answer(model, tokenizer, messages, 5)


def test_run_generate_refuses_what_cannot_work(loaded):
    model, tokenizer = loaded
    with pytest.raises(OptionError, match=r"max_tokens=5000: .* context of 4096 tokens; ask for at most 4093"):
        run_generate(model, tokenizer, "the cat sat", sampling_params(max_tokens=5000), out=io.StringIO())
    with pytest.raises(OptionError, match="system is a chat option"):
        run_generate(model, tokenizer, "hi", sampling_params(), system="x", out=io.StringIO())
    with pytest.raises(OptionError, match="prompt is empty"):
        run_generate(model, tokenizer, "", sampling_params(), out=io.StringIO())


def test_ctrl_c_ends_generate_with_status_130_and_no_traceback(loaded, monkeypatch):
    model, tokenizer = loaded

    def interrupted(model, tokenizer, ids, params, compile=False):
        for i, event in enumerate(ENGINE_STREAM(model, tokenizer, ids, params)):
            if i == 3:
                raise KeyboardInterrupt
            yield event

    monkeypatch.setattr(engine, "stream", interrupted)
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        run_generate(model, tokenizer, "the cat", sampling_params(max_tokens=9, **GREEDY), out=out)
    assert exit_.value.code == 130 and len(out.getvalue().split()) == 3 and out.getvalue().endswith("\n")


def test_sampling_params_name_every_bad_flag():
    with pytest.raises(OptionError) as err:
        sampling_params(temperature=-1, top_p=2, max_tokens=0)
    assert all(name in str(err.value) for name in ("temperature=-1", "top_p=2", "max_tokens=0"))
    assert sampling_params(stop="User:").stop == ("User:",)
    assert sampling_params(stop=["a", "b"]).stop == ("a", "b")


def test_chat_params_stop_at_the_templates_end_of_turn(loaded):
    model, tokenizer = loaded
    params = chat_params(sampling_params(stop="x"), tokenizer)
    assert params.stop == ("x",) and params.stop_token_ids == (tokenizer.token_to_id("<|im_end|>"),)
    plain = Tokenizer(Backend(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>")), {"unk": "<unk>"})
    params = chat_params(sampling_params(), plain)  # ChatML without its tokens: the model writes the marker as text
    assert params.stop == ("<|im_end|>",) and params.stop_token_ids == ()


# ---------------------------------------------------------------------------------------- chat loop


def test_the_chat_loop_keeps_the_history_and_runs_the_commands(loaded, prompts):
    model, tokenizer = loaded
    out = io.StringIO()
    lines = "hello\n\n/system speak like a pirate\n  how are you\n/system\n/help\n/nope\n/reset\nhello\n/exit\nhi\n"
    conversation = run_chat(model, tokenizer, sampling_params(max_tokens=6, **GREEDY), system="be terse",
                            stdin=io.StringIO(lines), out=out)
    terse, pirate = {"role": "system", "content": "be terse"}, {"role": "system", "content": "speak like a pirate"}
    first = [terse, {"role": "user", "content": "hello"}]
    a1 = answer(model, tokenizer, first, 6)
    second = [pirate, first[1], {"role": "assistant", "content": a1}, {"role": "user", "content": "  how are you"}]
    a2 = answer(model, tokenizer, second, 6)
    third = [pirate, {"role": "user", "content": "hello"}]
    a3 = answer(model, tokenizer, third, 6)
    expected = [tokenizer.encode(apply_chat_template(tokenizer, m), add_special_tokens=False)
                for m in (first, second, third)]
    assert [ids for ids, _ in prompts] == expected  # "hi" after /exit is never read
    assert conversation.messages == [*third, {"role": "assistant", "content": a3}]
    text = out.getvalue()
    for part in (a1, a2, "[system prompt set]", "[system prompt: speak like a pirate]", "[unknown command /nope",
                 "/reset forgets", "[conversation cleared]", "[the answer was cut at 6 tokens: --max_tokens]"):
        assert part in text
    assert text.count(">>> ") == 10


def test_an_overflowing_conversation_drops_its_oldest_turns_and_says_so(tmp_path, prompts):
    model, tokenizer = load(str(save_chat_model(tmp_path / "small", max_seq_len=64)))
    out = io.StringIO()
    questions = [f"tell me a story of the {w} cat" for w in ("big", "small", "red", "green", "big", "small")]
    conversation = run_chat(model, tokenizer, sampling_params(max_tokens=8, **GREEDY), system="be terse",
                            stdin=io.StringIO("\n".join(questions) + "\n"), out=out)
    assert len(prompts) == len(questions)
    assert all(len(ids) + max_tokens <= 64 and max_tokens == 8 for ids, max_tokens in prompts)
    assert "[the conversation outgrew the model's context of 64 tokens: dropped the 2 oldest messages]" in out.getvalue()
    kept = conversation.messages
    assert kept[0] == {"role": "system", "content": "be terse"} and kept[1]["role"] == "user"
    assert kept[-2]["content"] == questions[-1] and 2 < len(kept) < 2 * len(questions)


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(tmp_path, prompts):
    model, tokenizer = load(str(save_chat_model(tmp_path / "small", max_seq_len=64)))
    out = io.StringIO()
    conversation = run_chat(model, tokenizer, sampling_params(max_tokens=8, **GREEDY),
                            stdin=io.StringIO("the cat " * 40 + "\nhello\n"), out=out)
    assert "does not fit the model's context of 64 tokens" in out.getvalue()
    assert [m["content"] for m in conversation.messages if m["role"] == "user"] == ["hello"] and len(prompts) == 1


def test_ctrl_c_during_an_answer_keeps_what_was_shown_and_the_chat_goes_on(loaded, monkeypatch):
    model, tokenizer = loaded
    calls = []

    def interrupted(model, tokenizer, ids, params, compile=False):  # the first answer is interrupted after three tokens
        calls.append(ids)
        for i, event in enumerate(ENGINE_STREAM(model, tokenizer, ids, params)):
            if len(calls) == 1 and i == 3:
                raise KeyboardInterrupt
            yield event

    monkeypatch.setattr(engine, "stream", interrupted)
    out = io.StringIO()
    conversation = run_chat(model, tokenizer, sampling_params(max_tokens=6, **GREEDY),
                            stdin=io.StringIO("tell me a story\nhello\n"), out=out)
    partial = answer(model, tokenizer, [{"role": "user", "content": "tell me a story"}], 3)
    roles = [(m["role"], m["content"]) for m in conversation.messages]
    assert roles[:3] == [("user", "tell me a story"), ("assistant", partial), ("user", "hello")]
    assert len(roles) == 4 and roles[3][1] == answer(model, tokenizer, conversation.messages[:3], 6)
    assert partial + "\n[stopped]\n>>> " in out.getvalue()


def test_ctrl_c_at_the_prompt_gives_a_fresh_line(loaded):
    model, tokenizer = loaded

    class Keyboard(io.StringIO):
        interrupts = 1

        def readline(self, *args):
            if self.interrupts:
                self.interrupts -= 1
                raise KeyboardInterrupt
            return super().readline(*args)

    out = io.StringIO()
    conversation = run_chat(model, tokenizer, sampling_params(max_tokens=2, **GREEDY), stdin=Keyboard("hi\n"),
                            out=out)
    assert out.getvalue().startswith(">>> \n>>> ") and len(conversation.messages) == 2


# ------------------------------------------------------------------------------- a real terminal


class Terminal:
    """A child process on a pseudo-terminal that is its controlling terminal (as in a shell)."""

    def __init__(self, argv: list[str], timeout: float = 20.0):
        import pty

        env = {**os.environ, "TERM": "dumb", "PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}
        self.deadline = time.monotonic() + timeout  # for the whole session
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a wide window (no wrapped lines), then the program
            try:
                import fcntl
                import struct
                import termios

                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
                # As a shell starts a job: SIGINT unblocked and at its default, whatever this (pytest) process
                # inherited or set (a blocked or ignored SIGINT survives exec, and Ctrl-C would never arrive).
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.transcript = b""
        self.read_to = 0

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, needle: bytes) -> bytes:
        """Read until `needle` appears (after what was already matched); the text before it."""
        while (at := self.transcript.find(needle, self.read_to)) == -1:
            left = self.deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                self.close()
                pytest.fail(f"no {needle!r} from the child; transcript:\n{self.transcript.decode(errors='replace')}")
        before, self.read_to = self.transcript[self.read_to:at], at + len(needle)
        return before

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def wait(self) -> int:
        """The exit status, once the child ends (its output read to the end)."""
        while self._read(max(0.0, self.deadline - time.monotonic())):
            pass
        while time.monotonic() < self.deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        self.close()
        pytest.fail(f"the child did not exit; transcript:\n{self.transcript.decode(errors='replace')}")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.transcript += data
        return bool(data)


def on_terminal(text: str) -> bytes:
    """`text` as the terminal shows it (newlines become CR LF)."""
    return text.replace("\n", "\r\n").encode()


def chat_terminal(folder: Path, *flags: str) -> Terminal:
    return Terminal([sys.executable, "-m", "lmforge.cli", "chat", str(folder), "--threads", "1", *flags])


def test_chat_in_a_real_terminal(folder, loaded):
    model, tokenizer = loaded
    term = chat_terminal(folder, "--system", "be terse", "--max_tokens", "6", "--temperature", "0")
    try:
        term.expect(b"Ctrl-D quits.")  # the banner
        terse, pirate = {"role": "system", "content": "be terse"}, {"role": "system", "content": "speak like a pirate"}
        hello = {"role": "user", "content": "hello"}
        a1 = answer(model, tokenizer, [terse, hello], 6)
        a2 = answer(model, tokenizer, [pirate, hello, {"role": "assistant", "content": a1},
                                       {"role": "user", "content": "how are you"}], 6)
        a3 = answer(model, tokenizer, [pirate, hello], 6)
        for line, reply in ((b"hello", a1), (b"/system speak like a pirate", None), (b"how are you", a2),
                            (b"/reset", None)):
            term.expect(b">>> ")
            term.send(line + b"\r")
            if reply is None:
                term.expect(b"[system prompt set]" if line.startswith(b"/system") else b"[conversation cleared]")
            else:
                assert term.expect(b"[the answer was cut at 6 tokens").endswith(on_terminal(reply + "\n"))
        term.expect(b">>> ")
        term.send(b"/system you are a cat ")
        time.sleep(0.2)
        term.send(b"\x03")  # Ctrl-C at the prompt: the line is gone (else "hello" would end the system prompt)
        term.expect(b">>> ")
        term.send(b"hello\r")
        shown = term.expect(b"[the answer was cut at 6 tokens")
        assert shown.endswith(on_terminal(a3 + "\n")) and b"[system prompt set]" not in shown
        term.expect(b">>> ")
        term.send(b"\x04")  # Ctrl-D
        assert term.wait() == 0
    finally:
        term.close()


def test_ctrl_c_stops_a_long_answer_not_the_program(folder, loaded):
    model, tokenizer = loaded
    story = [{"role": "user", "content": "tell me a story"}]
    start = answer(model, tokenizer, story, 4)  # an answer runs to max_tokens: 2000 tokens, seconds
    term = chat_terminal(folder, "--max_tokens", "2000", "--temperature", "0")
    try:
        for question, opening in ((b"tell me a story", on_terminal(start)), (b"hello", b"hello\r\n")):
            term.expect(b">>> ")
            term.send(question + b"\r")
            term.expect(opening)  # the answer is streaming...
            if question == b"hello":
                while len(term.transcript) < term.read_to + 20:  # ... a few words of it
                    term._read(1.0)
            term.send(b"\x03")
            shown = term.expect(b"[stopped]")
            assert b">>> " not in shown and len(shown) > 0 and term.alive()
            assert b"the answer was cut" not in shown
        term.expect(b">>> ")
        term.send(b"\x04")
        assert term.wait() == 0
        assert b"Traceback" not in term.transcript and term.transcript.count(b"[stopped]") == 2
    finally:
        term.close()


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france():
    from lmforge.assets import smollm2_gguf

    require_asset(smollm2_gguf)
    run = subprocess.run([sys.executable, "-m", "lmforge.cli", "chat", "smollm2-135m-instruct", "--temperature", "0",
                          "--max_tokens", "32"], input="What is the capital of France?\n", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Paris" in run.stdout
