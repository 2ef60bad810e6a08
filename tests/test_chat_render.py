"""Golden strings for `qtools.chat.render_chat` and the FIM helpers (Qwen3-Coder format, FACTS §5)."""

from __future__ import annotations

import json

import pytest

from qtools.chat import build_fim_prompt, fim_messages, render_chat
from qtools.errors import QtoolsError

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location\n",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "default": None},
            },
            "required": ["location"],
        },
    },
}

# What the upstream template writes for WEATHER_TOOL and no system message: the default system text, the tools
# block (schema fields beyond name/type/description as `<key>` tags, containers as JSON with Python's
# separators, scalars through str()), then the call-format instructions.
WEATHER_SYSTEM = """<|im_start|>system
You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.

# Tools

You have access to the following functions:

<tools>
<function>
<name>get_weather</name>
<description>Get the current weather in a given location</description>
<parameters>
<parameter>
<name>location</name>
<type>string</type>
<description>City and state, e.g. San Francisco, CA</description>
</parameter>
<parameter>
<name>unit</name>
<type>string</type>
<enum>["celsius", "fahrenheit"]</enum>
</parameter>
<parameter>
<name>days</name>
<type>integer</type>
<minimum>1</minimum>
<default>None</default>
</parameter>
<required>["location"]</required>
</parameters>
</function>
</tools>

If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>
</tool_call>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested \
within <tool_call></tool_call> XML tags
- Required parameters MUST be specified
- You may provide optional reasoning for your function call in natural language BEFORE the function call, \
but NOT after
- If there is no function call available, answer the question like normal with your current knowledge and do \
not tell the user about function calls
</IMPORTANT><|im_end|>
"""


def test_plain_chat_with_system():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_no_system_and_no_tools_has_no_system_turn():
    assert render_chat([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n"


def test_empty_tool_list_is_no_tools():
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(messages, tools=[]) == render_chat(messages)


def test_tools_without_system_use_default_system_text():
    rendered = render_chat([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
    assert rendered == WEATHER_SYSTEM + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"


def test_tools_with_system_replace_default_text():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = render_chat(messages, tools=[WEATHER_TOOL])
    default = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
    assert rendered == WEATHER_SYSTEM.replace(default, "Be brief.") + "<|im_start|>user\nHi<|im_end|>\n"


def test_bare_function_dict_renders_like_wrapped_tool():
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(messages, tools=[WEATHER_TOOL["function"]]) == render_chat(messages, tools=[WEATHER_TOOL])


def test_tool_without_parameters():
    tool = {"name": "now", "description": "Current time."}
    rendered = render_chat([{"role": "user", "content": "Hi"}], tools=[tool])
    assert "<tools>\n<function>\n<name>now</name>\n<description>Current time.</description>\n" in rendered
    assert "<parameters>\n</parameters>\n</function>\n</tools>" in rendered


CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "  Checking both.\n",
        "tool_calls": [
            {
                "id": "a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"location": "Paris"}},
            },
            {
                "id": "b",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": {"location": "Rome", "days": 2, "unit": "celsius"},
                },
            },
        ],
    },
    {"role": "tool", "tool_call_id": "a", "content": "sunny"},
    {"role": "tool", "tool_call_id": "b", "content": "rain\nlater"},
    {"role": "assistant", "content": "Paris sunny, Rome rain."},
]

CONVERSATION_TURNS = """<|im_start|>user
Weather in Paris and Rome?<|im_end|>
<|im_start|>assistant
Checking both.

<tool_call>
<function=get_weather>
<parameter=location>
Paris
</parameter>
</function>
</tool_call>
<tool_call>
<function=get_weather>
<parameter=location>
Rome
</parameter>
<parameter=days>
2
</parameter>
<parameter=unit>
celsius
</parameter>
</function>
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
sunny
</tool_response>
<tool_response>
rain
later
</tool_response>
<|im_end|>
<|im_start|>assistant
Paris sunny, Rome rain.<|im_end|>
"""


def test_tool_calls_and_consecutive_tool_results():
    rendered = render_chat(CONVERSATION, tools=[WEATHER_TOOL], add_generation_prompt=False)
    assert rendered == WEATHER_SYSTEM + CONVERSATION_TURNS


def test_arguments_as_json_string_render_like_mapping():
    as_strings = json.loads(json.dumps(CONVERSATION))
    for call in as_strings[1]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    assert render_chat(as_strings, tools=[WEATHER_TOOL]) == render_chat(CONVERSATION, tools=[WEATHER_TOOL])


def test_tool_call_without_content_and_typed_values():
    arguments = {"n": 3, "x": 0.5, "flag": True, "none": None, "items": [1, "é"], "opts": {"k": [True]}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "run", "arguments": arguments}]},
    ]
    assert render_chat(messages) == (
        "<|im_start|>user\ngo<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n<function=run>\n"
        "<parameter=n>\n3\n</parameter>\n"
        "<parameter=x>\n0.5\n</parameter>\n"
        "<parameter=flag>\nTrue\n</parameter>\n"
        "<parameter=none>\nNone\n</parameter>\n"
        '<parameter=items>\n[1, "é"]\n</parameter>\n'
        '<parameter=opts>\n{"k": [true]}\n</parameter>\n'
        "</function>\n</tool_call><|im_end|>\n"
    )


