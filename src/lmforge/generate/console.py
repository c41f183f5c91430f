"""The terminal side of `lmforge generate` and `lmforge chat`: load a model, stream text to stdout, the chat loop.

`run_generate` streams the completion of one prompt. `run_chat` is the interactive loop: each answer
streams as it is generated; `/system TEXT` sets the system prompt, `/reset` forgets the turns, `/exit`
or Ctrl-D quits; Ctrl-C during an answer stops that answer (what was shown stays in the conversation)
and Ctrl-C at the prompt clears the line. When the conversation no longer fits the model's context with
room for an answer, the oldest turns are dropped, and the loop says so.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from lmforge.generate import engine
from lmforge.generate.chat import ChatError, Conversation, template_of
from lmforge.generate.sampling import SamplingParams

if TYPE_CHECKING:
    from lmforge.models.model import CausalLM
    from lmforge.tokenizers import Tokenizer

DTYPES = ("float32", "bfloat16")
QUANTIZE = ("int8", "q8_0", "int4")  # the schemes of --quantize (lmforge.compress.quantize)
COMMANDS = "/system TEXT sets the system prompt, /reset forgets the conversation, /exit quits"


class OptionError(ValueError):
    """A generation option (a command-line flag) has a bad value; the message names it."""


def sampling_params(max_tokens: int = 64, temperature: float = 0.7, top_p: float = 0.9, top_k: int = 0,
                    min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
                    stop: str | Sequence[str] | None = None) -> SamplingParams:
    """The sampling parameters of the command-line flags, checked (every bad flag named in one `OptionError`)."""
    stop = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                            repetition_penalty=repetition_penalty, seed=seed, stop=stop)
    try:
        params.validate()
    except ValueError as err:
        raise OptionError(str(err)) from None
    return params


def load(name: str, dtype: str = "float32", threads: int | None = None,
         quantize: str | None = None) -> tuple[CausalLM, Tokenizer]:
    """The causal LM (projections fused for inference) and the tokenizer of a named model, an HF or lmforge folder.

    `quantize` (int8, q8_0, int4) quantizes the blocks' Linear layers after loading (from the f32 weights;
    int4 in symmetric groups of 32); a quantized lmforge folder loads as it was saved without it.
    """
    import torch

    from lmforge.interop.native import load_any
    from lmforge.tokenizers import Tokenizer

    if dtype not in DTYPES:
        raise OptionError(f"dtype={dtype!r} (allowed: {', '.join(DTYPES)})")
    if quantize is not None and quantize not in QUANTIZE:
        raise OptionError(f"quantize={quantize!r} (allowed: {', '.join(QUANTIZE)})")
    if threads is not None:
        if threads < 1:
            raise OptionError(f"threads={threads} (allowed: an integer >= 1)")
        torch.set_num_threads(threads)
    model = load_any(name, dtype=torch.float32 if quantize else getattr(torch, dtype), task="causal-lm")
    if quantize:
        from lmforge.compress.quantize import QuantConfig, is_quantized, quantize_model

        if is_quantized(model):
            raise OptionError(f"quantize={quantize}: {name} is quantized already; leave out --quantize")
        quantize_model(model, QuantConfig(scheme=quantize))
        model = model.to(getattr(torch, dtype))
    return model.eval().fuse_projections(), Tokenizer.from_pretrained(name)


def context_length(model: CausalLM) -> int:
    """Tokens of context the model takes: prompt and answer together."""
    return model.cfg.max_seq_len


def chat_params(params: SamplingParams, tokenizer: Tokenizer) -> SamplingParams:
    """`params` that also stop at the end-of-turn markers the chat template writes (`<|im_end|>`, ...).

    A marker the vocabulary holds is a stop id; one it lacks (ChatML on a tokenizer without the ChatML
    tokens) is a stop string, since the model then writes it as text.
    """
    template = template_of(tokenizer)
    markers = [m for m in engine.END_OF_TURN_TOKENS if m in template]
    ids = [tokenizer.token_to_id(m) for m in markers]
    strings = tuple(m for m, i in zip(markers, ids) if i is None and m not in params.stop)
    ids = tuple(i for i in ids if i is not None and i not in params.stop_token_ids)
    return dataclasses.replace(params, stop=params.stop + strings, stop_token_ids=params.stop_token_ids + ids)


def run_generate(model: CausalLM, tokenizer: Tokenizer, prompt: str, params: SamplingParams, chat: bool = False,
                 system: str | None = None, out: TextIO | None = None, compile: bool = False) -> str:
    """Stream the completion of `prompt` to `out` (stdout) as it is generated, then a newline; its text.

    With `chat`, the prompt is one user message (after the `system` prompt, when given) in the tokenizer's
    chat template; without, it is encoded as it is (with the tokenizer's bos, if it adds one). Ctrl-C ends
    the program with status 130, as a shell does, and leaves the text shown.
    """
    out = out or sys.stdout
    if system is not None and not chat:
        raise OptionError("system is a chat option: add chat=true (--chat true) to use a system prompt")
    if chat:
        conversation = Conversation(system)
        conversation.add_user(prompt)
        ids = tokenizer.encode(conversation.render(tokenizer), add_special_tokens=False)
        params = chat_params(params, tokenizer)
    else:
        ids = tokenizer.encode(prompt)
        if not ids and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id]  # an empty prompt: generate from the start of a document
    if not ids:
        raise OptionError("the prompt is empty (and the tokenizer has no bos token to start from)")
    context = context_length(model)
    if len(ids) + params.max_tokens > context:
        raise OptionError(f"max_tokens={params.max_tokens}: the prompt ({len(ids)} tokens) and the answer must fit "
                          f"the model's context of {context} tokens; ask for at most {context - len(ids)}")
    parts: list[str] = []
    try:
        _stream(model, tokenizer, ids, params, out, parts, compile)
    except KeyboardInterrupt:  # Ctrl-C: the text so far stays on the screen, without a traceback
        out.write("\n")
        out.flush()
        raise SystemExit(130) from None
    out.write("\n")
    out.flush()
    return "".join(parts)


def run_chat(model: CausalLM, tokenizer: Tokenizer, params: SamplingParams, system: str | None = None,
             stdin: TextIO | None = None, out: TextIO | None = None, compile: bool = False) -> Conversation:
    """The interactive chat loop (see the module docstring) until `/exit` or end of input; the conversation.

    Reads lines with `input()` (with line editing on a terminal), or from `stdin` when given.
    """
    out = out or sys.stdout
    read = _line_reader(stdin, out)
    conversation = Conversation(system)
    params = chat_params(params, tokenizer)
    context = context_length(model)
    if stdin is None and sys.stdin.isatty():
        note = "" if getattr(tokenizer, "chat_template", None) else "; no chat template in the tokenizer: ChatML"
        _say(out, f"context {context} tokens{note}. {COMMANDS}; Ctrl-C stops an answer, Ctrl-D quits.")
    while True:
        try:
            line = read(">>> ")
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line
            out.write("\n")
            continue
        except EOFError:  # Ctrl-D
            out.write("\n")
            out.flush()
            return conversation
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not _command(text, conversation, out):
                return conversation
            continue
        conversation.add_user(line.rstrip("\n"))
        try:
            _answer(model, tokenizer, conversation, params, context, out, compile)
        except KeyboardInterrupt:  # before the answer started (an answer keeps what it showed)
            if conversation.history and conversation.history[-1]["role"] == "user":
                conversation.history.pop()
            _say(out, "\n[stopped]")


def _command(text: str, conversation: Conversation, out: TextIO) -> bool:
    """Run a /command; False when it asks to quit."""
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/reset":
        conversation.reset()
        _say(out, "[conversation cleared]")
    elif name == "/system" and arg:
        conversation.system = arg
        _say(out, "[system prompt set]")
    elif name == "/system":
        _say(out, f"[system prompt: {conversation.system}]" if conversation.system else "[no system prompt]")
    else:
        _say(out, f"[{COMMANDS}]" if name == "/help" else f"[unknown command {name}: {COMMANDS}]")
    return True


def _answer(model: CausalLM, tokenizer: Tokenizer, conversation: Conversation, params: SamplingParams,
            context: int, out: TextIO, compile: bool = False) -> None:
    """Stream the answer to the conversation's last user message and append it to the conversation."""
    try:
        fitted = fit_conversation(conversation, tokenizer, context, params.max_tokens)
    except ChatError as err:  # e.g. a template that insists on alternating roles
        conversation.history.pop()
        _say(out, f"[{err}]")
        return
    if fitted is None:
        conversation.history.pop()
        _say(out, f"[that message does not fit the model's context of {context} tokens with room for an answer; "
                  "say it in fewer words]")
        return
    ids, dropped, room = fitted
    if dropped:
        _say(out, f"[the conversation outgrew the model's context of {context} tokens: dropped the {dropped} "
                  f"oldest message{'s' * (dropped > 1)}]")
    parts: list[str] = []
    try:
        reason = _stream(model, tokenizer, ids, dataclasses.replace(params, max_tokens=room), out, parts, compile)
    except KeyboardInterrupt:
        conversation.add_assistant("".join(parts))
        _say(out, "\n[stopped]")
        return
    conversation.add_assistant("".join(parts))
    out.write("\n")
    if reason == "length":
        why = "--max_tokens" if room == params.max_tokens else "the end of the model's context"
        _say(out, f"[the answer was cut at {room} tokens: {why}]")
    out.flush()


def fit_conversation(conversation: Conversation, tokenizer: Tokenizer, context: int,
                     max_tokens: int) -> tuple[list[int], int, int] | None:
    """The prompt ids of the conversation, dropping its oldest turns until an answer has room.

    Room is `max_tokens`, or half the context when that is less. Returns (ids, messages dropped, tokens left
    for the answer), or None when the last user message alone does not leave that room.
    """
    reserve = max(1, min(max_tokens, context // 2))
    dropped = 0
    while True:
        ids = tokenizer.encode(conversation.render(tokenizer), add_special_tokens=False)
        if len(ids) + reserve <= context:
            return ids, dropped, min(max_tokens, context - len(ids))
        removed = conversation.drop_oldest_turn()
        if not removed:
            return None
        dropped += removed


def _stream(model: CausalLM, tokenizer: Tokenizer, ids: list[int], params: SamplingParams, out: TextIO,
            parts: list[str], compile: bool = False) -> str | None:
    """Write each text delta as it comes (appending it to `parts`, which survives a Ctrl-C); the finish reason."""
    events = engine.stream(model, tokenizer, ids, params, compile=compile)  # compile: see engine.compile_decode
    reason = None
    try:
        for event in events:
            if event.text:
                parts.append(event.text)
                out.write(event.text)
                out.flush()
            reason = event.finish_reason
    finally:
        if hasattr(events, "close"):  # a generator: free its cache now, also after a Ctrl-C
            events.close()
    return reason


def _say(out: TextIO, message: str) -> None:
    out.write(message + "\n")
    out.flush()


def _line_reader(stdin: TextIO | None, out: TextIO) -> Callable[[str], str]:
    """`input`, with readline's line editing and history on a terminal; or a reader of `stdin`'s lines."""
    if stdin is None:
        if sys.stdin.isatty():
            import readline  # noqa: F401  (importing it gives input() line editing)
        return input

    def read(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line

    return read
