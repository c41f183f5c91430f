"""Chat templates render exactly as transformers' `apply_chat_template(..., tokenize=False)` does.

Each template is set on a transformers tokenizer built from the same tiny in-process vocabulary as ours,
and both render the same conversations (with and without a system prompt, several turns, with and
without the generation prompt): ChatML, SmolLM2's own template from its GGUF file, a Llama-3-like
template (bos_token, strftime_now, tojson, raise_exception), a Zephyr-like one whose layout relies on
trim_blocks/lstrip_blocks, and one using namespace, dict, loop controls and `{% generation %}`.
"""

from __future__ import annotations

import jinja2
import pytest
import transformers as T
from _assets import require_asset
from tokenizers import AddedToken, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from lmforge.generate.chat import CHATML, ChatError, Conversation, apply_chat_template, validate_messages
from lmforge.tokenizers import Tokenizer

SPECIALS = {"unk": "<unk>", "pad": "<pad>", "bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}
WORDS = ["hello", "world", "paris", "is", "the", "capital", "of", "france"]

LLAMA3_LIKE = """\
{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You may call these functions:\\n" + tools | tojson(indent=2) + "\\n\\n" }}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception("Conversation roles must be user or assistant, got " + message['role']) }}
    {%- endif %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + eos_token }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# No whitespace control in the template itself: the output is right only with trim_blocks and lstrip_blocks.
ZEPHYR_LIKE = """\
{% for message in messages %}
    {% if message['role'] == 'user' %}
        {{ '<|user|>\\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
        {{ '<|system|>\\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'assistant' %}
        {{ '<|assistant|>\\n'  + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
        {{ '<|assistant|>' }}
    {% endif %}
{% endfor %}
"""

# namespace and dict objects, {% break %} / {% continue %}, a {% generation %} block, tojson of odd text.
FEATURES = """\
{%- set ns = namespace(turns=0, last='') -%}
{%- set names = dict(user='U', assistant='A', system='S') -%}
{%- for m in messages -%}
    {%- if m['content'] == 'STOP' %}{% break %}{% endif -%}
    {%- if m['content'] == 'SKIP' %}{% continue %}{% endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- set ns.last = m['role'] -%}
    {%- if m['role'] == 'assistant' -%}
        {{ names[m['role']] }}> {% generation %}{{ m['content'] }}{% endgeneration %}
    {%- else -%}
        {{ names[m['role']] }}> {{ m['content'] | tojson }}
    {%- endif %}
{% endfor -%}
{{ ns.turns }} turns, last {{ ns.last }}{% if add_generation_prompt %}
A> {% endif %}"""

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."}
CONVERSATIONS = {
    "one user message": [{"role": "user", "content": "What is the capital of France?"}],
    "system + user": [SYSTEM, {"role": "user", "content": "Hi!"}],
    "multi-turn": [
        SYSTEM,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "  And of Germany?\nThanks 🙂 <b>bold</b> \"quoted\"  "},
    ],
    "multi-turn, no system": [
        {"role": "user", "content": "今天天气真好。"},
        {"role": "assistant", "content": "是的！"},
        {"role": "user", "content": "SKIP"},
        {"role": "assistant", "content": "ok"},
    ],
}


@pytest.fixture(scope="module")
def tokenizers() -> tuple[Tokenizer, T.PreTrainedTokenizerFast]:
    """(ours, transformers') over the same tiny word-level vocabulary with Llama-3-style special tokens."""
    vocab = {token: i for i, token in enumerate([*SPECIALS.values(), *WORDS])}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS.values()])
    ours = Tokenizer(Backend.from_str(backend.to_str()), dict(SPECIALS))
    theirs = T.PreTrainedTokenizerFast(tokenizer_object=backend, **{f"{r}_token": t for r, t in SPECIALS.items()})
    return ours, theirs


def _reference(theirs, template: str, messages, add_generation_prompt: bool, **kwargs) -> str:
    theirs.chat_template = template
    return theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                      **kwargs)


def _ours(ours, template: str, messages, add_generation_prompt: bool, **kwargs) -> str:
    ours.chat_template = template
    return apply_chat_template(ours, messages, add_generation_prompt=add_generation_prompt, **kwargs)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("template", ["chatml", "llama3", "zephyr", "features"])
def test_templates_render_as_transformers_renders_them(tokenizers, template, name, add_generation_prompt):
    ours, theirs = tokenizers
    text = {"chatml": CHATML, "llama3": LLAMA3_LIKE, "zephyr": ZEPHYR_LIKE, "features": FEATURES}[template]
    messages = CONVERSATIONS[name]
    if template == "llama3" and name == "multi-turn, no system":
        messages = messages[:2]  # roles must alternate (SKIP is for the features template)
    expected = _reference(theirs, text, messages, add_generation_prompt)
    assert _ours(ours, text, messages, add_generation_prompt) == expected
    assert expected  # the comparison is not between two empty strings


def test_the_llama3_template_sees_the_special_tokens_tools_and_extra_variables(tokenizers):
    ours, theirs = tokenizers
    messages = CONVERSATIONS["multi-turn"]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & \"here\"",
                                               "parameters": {"type": "object", "properties": {}}}}]
    expected = _reference(theirs, LLAMA3_LIKE, messages, True, tools=tools, date_string="26 Jul 2024")
    got = _ours(ours, LLAMA3_LIKE, messages, True, tools=tools, date_string="26 Jul 2024")
    assert got == expected
    assert got.startswith("<|begin_of_text|>") and "Today Date: 26 Jul 2024" in got
    assert '"Weather <now> & \\"here\\""' in got  # tojson leaves HTML characters alone
    # strftime_now: today's date, as transformers renders it (the two calls are microseconds apart)
    assert _ours(ours, LLAMA3_LIKE, messages, True) == _reference(theirs, LLAMA3_LIKE, messages, True)


def test_raise_exception_in_a_template_is_a_chat_error_with_the_templates_message(tokenizers):
    ours, theirs = tokenizers
    for messages in ([{"role": "tool", "content": "42"}],
                     [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]):
        with pytest.raises(jinja2.TemplateError) as theirs_error:
            _reference(theirs, LLAMA3_LIKE, messages, True)
        with pytest.raises(ChatError) as ours_error:
            _ours(ours, LLAMA3_LIKE, messages, True)
        assert str(ours_error.value) == f"chat template: {theirs_error.value}"


@pytest.fixture(scope="module")
def smollm2() -> tuple[str, Tokenizer]:
    """(SmolLM2's chat template as its GGUF file stores it, our tokenizer loaded from that file): ~20 s, once."""
    import gguf

    from lmforge.assets import smollm2_gguf

    path = require_asset(smollm2_gguf)
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8"), Tokenizer.from_pretrained(path)


@pytest.mark.assets
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_from_its_gguf_file(tokenizers, smollm2, add_generation_prompt):
    template, smollm = smollm2
    assert "SmolLM" in template  # its default system prompt, written when the conversation has none
    assert smollm.chat_template == template  # the tokenizer read it from the GGUF metadata
    ours, theirs = tokenizers
    for messages in CONVERSATIONS.values():
        expected = _reference(theirs, template, messages, add_generation_prompt)
        assert _ours(ours, template, messages, add_generation_prompt) == expected
        assert apply_chat_template(smollm, messages, add_generation_prompt) == expected
    first = apply_chat_template(smollm, CONVERSATIONS["one user message"])
    assert first.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert first.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_a_tokenizer_without_a_template_gets_chatml(tokenizers):
    ours, theirs = tokenizers
    ours.chat_template = None
    messages = CONVERSATIONS["multi-turn"]
    assert apply_chat_template(ours, messages) == _reference(theirs, CHATML, messages, True)
    assert apply_chat_template(None, messages) == apply_chat_template(CHATML, messages)
    assert apply_chat_template(CHATML, [{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_string_takes_its_special_tokens_as_keywords():
    template = "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
    assert apply_chat_template(template, [{"role": "user", "content": "x"}], bos_token="<s>", eos_token="</s>") == (
        "<s>x</s>")


def test_bad_messages_are_named_by_index_and_field_all_at_once():
    with pytest.raises(ChatError) as err:
        validate_messages([{"role": "robot", "content": "hi"}, {"role": "user"}, "hello",
                           {"role": "assistant", "content": 3}, {"content": "x"}])
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    for part in ("messages[0].role: 'robot' is not one of system, user, assistant, tool", "messages[1].content: missing",
                 "messages[2]: expected a dict", "messages[3].content: expected a string, got int",
                 "messages[4].role: missing"):
        assert part in message
    for bad in ([], "hello", {"role": "user", "content": "x"}, None):
        with pytest.raises(ChatError, match="messages"):
            apply_chat_template(CHATML, bad)


def test_an_assistant_tool_call_needs_no_content_and_none_values_are_dropped():
    messages = [{"role": "user", "content": "weather?", "name": None},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]
    assert validate_messages(messages) == [{"role": "user", "content": "weather?"},
                                           {"role": "assistant", "tool_calls": [{"function": {"name": "f",
                                                                                              "arguments": {}}}]}]
    template = "{% for m in messages %}{{ m.role }}:{{ m.content is defined }}:{{ m.name is defined }};{% endfor %}"
    assert apply_chat_template(template, messages, add_generation_prompt=False) == "user:True:False;assistant:False:False;"


@pytest.mark.parametrize("template", [
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",  # the immutable sandbox: no mutation
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}{{ ns._secret }}",
    "{{ raise_exception('no') }}",
    "{% for m in messages %}{{ m.content + 1 }}{% endfor %}",
    "{% for m in messages %}",  # a syntax error
])
def test_unsafe_or_failing_templates_raise_chat_errors_where_transformers_raises(tokenizers, template):
    ours, theirs = tokenizers
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(Exception):  # noqa: B017 (transformers raises several kinds)
        _reference(theirs, template, messages, True)
    with pytest.raises(ChatError):
        _ours(ours, template, messages, True)


def test_rendering_leaves_the_callers_messages_alone():
    messages = [{"role": "user", "content": "x"}]
    apply_chat_template("{% set m = messages[0] %}{{ m.content }}", messages)
    assert messages == [{"role": "user", "content": "x"}]


def test_conversation_keeps_the_system_prompt_and_drops_whole_turns():
    conversation = Conversation(system="Be brief.")
    assert conversation.messages == [{"role": "system", "content": "Be brief."}]
    for i in range(3):
        conversation.add_user(f"q{i}")
        conversation.add_assistant(f"a{i}")
    conversation.add_user("q3")
    assert [m["role"] for m in conversation.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert conversation.drop_oldest_turn() == 2
    assert [m["content"] for m in conversation.messages] == ["Be brief.", "q1", "a1", "q2", "a2", "q3"]
    conversation.history.insert(2, {"role": "assistant", "content": "a1 (more)"})  # several answers: all go
    assert conversation.drop_oldest_turn() == 3
    assert conversation.drop_oldest_turn() == 2
    assert conversation.drop_oldest_turn() == 0  # the last user message stays
    assert conversation.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q3"}]
    assert conversation.render(CHATML) == apply_chat_template(CHATML, conversation.messages)
    assert apply_chat_template(CHATML, conversation) == conversation.render(CHATML)
    conversation.reset()
    assert conversation.messages == [{"role": "system", "content": "Be brief."}]
    assert Conversation().messages == []
