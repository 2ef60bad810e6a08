"""Render a conversation in the Qwen3-Coder chat format (FACTS §5), without Jinja.

The text matches the `chat_template.jinja` shipped with Qwen/Qwen3-Coder-480B-A35B-Instruct in its
`render_extra_keys` revision (tools listed as `<function><name>..</name>...` under a `# Tools` header), and
`qwen3_coder.jinja` beside this module, which tests render through jinja2 and transformers to the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from qtools.chat.messages import normalize_messages
from qtools.chat.tools import function_spec

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SYSTEM = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
TOOLS_HEADER = "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
TOOL_CALL_INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\n"
    "multiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be "
    "nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function "
    "call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)
GENERATION_PROMPT = f"{IM_START}assistant\n"


def _is_container(value: Any) -> bool:
    """Jinja's `value is mapping or (value is sequence and value is not string)`."""
    if isinstance(value, Mapping):
        return True
    return not isinstance(value, str) and hasattr(value, "__len__") and hasattr(value, "__getitem__")


def format_value(value: Any) -> str:
    """A schema field or argument value as the template writes it: JSON for containers, `str()` otherwise."""
    return json.dumps(value, ensure_ascii=False) if _is_container(value) else str(value)


def _extra_keys(fields: Any, handled: tuple[str, ...]) -> str:
    if not isinstance(fields, Mapping):
        return ""
    return "".join(f"\n<{key}>{format_value(value)}</{key}>" for key, value in fields.items() if key not in handled)


def _render_parameter(name: str, fields: Any) -> str:
    out = f"\n<parameter>\n<name>{name}</name>"
    if isinstance(fields, Mapping):
        if "type" in fields:
            out += f"\n<type>{fields['type']}</type>"
        if "description" in fields:
            out += f"\n<description>{str(fields['description']).strip()}</description>"
    return out + _extra_keys(fields, ("name", "type", "description")) + "\n</parameter>"


def _render_function(spec: Mapping[str, Any]) -> str:
    out = f"\n<function>\n<name>{spec['name']}</name>"
    if "description" in spec:
        out += f"\n<description>{str(spec['description']).strip()}</description>"
    out += "\n<parameters>"
    parameters = spec.get("parameters")
    if isinstance(parameters, Mapping) and isinstance(parameters.get("properties"), Mapping):
        out += "".join(_render_parameter(name, fields) for name, fields in parameters["properties"].items())
    out += _extra_keys(parameters, ("type", "properties")) + "\n</parameters>"
    return out + _extra_keys(spec, ("type", "name", "description", "parameters")) + "\n</function>"


def render_tools_system(system: str | None, tools: Sequence[Mapping[str, Any]]) -> str:
    """The system turn: system text (the default one when tools but no system), tool list, `<|im_end|>`."""
    if system is None and not tools:
        return ""
    out = f"{IM_START}system\n{DEFAULT_SYSTEM if system is None else system}"
    if tools:
        functions = "".join(_render_function(function_spec(tool)) for tool in tools)
        out += f"{TOOLS_HEADER}{functions}\n</tools>{TOOL_CALL_INSTRUCTIONS}"
    return out + f"{IM_END}\n"


def render_tool_calls(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """The `<tool_call>` blocks of an assistant turn, as the model writes them (normalised calls)."""
    out = ""
    for call in tool_calls:
        function = call["function"]
        out += f"\n<tool_call>\n<function={function['name']}>\n"
        for key, value in function["arguments"].items():
            out += f"<parameter={key}>\n{format_value(value)}\n</parameter>\n"
        out += "</function>\n</tool_call>"
    return out


def _render_message(messages: list[dict[str, Any]], index: int) -> str:
    message = messages[index]
    role, content = message["role"], message["content"]
    if role == "assistant" and message.get("tool_calls"):
        text = f"\n{content.strip()}\n" if content.strip() else ""
        return f"{IM_START}assistant{text}{render_tool_calls(message['tool_calls'])}{IM_END}\n"
    if role == "tool":
        # The reference opens the user turn only when a previous message exists and is not a tool result,
        # so a tool result first in the loop (right after the system turn, or first overall) has no header.
        opens = index > 0 and messages[index - 1]["role"] != "tool"
        closes = index == len(messages) - 1 or messages[index + 1]["role"] != "tool"
        return (
            (f"{IM_START}user\n" if opens else "")
            + f"<tool_response>\n{content}\n</tool_response>\n"
            + (f"{IM_END}\n" if closes else "")
        )
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    tokenizer: Any = None,
) -> str:
    """Render `messages` (system/user/assistant with `tool_calls`/tool) and `tools` as Qwen3-Coder chat text.

    Tools are OpenAI-style `{"type": "function", "function": {...}}` or bare function dicts. Tool-call
    `arguments` may be a JSON string or a mapping. With `tokenizer` carrying a `chat_template`, the text comes
    from `tokenizer.apply_chat_template(..., tokenize=False)` instead, so a checkpoint's own template is used.
    `add_generation_prompt` appends `<|im_start|>assistant\\n`.
    """
    normalised = normalize_messages(messages)
    tool_list = list(tools) if tools else []
    for tool in tool_list:
        function_spec(tool)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            normalised, tools=tool_list or None, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    system = normalised[0]["content"] if normalised[0]["role"] == "system" else None
    turns = normalised[1:] if system is not None else normalised
    out = render_tools_system(system, tool_list)
    out += "".join(_render_message(turns, index) for index in range(len(turns)))
    return out + (GENERATION_PROMPT if add_generation_prompt else "")
