"""`qtools.chat.parse_tool_calls`: typed arguments, one error per malformation, render-parse round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtools.chat import ErrorKind, ParseResult, ToolCall, parse_tool_calls, render_chat

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a file.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "mode": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "force": {"type": "boolean"},
                    "kind": {"type": "string", "enum": ["text", "binary"]},
                    "tags": {"type": "array"},
                    "meta": {"type": "object"},
                },
                "required": ["path", "content"],
            },
        },
    },
    {"name": "ping", "parameters": {"type": "object", "properties": {}}},
]


def call(name, *parameters):
    """Well-formed call text; each parameter is (name, raw value)."""
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in parameters)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def kinds(result: ParseResult) -> list[str]:
    return [str(error.kind) for error in result.errors]


def test_well_formed_call_with_content():
    text = "I'll write it.  \n\n" + call("write_file", ("path", "a.py"), ("content", "x = 1\n\ny = 2"), ("mode", "644"))
    result = parse_tool_calls(text, TOOLS)
    assert result.content == "I'll write it."
    assert result.tool_calls == [ToolCall("write_file", {"path": "a.py", "content": "x = 1\n\ny = 2", "mode": 644})]
    assert result.ok and result.errors == []


def test_plain_text_has_no_calls():
    assert parse_tool_calls("Just an answer.\n", TOOLS).to_dict() == {
        "content": "Just an answer.",
        "tool_calls": [],
        "errors": [],
    }
    assert parse_tool_calls("", TOOLS).content is None


def test_several_calls_and_no_content():
    text = call("ping") + "\n" + call("write_file", ("path", "b"), ("content", "")) + "\n"
    result = parse_tool_calls(text, TOOLS)
    assert result.content is None
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("ping", {}),
        ("write_file", {"path": "b", "content": ""}),
    ]
    assert result.ok


@pytest.mark.parametrize(
    "value",
    [
        "<div class='a'>\n  <p>hi</p>\n</div>",
        "before\n</function>\nafter",
        "x </function> y",
        "a literal </parameter> in the middle",
        "</parameter>\nstill the value",
        "<parameter=not_in_schema>\ntext",
        "\nleading and trailing newlines\n",
        "",
    ],
)
def test_xml_looking_values_stay_in_the_value(value):
    result = parse_tool_calls(call("write_file", ("path", "p"), ("content", value)), TOOLS)
    assert result.tool_calls[0].arguments == {"path": "p", "content": value}
    assert result.ok


MALFORMED = [
    pytest.param(
        "<tool_call>\n<function=ping>\n<parameter=x>\n1\n</function>\n</tool_call>",
        None,
        ["missing_parameter_close"],
        {"x": "1"},
        id="missing_parameter_close-before-function-close",
    ),
    pytest.param(
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.py\n<parameter=content>\nhi\n</parameter>\n"
        "</function>\n</tool_call>",
        TOOLS,
        ["missing_parameter_close"],
        {"path": "a.py", "content": "hi"},
        id="missing_parameter_close-before-next-parameter",
    ),
    pytest.param(
        "<function=ping>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
        None,
        ["missing_tool_call_open"],
        {"x": "1"},
        id="missing_tool_call_open",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\n<parameter=x\n1\n</parameter>\n</function>\n</tool_call>",
        None,
        ["parameter_without_gt"],
        {"x": "1"},
        id="parameter_without_gt",
    ),
    pytest.param(
        "<tool_call>\n<function=ping\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
        None,
        ["function_without_gt"],
        {"x": "1"},
        id="function_without_gt",
    ),
    pytest.param(call("nope", ("x", "1")), TOOLS, ["unknown_function"], {"x": "1"}, id="unknown_function"),
    pytest.param(call("ping", ("x", "1")), TOOLS, ["unknown_parameter"], {"x": "1"}, id="unknown_parameter"),
    pytest.param(
        call("write_file", ("path", "a")),
        TOOLS,
        ["missing_required_parameter"],
        {"path": "a"},
        id="missing_required_parameter",
    ),
    pytest.param(
        call("write_file", ("path", "a"), ("content", "b"), ("mode", "rw")),
        TOOLS,
        ["type_conversion"],
        {"path": "a", "content": "b", "mode": "rw"},
        id="type_conversion",
    ),
    pytest.param(
        call("ping", ("x", "1"), ("x", "2")),
        None,
        ["duplicate_parameter"],
        {"x": "2"},
        id="duplicate_parameter",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\n<parameter=x>\n1\n</parameter>\n</tool_call>",
        None,
        ["missing_function_close"],
        {"x": "1"},
        id="missing_function_close",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\n<parameter=x>\n1\n</parameter>\n</function>\n",
        None,
        ["missing_tool_call_close"],
        {"x": "1"},
        id="missing_tool_call_close",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\n</function>\n<function=ping>\n</function>\n</tool_call>",
        None,
        ["extra_function"],
        {},
        id="extra_function",
    ),
    pytest.param(
        call("ping") + "\nand some chatter after",
        None,
        ["unexpected_text"],
        {},
        id="unexpected_text-after-calls",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\nstray\n</function>\n</tool_call>",
        None,
        ["unexpected_text"],
        {},
        id="unexpected_text-inside-function",
    ),
    pytest.param("<tool_call>\n</tool_call>\n" + call("ping"), None, ["empty_tool_call"], {}, id="empty_tool_call"),
    pytest.param(call("ping") + "\n</tool_call>", None, ["unmatched_tool_call_close"], {}, id="unmatched_close"),
    pytest.param(
        call("write_file", ("path", "a"), ("content", "b"), ("meta", "{'k': 1}")),
        TOOLS,
        ["python_literal"],
        {"path": "a", "content": "b", "meta": {"k": 1}},
        id="python_literal",
    ),
    pytest.param(
        call("write_file", ("path", "a"), ("content", "b"), ("kind", "zip")),
        TOOLS,
        ["enum_mismatch"],
        {"path": "a", "content": "b", "kind": "zip"},
        id="enum_mismatch",
    ),
    pytest.param(
        "<tool_call>\n<function=ping>\n<parameter=x>\nhalf a val",
        None,
        ["missing_parameter_close", "missing_function_close", "missing_tool_call_close"],
        {"x": "half a val"},
        id="truncated-output",
    ),
]


@pytest.mark.parametrize(("text", "tools", "expected_kinds", "arguments"), MALFORMED)
def test_each_malformation_is_recovered_and_reported(text, tools, expected_kinds, arguments):
    result = parse_tool_calls(text, tools)
    assert kinds(result) == expected_kinds
    assert result.tool_calls[-1].arguments == arguments
    assert all(error.message for error in result.errors)
    json.dumps(result.to_dict())


def test_every_error_kind_is_exercised():
    exercised = {kind for param in MALFORMED for kind in param.values[2]}
    assert exercised == {str(kind) for kind in ErrorKind}


def test_errors_say_which_call_and_parameter():
    text = call("ping") + "\n" + call("write_file", ("path", "a"), ("content", "b"), ("mode", "x"))
    (error,) = parse_tool_calls(text, TOOLS).errors
    assert (error.kind, error.call_index, error.parameter) == (ErrorKind.TYPE_CONVERSION, 1, "mode")
    assert error.to_dict() == {
        "kind": "type_conversion",
        "message": error.message,
        "call_index": 1,
        "parameter": "mode",
    }


SCHEMA_CASES = [
    ({"type": "string"}, "007", "007", None),
    ({"type": "str"}, "True", "True", None),
    ({"type": "string", "enum": ["a", "b"]}, "b", "b", None),
    ({"type": "enum"}, "x", "x", None),
    ({"description": "no type"}, "12", "12", None),
    ({"type": "integer"}, "-42", -42, None),
    ({"type": "int64"}, "7", 7, None),
    ({"type": "integer"}, "4.5", "4.5", "type_conversion"),
    ({"type": "number"}, "2.5", 2.5, None),
    ({"type": "number"}, "3.0", 3, None),
    ({"type": "float"}, "1e3", 1000, None),
    ({"type": "number"}, "inf", "inf", "type_conversion"),
    ({"type": "number"}, "many", "many", "type_conversion"),
    ({"type": "boolean"}, "true", True, None),
    ({"type": "boolean"}, "False", False, None),
    ({"type": "bool"}, "TRUE", True, None),
    ({"type": "boolean"}, "yes", False, "type_conversion"),
    ({"type": "array"}, '[1, "a", null]', [1, "a", None], None),
    ({"type": "array"}, "(1, 2)", [1, 2], "python_literal"),
    ({"type": "array"}, '{"a": 1}', {"a": 1}, "type_conversion"),
    ({"type": "array"}, "[1, 2", "[1, 2", "type_conversion"),
    ({"type": "object"}, '{"a": {"b": [true]}}', {"a": {"b": [True]}}, None),
    ({"type": "object"}, "{'a': None}", {"a": None}, "python_literal"),
    ({"type": "object"}, "{1, 2}", "{1, 2}", "type_conversion"),
    (
        {"type": "object"},
        "__import__('os').system('true')",
        "__import__('os').system('true')",
        "type_conversion",
    ),
    ({"type": "dict"}, "{}", {}, None),
    ({"type": ["string", "null"]}, "12", 12, None),
    ({"type": ["string", "null"]}, "hello", "hello", None),
    ({"type": "integer"}, "null", None, None),
    ({"type": "object"}, "NULL", None, None),
    ({"type": "integer", "enum": [1, 2]}, "3", 3, "enum_mismatch"),
]


@pytest.mark.parametrize(("schema", "raw", "expected", "error"), SCHEMA_CASES)
def test_values_are_typed_by_schema(schema, raw, expected, error):
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"v": schema}}}]
    result = parse_tool_calls(call("f", ("v", raw)), tools)
    value = result.tool_calls[0].arguments["v"]
    assert value == expected and type(value) is type(expected)
    assert kinds(result) == ([error] if error else [])


def test_without_tools_values_stay_text():
    result = parse_tool_calls(call("anything", ("n", "5"), ("b", "true"), ("z", "null")))
    assert result.tool_calls[0].arguments == {"n": "5", "b": "true", "z": None}
    assert result.ok


def test_tool_call_to_openai():
    openai = ToolCall("f", {"a": [1, "é"]}).to_openai()
    assert openai == {"type": "function", "function": {"name": "f", "arguments": '{"a": [1, "é"]}'}}


def assistant_text(message):
    """What the model writes for an assistant turn: the rendered turn without its header and `<|im_end|>`."""
    rendered = render_chat([message])
    assert rendered.startswith("<|im_start|>assistant\n") and rendered.endswith("<|im_end|>\n")
    return rendered.removeprefix("<|im_start|>assistant\n").removesuffix("<|im_end|>\n")


def test_rendered_conversation_parses_back():
    arguments = {"path": "x.py", "content": "<a>\n</function>\n", "mode": 7, "ratio": 0.5, "force": False}
    arguments |= {"kind": "text", "tags": ["a", 1], "meta": {"k": None}}
    message = {
        "role": "assistant",
        "content": "Writing.",
        "tool_calls": [{"name": "write_file", "arguments": arguments}],
    }
    result = parse_tool_calls(assistant_text(message), TOOLS)
    assert result.content == "Writing."
    assert result.tool_calls == [ToolCall("write_file", arguments)]
    assert result.ok


def same_typed(left, right):
    """Equality that also tells 1 from 1.0 from True, recursively."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_typed(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same_typed(a, b) for a, b in zip(left, right, strict=True))
    return left == right