def test_tool_result_then_generation_prompt():
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "run", "arguments": "{}"}}]},
        {"role": "tool", "content": {"status": "ok"}},
    ]
    assert render_chat(messages, add_generation_prompt=True) == (
        "<|im_start|>user\ngo<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n<function=run>\n</function>\n</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"status": "ok"}\n</tool_response>\n<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_tool_result_first_after_system_has_no_user_header():
    # Upstream quirk, reproduced on purpose: the user turn is opened only after a non-tool message.
    messages = [{"role": "system", "content": "S"}, {"role": "tool", "content": "r"}]
    assert (
        render_chat(messages) == "<|im_start|>system\nS<|im_end|>\n<tool_response>\nr\n</tool_response>\n<|im_end|>\n"
    )


def test_content_parts_are_joined():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert render_chat(messages) == "<|im_start|>user\nab<|im_end|>\n"


@pytest.mark.parametrize(
    ("messages", "tools", "match"),
    [
        ([], None, "empty conversation"),
        ([{"content": "no role"}], None, "role"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
            None,
            "JSON",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
            None,
            "object",
        ),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}], None, "name"),
        (
            [{"role": "user", "content": "x"}],
            [{"type": "function", "function": {"description": "no name"}}],
            "name",
        ),
    ],
)
def test_bad_input_raises_with_a_message(messages, tools, match):
    with pytest.raises(QtoolsError, match=match):
        render_chat(messages, tools=tools)


class RecordingTokenizer:
    def __init__(self, chat_template):
        self.chat_template = chat_template
        self.calls = []

    def apply_chat_template(self, messages, **kwargs):
        self.calls.append((messages, kwargs))
        return "from tokenizer"


def test_tokenizer_with_template_renders_through_it():
    tokenizer = RecordingTokenizer("{{ messages }}")
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    out = render_chat(messages, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenizer=tokenizer)
    assert out == "from tokenizer"
    passed, kwargs = tokenizer.calls[0]
    assert passed[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert kwargs == {"tools": [WEATHER_TOOL], "add_generation_prompt": True, "tokenize": False}


def test_tokenizer_without_template_falls_back_to_builtin():
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(messages, tokenizer=RecordingTokenizer(None)) == render_chat(messages)


def test_fim_prompt_and_messages():
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    prompt = build_fim_prompt(prefix, suffix)
    assert prompt == f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    assert fim_messages(prefix, suffix) == [
        {"role": "system", "content": "You are a code completion assistant."},
        {"role": "user", "content": prompt},
    ]
    assert render_chat(fim_messages(prefix, suffix), add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a code completion assistant.<|im_end|>\n"
        f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
