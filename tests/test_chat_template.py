"""The bundled Jinja template renders exactly what `render_chat` renders, through jinja2 and transformers."""

from __future__ import annotations

import hashlib
import json

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qtools.chat import chat_template_sha256, fim_messages, load_chat_template, render_chat, render_template
from qtools.chat.messages import normalize_messages

# Pin of templates/qwen3_coder.jinja: a change to the template must change this line too, and the reports
# that quote the template hash.
TEMPLATE_SHA256 = "98571dde8d4765a68b0bc3199d3df26a42f6d0265c620a5c241a5548d7675f75"


def transformers_like_render(template, messages, tools, add_generation_prompt):
    """Render as transformers' apply_chat_template does (its environment, filters and globals)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
    )


@pytest.fixture(scope="module")
def tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=load_chat_template())


def tool(name, properties, required=(), description="A tool.", **extra):
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = list(required)
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters, **extra},
    }


EDIT = tool(
    "edit_file",
    {
        "path": {"type": "string", "description": "  File to edit.  "},
        "line": {"type": "integer", "minimum": 1},
        "scale": {"type": "number", "default": 1.5},
        "dry_run": {"type": "boolean", "default": False},
        "mode": {"type": "string", "enum": ["replace", "insert"]},
        "lines": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object", "additionalProperties": True, "properties": {"k": {"type": "string"}}},
        "either": {"type": ["string", "null"]},
        "untyped": {"description": "no type"},
    },
    required=["path", "line"],
    strict=True,
)
SEARCH = {"name": "search", "description": "Search.", "parameters": {"type": "object", "properties": {}}}
NO_PARAMETERS = {"name": "ping"}
TOOL_SETS = {"none": None, "one": [EDIT], "three": [EDIT, SEARCH, NO_PARAMETERS]}

CALL = {
    "type": "function",
    "function": {
        "name": "edit_file",
        "arguments": {
            "path": "a/<b>.py",
            "line": 3,
            "scale": 0.25,
            "dry_run": True,
            "mode": "insert",
            "lines": ["x = 1", "</function> y"],
            "options": {"k": "v", "n": [1, None]},
        },
    },
}
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Hi"}],
    "system_user": [{"role": "system", "content": "Sys\nprompt"}, {"role": "user", "content": "Hi"}],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    "multi_turn": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
    "one_call_with_content": [
        {"role": "user", "content": "edit"},
        {"role": "assistant", "content": "\n  On it.  \n", "tool_calls": [CALL]},
        {"role": "tool", "content": "done"},
    ],
    "calls_without_content": [
        {"role": "user", "content": "edit twice"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [CALL, {"function": {"name": "search", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "two"},
        {"role": "tool", "content": "three"},
        {"role": "user", "content": "thanks"},
    ],
    "json_string_arguments": [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "ping", "arguments": '{"a": [1, {"b": null}]}'}}],
        },
        {"role": "tool", "content": "pong"},
        {"role": "assistant", "content": "Done."},
    ],
    "tool_first": [{"role": "tool", "content": "orphan"}, {"role": "user", "content": "x"}],
    "system_then_tool": [{"role": "system", "content": "S"}, {"role": "tool", "content": "r"}],
    "second_system": [
        {"role": "system", "content": "S1"},
        {"role": "user", "content": "x"},
        {"role": "system", "content": "S2"},
    ],
    "fim": fim_messages("def f():\n    ", "\n"),
}
CASES = [
    pytest.param(CONVERSATIONS[name], TOOL_SETS[tools], generation, id=f"{name}-{tools}-{generation}")
    for name in CONVERSATIONS
    for tools in TOOL_SETS
    for generation in (False, True)
]


def test_load_and_hash():
    template = load_chat_template()
    assert template.startswith("{#-") and "<tool_call>" in template
    assert chat_template_sha256(template) == hashlib.sha256(template.encode("utf-8")).hexdigest()
    assert chat_template_sha256(template) == TEMPLATE_SHA256


@pytest.mark.parametrize(("messages", "tools", "generation"), CASES)
def test_template_matches_render_chat(messages, tools, generation, tokenizer):
    expected = render_chat(messages, tools=tools, add_generation_prompt=generation)
    normalised = normalize_messages(messages)
    assert transformers_like_render(load_chat_template(), normalised, tools, generation) == expected
    assert render_template(messages, tools=tools, add_generation_prompt=generation) == expected
    via_tokenizer = tokenizer.apply_chat_template(
        normalised, tools=tools, add_generation_prompt=generation, tokenize=False
    )
    assert via_tokenizer == expected
    assert render_chat(messages, tools=tools, add_generation_prompt=generation, tokenizer=tokenizer) == expected


def test_render_chat_uses_the_tokenizers_own_template(tokenizer):
    other = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, chat_template="{{ messages[0].content }}!"
    )
    assert render_chat([{"role": "user", "content": "Hi"}], tokenizer=other) == "Hi!"


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
schemas = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "number", "boolean", "array", "object"])},
    optional={"description": texts, "enum": st.lists(json_values, max_size=3), "default": json_values},
)
tools_strategy = st.lists(
    st.builds(
        lambda name, properties, required, wrapped: (
            tool(name, properties, required) if wrapped else tool(name, properties, required)["function"]
        ),
        names,
        st.dictionaries(names, schemas, max_size=3),
        st.lists(names, max_size=2),
        st.booleans(),
    ),
    max_size=3,
)
calls = st.builds(
    lambda name, arguments, as_string: {
        "function": {"name": name, "arguments": json.dumps(arguments) if as_string else arguments}
    },
    names,
    st.dictionaries(names, json_values, max_size=3),
    st.booleans(),
)
messages_strategy = st.lists(
    st.one_of(
        st.builds(
            lambda role, content: {"role": role, "content": content},
            st.sampled_from(["user", "system"]),
            texts,
        ),
        st.builds(lambda content: {"role": "assistant", "content": content}, texts),
        st.builds(
            lambda content, tool_calls: {"role": "assistant", "content": content, "tool_calls": tool_calls},
            st.none() | texts,
            st.lists(calls, min_size=1, max_size=2),
        ),
        st.builds(lambda content: {"role": "tool", "content": content}, texts),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages_strategy, tools=st.none() | tools_strategy, generation=st.booleans())
def test_template_matches_render_chat_on_random_conversations(messages, tools, generation):
    expected = render_chat(messages, tools=tools, add_generation_prompt=generation)
    assert render_template(messages, tools=tools, add_generation_prompt=generation) == expected
