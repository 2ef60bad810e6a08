"""What `parse_tool_calls` returns: the content, the typed calls, and one error per malformation found."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """The fixed set of malformations the parser reports."""

    MISSING_PARAMETER_CLOSE = "missing_parameter_close"  # a value not ended by `</parameter>`
    MISSING_FUNCTION_CLOSE = "missing_function_close"  # a `<function=` block not ended by `</function>`
    MISSING_TOOL_CALL_OPEN = "missing_tool_call_open"  # a `<function=` block outside `<tool_call>`
    MISSING_TOOL_CALL_CLOSE = "missing_tool_call_close"  # a `<tool_call>` not ended by `</tool_call>`
    UNMATCHED_TOOL_CALL_CLOSE = "unmatched_tool_call_close"  # a `</tool_call>` with no open call
    EMPTY_TOOL_CALL = "empty_tool_call"  # `<tool_call>` ... `</tool_call>` without a `<function=` block
    EXTRA_FUNCTION = "extra_function"  # a second `<function=` block inside one `<tool_call>`
    FUNCTION_WITHOUT_GT = "function_without_gt"  # `<function=NAME` with no `>` on its line
    PARAMETER_WITHOUT_GT = "parameter_without_gt"  # `<parameter=NAME` with no `>` on its line
    UNEXPECTED_TEXT = "unexpected_text"  # text after the first call that is not part of any call
    UNKNOWN_FUNCTION = "unknown_function"  # a function name absent from `tools`
    UNKNOWN_PARAMETER = "unknown_parameter"  # a parameter absent from the function's schema (kept as text)
    DUPLICATE_PARAMETER = "duplicate_parameter"  # the same parameter twice in one call (the last one wins)
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"  # a `required` parameter not given
    TYPE_CONVERSION = "type_conversion"  # a value not convertible to its schema type (kept as text)
    PYTHON_LITERAL = "python_literal"  # an object/array given as a Python literal instead of JSON
    ENUM_MISMATCH = "enum_mismatch"  # a value outside the schema's `enum`


# Malformations of the call syntax itself; the rest are schema problems (unknown name, wrong types...).
FORMAT_ERRORS = frozenset(
    {
        ErrorKind.MISSING_PARAMETER_CLOSE,
        ErrorKind.MISSING_FUNCTION_CLOSE,
        ErrorKind.MISSING_TOOL_CALL_OPEN,
        ErrorKind.MISSING_TOOL_CALL_CLOSE,
        ErrorKind.UNMATCHED_TOOL_CALL_CLOSE,
        ErrorKind.EMPTY_TOOL_CALL,
        ErrorKind.EXTRA_FUNCTION,
        ErrorKind.FUNCTION_WITHOUT_GT,
        ErrorKind.PARAMETER_WITHOUT_GT,
        ErrorKind.UNEXPECTED_TEXT,
    }
)


@dataclass(frozen=True)
class ParseError:
    """One malformation: its `kind`, a human `message`, and where it was found when known."""

    kind: ErrorKind
    message: str
    call_index: int | None = None
    parameter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; unknown location fields are left out."""
        out: dict[str, Any] = {"kind": str(self.kind), "message": self.message}
        if self.call_index is not None:
            out["call_index"] = self.call_index
        if self.parameter is not None:
            out["parameter"] = self.parameter
        return out


@dataclass
class ToolCall:
    """A parsed call: the function `name` and its `arguments`, typed by the tool's JSON schema."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., "arguments": {...}}`."""
        return {"name": self.name, "arguments": self.arguments}

    def to_openai(self) -> dict[str, Any]:
        """OpenAI wire form: `{"type": "function", "function": {"name", "arguments": JSON string}}`."""
        arguments = json.dumps(self.arguments, ensure_ascii=False)
        return {"type": "function", "function": {"name": self.name, "arguments": arguments}}


@dataclass
class ParseResult:
    """Text before the first call (`content`, None if empty), the calls, and the malformations found."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no malformation was found."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with `content`, `tool_calls` and `errors`."""
        return {
            "content": self.content,
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "errors": [error.to_dict() for error in self.errors],
        }