# Text that a value may hold: any characters but `<`, plus XML-looking fragments that cannot spell a tag the
# format gives meaning to (`<tool_call>`, `</tool_call>`, `<parameter=`, `</parameter>`).
FRAGMENTS = [
    "<div>",
    "</div>",
    '<a href="x">',
    "<br/>",
    "</function>",
    "<function=evil>",
    "<parameter>",
    "&lt;",
]
plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="<"), max_size=12)
free_text = st.lists(plain | st.sampled_from(FRAGMENTS) | st.just("\n"), max_size=6).map("".join)
strings = free_text.filter(lambda text: text.lower() != "null")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=8,
)
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def parameter(draw):
    """A (schema, value drawn for it, value the parser should return) triple."""
    kind = draw(st.sampled_from(["string", "integer", "number", "boolean", "enum", "array", "object"]))
    if kind == "string":
        value = draw(strings)
        return {"type": "string"}, value, value
    if kind == "integer":
        value = draw(st.integers(-(10**30), 10**30))
        return {"type": "integer"}, value, value
    if kind == "number":
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
        return {"type": "number"}, value, int(value) if value.is_integer() else value
    if kind == "boolean":
        value = draw(st.booleans())
        return {"type": "boolean"}, value, value
    if kind == "enum":
        options = draw(st.lists(identifiers.filter(lambda text: text != "null"), min_size=1, max_size=4, unique=True))
        value = draw(st.sampled_from(options))
        return {"type": "string", "enum": options}, value, value
    if kind == "array":
        value = draw(st.lists(json_values, max_size=4))
        return {"type": "array"}, value, value
    value = draw(st.dictionaries(strings, json_values, max_size=4))
    return {"type": "object"}, value, value


