"""Turn calibration records into the text the served model reads: a text column as is, chat records rendered.

A record is chat when its column holds a list of messages (`{role, content, tool_calls?}`; `tool` messages are
tool responses); its optional `tools` column lists the tools offered. Chat is rendered by `qtools.chat.render_chat`
with the checkpoint's tokenizer, that is through `apply_chat_template` with the checkpoint's own chat template, so
tool definitions, tool calls and tool responses are laid out exactly as the served model sees them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qtools.calibration.sources import Records
from qtools.chat import render_chat
from qtools.errors import QtoolsError, some_names

TEXT_COLUMNS = ("messages", "text", "content")


def pick_column(records: Records, column: str | None) -> str:
    """`column` when given (it must exist), else the first of `messages`, `text`, `content` the records have."""
    if column is not None:
        if column not in records.columns:
            raise QtoolsError(
                f"calibration data {records.description} has no column {column!r}; its columns: "
                f"{some_names(list(records.columns), shown=20)}"
            )
        return column
    for name in TEXT_COLUMNS:
        if name in records.columns:
            return name
    raise QtoolsError(
        f"calibration data {records.description} has none of the columns {', '.join(TEXT_COLUMNS)}; its columns: "
        f"{some_names(list(records.columns), shown=20)}. Name the text column with --calibration-column"
    )


def drop_nulls(value: Any) -> Any:
    """`value` without the null entries of its mappings, recursively: Arrow fills every key a nested record
    lacks with null, and a template would render those as real (empty) arguments and schema fields."""
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


def _tools(row: dict[str, Any], where: str) -> list[Any] | None:
    tools = row.get("tools")
    if isinstance(tools, str):  # many datasets store the tool list as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as exc:
            raise QtoolsError(f"{where}: its 'tools' string is not JSON ({exc})") from exc
    if tools is not None and not isinstance(tools, list):
        raise QtoolsError(f"{where}: 'tools' must be a list of tool definitions, got {type(tools).__name__}")
    return tools or None


def document_text(records: Records, column: str, tokenizer: Any) -> Callable[[int], str]:
    """A function from record index to its text: the column's string, or its messages rendered (no generation
    prompt: the conversation is complete) with the tokenizer's chat template."""

    def text(index: int) -> str:
        row = records.rows[index]
        where = f"calibration data {records.description}, record {index}"
        value = row.get(column)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            messages, tools = value, _tools(row, where)
            if records.from_arrow:
                messages, tools = drop_nulls(messages), drop_nulls(tools)
            try:
                return render_chat(messages, tools, tokenizer=tokenizer)
            except QtoolsError as exc:
                raise QtoolsError(f"{where}: {exc}") from exc
            except Exception as exc:  # a template raises jinja2 errors (raise_exception) on conversations it refuses
                raise QtoolsError(f"{where}: the chat template cannot render it ({type(exc).__name__}: {exc})") from exc
        raise QtoolsError(
            f"{where}: column {column!r} holds {type(value).__name__}, expected text or a list of chat messages"
        )

    return text
