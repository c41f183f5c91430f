"""Chat templates: a conversation -> the prompt text a chat model was trained on.

A chat model's tokenizer ships a Jinja template (`tokenizer.chat_template`, from the GGUF metadata or
`tokenizer_config.json`) that writes the messages with the model's own markers. We render it as
transformers' `apply_chat_template(..., tokenize=False)` does, so the same conversation gives the same
text: a sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, the `raise_exception`,
`strftime_now`, `dict` and `namespace` globals, a `tojson` filter that does not escape HTML, and the
tokenizer's special tokens as variables (`bos_token`, `eos_token`, ...). A tokenizer without a
template gets ChatML (`CHATML`).

    text = apply_chat_template(tokenizer, [{"role": "user", "content": "Hi!"}])
    ids = tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool")

# transformers' former default template (Qwen, SmolLM2 and many more use it, plus a default system prompt).
CHATML = (
    r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    r" + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatError(ValueError):
    """Chat messages that are not a list of {role, content} dicts, or a chat template that cannot render them."""


# ------------------------------------------------------------------------------------- rendering


def template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template, or ChatML when it has none."""
    return getattr(tokenizer, "chat_template", None) or CHATML


def special_token_variables(tokenizer: Any) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... of a tokenizer: the variables transformers gives every template."""
    return {f"{role}_token": token for role, token in getattr(tokenizer, "special_tokens", {}).items()}


def apply_chat_template(tokenizer_or_template: Any, messages: Sequence[Mapping[str, Any]] | Conversation,
                        add_generation_prompt: bool = True, tools: list[dict] | None = None, **extra: Any) -> str:
    """The prompt text of `messages` in a tokenizer's chat template (or the template given as a string).

    `add_generation_prompt` appends the header of the assistant's answer (`<|im_start|>assistant\\n`);
    `tools` are JSON schemas for templates that describe tools; `extra` are more template variables and
    override the tokenizer's special tokens (`bos_token=...`). None stands for ChatML. Raises `ChatError`
    for malformed messages (naming the index and field) and for templates that fail (`raise_exception`).
    """
    if tokenizer_or_template is None or isinstance(tokenizer_or_template, str):
        template, variables = tokenizer_or_template or CHATML, {}
    else:
        template, variables = template_of(tokenizer_or_template), special_token_variables(tokenizer_or_template)
    if isinstance(messages, Conversation):
        messages = messages.messages
    chat = validate_messages(messages)
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
        raise ChatError("tools must be a list of JSON-schema dicts")
    variables = _plain({**variables, **extra})
    try:
        return _compile(template).render(messages=chat, tools=_plain(tools), documents=None,
                                         add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateSyntaxError as err:
        raise ChatError(f"chat template, line {err.lineno}: {err.message}") from None
    except (jinja2.TemplateError, TypeError) as err:  # raise_exception(...), or a template that cannot add types
        raise ChatError(f"chat template: {err}") from None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Plain copies of `messages`, checked: every problem at once, each named by index and field.

    Each message is a dict with a `role` (system, user, assistant or tool) and a string `content`; an
    assistant message with `tool_calls` may have none. Other keys (name, tool_call_id, ...) pass through;
    keys whose value is None are dropped, as transformers does (templates test for missing keys).
    """
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise ChatError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, not a "
                        f"{type(messages).__name__}")
    if not messages:
        raise ChatError("messages is empty: a conversation needs at least one message")
    problems, chat = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            problems.append(f"messages[{i}]: expected a dict with 'role' and 'content', got {type(message).__name__}")
            continue
        role, content = message.get("role"), message.get("content")
        if role is None:
            problems.append(f"messages[{i}].role: missing")
        elif role not in ROLES:
            problems.append(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if content is None:
            if not (role == "assistant" and message.get("tool_calls")):
                problems.append(f"messages[{i}].content: missing")
        elif not isinstance(content, str):
            problems.append(f"messages[{i}].content: expected a string, got {type(content).__name__}")
        chat.append({key: value for key, value in message.items() if value is not None})
    if problems:
        raise ChatError("; ".join(problems))
    return _plain(chat)


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    """The template compiled in transformers' sandboxed environment (see the module docstring)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters (`<` -> `\u003c`); templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks the assistant's text for training masks): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _TemplateDict:
    """`dict(...)` in a template, without the attributes of the `dict` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names (no way from a template to CPython internals)."""

    def __init__(*args, **kwargs):  # Jinja's signature trick: `namespace(self=...)` must still work
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore names on a namespace: {name!r}")


def _plain(value: Any) -> Any:
    """A copy made of plain JSON types only (the template cannot reach objects' methods, nor change the caller's data)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums, numpy scalars) lose their extra methods
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


# ---------------------------------------------------------------------------------- conversation


@dataclass
class Conversation:
    """A chat's state between answers: the system prompt and the turns so far."""

    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # user/assistant messages, oldest first

    @property
    def messages(self) -> list[dict[str, str]]:
        """The messages to render: the system prompt (when set), then the history."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [dict(m) for m in self.history]

    def add_user(self, text: str) -> None:
        """Append the user's message."""
        self.history.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        """Append the model's answer."""
        self.history.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.history.clear()

    def drop_oldest_turn(self) -> int:
        """Remove the oldest user message and the answers to it; the number of messages removed.

        Whole turns go, so the history still starts with a user message (templates that check that roles
        alternate keep working). The last user message is never dropped: returns 0 when it is the only one.
        """
        users = [i for i, m in enumerate(self.history) if m["role"] == "user"]
        if len(users) < 2:
            return 0
        dropped = users[1]
        del self.history[:dropped]
        return dropped

    def render(self, tokenizer_or_template: Any, add_generation_prompt: bool = True) -> str:
        """The prompt text of this conversation (see `apply_chat_template`)."""
        return apply_chat_template(tokenizer_or_template, self.messages, add_generation_prompt)
