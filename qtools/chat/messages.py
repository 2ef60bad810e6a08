"""Normalise a conversation before rendering, so the built-in renderer and Jinja templates see the same data.

Tool-call `arguments` may arrive as a JSON string (OpenAI wire format) or a mapping; templates need a mapping.
Content may be None or a list of OpenAI content parts; templates need a string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from qtools.errors import QtoolsError


def _text(content: Any, role: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(
        isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    if role == "tool":
        return json.dumps(content, ensure_ascii=False)
    raise QtoolsError(
        f"{role} message content must be a string or a list of text parts "
        f"([{{'type': 'text', 'text': ...}}]; the model reads text only), got {content!r}"
    )


def _arguments(arguments: Any, name: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise QtoolsError(f"tool call {name!r}: arguments string is not JSON ({exc})") from exc
    if not isinstance(arguments, Mapping):
        raise QtoolsError(f"tool call {name!r}: arguments must be a JSON object, got {arguments!r}")
    return dict(arguments)


def _tool_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise QtoolsError(f"a tool call must be a dict, got {call!r}")
    function = call["function"] if "function" in call else call
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise QtoolsError(f"a tool call needs a function name, got {call!r}")
    normalised = {key: value for key, value in call.items() if key != "function"}
    normalised["type"] = "function"
    normalised["function"] = {"name": name, "arguments": _arguments(function.get("arguments"), name)}
    return normalised


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy of `messages` with string content and each tool call as
    `{"type": "function", "function": {"name": str, "arguments": dict}}`.

    Raises QtoolsError for an empty conversation, a message without a role, or arguments that are not a
    JSON object.
    """
    if not messages:
        raise QtoolsError("cannot render an empty conversation: pass at least one message")
    normalised = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise QtoolsError(f"each message needs a string 'role', got {message!r}")
        copy = dict(message)
        copy["content"] = _text(message.get("content"), message["role"])
        if message.get("tool_calls"):
            copy["tool_calls"] = [_tool_call(call) for call in message["tool_calls"]]
        normalised.append(copy)
    return normalised