@st.composite
def tool_and_calls(draw):
    """Tools with random schemas, and calls of them with typed arguments."""
    tools, calls, expected = [], [], []
    for name in draw(st.lists(identifiers, min_size=1, max_size=3, unique=True)):
        drawn = draw(st.dictionaries(identifiers, parameter(), max_size=5))
        properties = {key: schema for key, (schema, _, _) in drawn.items()}
        wrapped = {"type": "object", "properties": properties, "required": list(drawn)}
        tools.append({"type": "function", "function": {"name": name, "description": "t", "parameters": wrapped}})
        for _ in range(draw(st.integers(1, 2))):
            keys = draw(st.permutations(list(drawn)))
            arguments = {key: drawn[key][1] for key in keys}
            if draw(st.booleans()):
                arguments = json.dumps(arguments)
            calls.append({"function": {"name": name, "arguments": arguments}})
            expected.append(ToolCall(name, {key: drawn[key][2] for key in keys}))
    return tools, calls, expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=tool_and_calls(), content=st.none() | st.lists(plain | st.just("\n"), max_size=4).map("".join))
def test_render_then_parse_round_trips(case, content):
    tools, calls, expected = case
    text = assistant_text({"role": "assistant", "content": content, "tool_calls": calls})
    result = parse_tool_calls(text, tools)
    assert result.errors == []
    assert result.content == ((content or "").strip() or None)
    assert [call.name for call in result.tool_calls] == [call.name for call in expected]
    for got, want in zip(result.tool_calls, expected, strict=True):
        assert same_typed(got.arguments, want.arguments), (got.arguments, want.arguments)


TAG_SOUP = ["<tool_call>", "</tool_call>", "<function=", "</function>", "<parameter=", "</parameter>", ">", "\n"]


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.sampled_from(TAG_SOUP) | identifiers | plain, max_size=25))
def test_any_text_parses_without_raising(pieces):
    result = parse_tool_calls("".join(pieces), TOOLS)
    json.dumps(result.to_dict())
    assert all(isinstance(error.kind, ErrorKind) and error.message for error in result.errors)
