"""Parse Qwen3-Coder tool calls out of model output.

The model writes `<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n...`
`</function>\\n</tool_call>`.
A single left-to-right scan recovers what it can (like the reference `qwen3coder_tool_parser.py`) and records
one `ParseError` per malformation. A value ends at the first `</parameter>` followed (after whitespace) by
another tag or the end of the text, so XML-looking text inside a value, `</function>` included, stays in it;
a missing `</parameter>` is detected at a line starting with the next `<parameter=` of the schema (any name
without a schema), or at a `</function>` followed by `</tool_call>`, `<tool_call>` or the end of the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from qtools.chat.convert import convert_value
from qtools.chat.result import ErrorKind, ParseError, ParseResult, ToolCall
from qtools.chat.tools import index_tools, parameter_properties, required_parameters

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
FUNCTION_OPEN = "<function="
FUNCTION_CLOSE = "</function>"
PARAMETER_OPEN = "<parameter="
PARAMETER_CLOSE = "</parameter>"
# Tags after which a `</parameter>` really ends a value; EOF also counts.
VALUE_FOLLOWERS = (PARAMETER_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, FUNCTION_OPEN)
# Tags after which `</function>` (or `</tool_call>`) ends a call whose last value lacked `</parameter>`.
FUNCTION_FOLLOWERS = (TOOL_CALL_CLOSE, TOOL_CALL_OPEN)
# Tags that end a function block even when `</function>` is missing.
CALL_BOUNDARIES = (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, FUNCTION_OPEN)
NEXT_PARAMETER = re.compile(r"\n<parameter=([^>\n]+)>")
SNIPPET_CHARS = 40
UNCLOSED_TOOL_CALL = "`<tool_call>` not closed by `</tool_call>`"


def _snippet(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "...")


def _strip_one_newline(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _first(text: str, tags: Iterable[str], start: int) -> tuple[int, str | None]:
    """Earliest position of any of `tags` at or after `start`, and which; (len(text), None) when none."""
    best, which = len(text), None
    for tag in tags:
        at = text.find(tag, start, best + len(tag))
        if at != -1 and at < best:
            best, which = at, tag
    return best, which


class _Scanner:
    def __init__(self, text: str, tools: dict[str, Mapping[str, Any]] | None):
        self.text = text
        self.tools = tools
        self.calls: list[ToolCall] = []
        self.errors: list[ParseError] = []

    def error(self, kind: ErrorKind, message: str, parameter: str | None = None) -> None:
        """Record a malformation of the call being parsed (the next one to be appended)."""
        self.errors.append(ParseError(kind, message, call_index=len(self.calls), parameter=parameter))

    def outer_error(self, kind: ErrorKind, message: str, call_index: int | None) -> None:
        """Record a malformation found between calls, tied to `call_index` when it belongs to one."""
        self.errors.append(ParseError(kind, message, call_index=call_index))

    def followed_by(self, end: int, tags: tuple[str, ...]) -> bool:
        rest = self.skip_space(end)
        return rest == len(self.text) or self.text.startswith(tags, rest)

    def skip_space(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos].isspace():
            pos += 1
        return pos

    def header(self, pos: int, kind: ErrorKind, what: str) -> tuple[str, int]:
        """Name after `<function=`/`<parameter=` and where the body starts (the newline if `>` is missing)."""
        line_end = self.text.find("\n", pos)
        line_end = len(self.text) if line_end == -1 else line_end
        gt = self.text.find(">", pos, line_end)
        if gt != -1:
            return self.text[pos:gt].strip(), gt + 1
        name = self.text[pos:line_end].strip()
        parameter = name if what == PARAMETER_OPEN else None
        self.error(kind, f"`{what}{name}` has no closing `>`", parameter)
        return name, line_end

    def find_followed(self, tag: str, start: int, stop: int, followers: tuple[str, ...]) -> int | None:
        """First `tag` within [start, stop) followed, after whitespace, by one of `followers` or the end."""
        at = self.text.find(tag, start, stop)
        while at != -1 and not self.followed_by(at + len(tag), followers):
            at = self.text.find(tag, at + 1, stop)
        return None if at == -1 else at

    def value_end(self, start: int, properties: Mapping[str, Any] | None) -> tuple[int, bool]:
        """End of the value starting at `start`, and whether a proper `</parameter>` ends it."""
        closed_at = self.find_followed(PARAMETER_CLOSE, start, len(self.text), VALUE_FOLLOWERS)
        bound = len(self.text) if closed_at is None else closed_at
        ends = [bound]
        for match in NEXT_PARAMETER.finditer(self.text, start, bound):
            if properties is None or match.group(1).strip() in properties:
                ends.append(match.start())
                break
        for tag in (FUNCTION_CLOSE, TOOL_CALL_CLOSE):
            at = self.find_followed(tag, start, bound, FUNCTION_FOLLOWERS)
            ends.append(bound if at is None else at)
        at = self.text.find(TOOL_CALL_OPEN, start, bound)
        ends.append(bound if at == -1 else at)
        end = min(ends)
        return end, closed_at is not None and end == closed_at

    def parameter(self, pos: int, name_of_call: str, properties: Mapping[str, Any] | None, args: dict) -> int:
        name, start = self.header(pos + len(PARAMETER_OPEN), ErrorKind.PARAMETER_WITHOUT_GT, PARAMETER_OPEN)
        end, closed = self.value_end(start, properties)
        if not closed:
            self.error(ErrorKind.MISSING_PARAMETER_CLOSE, f"parameter {name!r} has no `</parameter>`", name)
        raw = _strip_one_newline(self.text[start:end])
        if name in args:
            message = f"parameter {name!r} given twice; the last value wins"
            self.error(ErrorKind.DUPLICATE_PARAMETER, message, name)
        schema = None
        if properties is not None:
            schema = properties.get(name)
            if name not in properties:
                self.error(ErrorKind.UNKNOWN_PARAMETER, f"{name_of_call!r} has no parameter {name!r}", name)
        value, problem = convert_value(raw, schema)
        if problem is not None:
            self.error(problem[0], f"parameter {name!r}: {problem[1]}", name)
        args[name] = value
        return end + len(PARAMETER_CLOSE) if closed else end

    def function(self, pos: int) -> int:
        name, pos = self.header(pos + len(FUNCTION_OPEN), ErrorKind.FUNCTION_WITHOUT_GT, FUNCTION_OPEN)
        spec = None
        if self.tools is not None:
            spec = self.tools.get(name)
            if spec is None:
                self.error(ErrorKind.UNKNOWN_FUNCTION, f"function {name!r} is not among the tools given")
        properties = parameter_properties(spec) if spec is not None else None
        args: dict[str, Any] = {}
        while True:
            pos = self.skip_space(pos)
            if self.text.startswith(PARAMETER_OPEN, pos):
                pos = self.parameter(pos, name, properties, args)
            elif self.text.startswith(FUNCTION_CLOSE, pos):
                pos += len(FUNCTION_CLOSE)
                break
            elif pos >= len(self.text) or self.text.startswith(CALL_BOUNDARIES, pos):
                self.error(ErrorKind.MISSING_FUNCTION_CLOSE, f"function {name!r} has no `</function>`")
                break
            else:
                stop, _ = _first(self.text, (PARAMETER_OPEN, FUNCTION_CLOSE, *CALL_BOUNDARIES), pos)
                message = f"text inside {name!r} ignored: {_snippet(self.text[pos:stop])}"
                self.error(ErrorKind.UNEXPECTED_TEXT, message)
                pos = stop
        for required in required_parameters(spec) if spec is not None else ():
            if required not in args:
                self.error(ErrorKind.MISSING_REQUIRED_PARAMETER, f"{name!r} needs {required!r}", required)
        self.calls.append(ToolCall(name, args))
        return pos

    def run(self, pos: int) -> None:
        in_call = implicit = False
        functions_in_call = 0
        while True:
            at, tag = _first(self.text, (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, FUNCTION_OPEN), pos)
            last = len(self.calls) - 1 if functions_in_call else None
            if self.text[pos:at].strip():
                message = f"text between calls ignored: {_snippet(self.text[pos:at])}"
                self.outer_error(ErrorKind.UNEXPECTED_TEXT, message, None)
            if tag is None:
                break
            if tag == TOOL_CALL_OPEN:
                if in_call and not implicit:
                    self.outer_error(ErrorKind.MISSING_TOOL_CALL_CLOSE, UNCLOSED_TOOL_CALL, last)
                in_call, implicit, functions_in_call = True, False, 0
                pos = at + len(tag)
            elif tag == TOOL_CALL_CLOSE:
                if not in_call:
                    message = "`</tool_call>` without `<tool_call>`"
                    self.outer_error(ErrorKind.UNMATCHED_TOOL_CALL_CLOSE, message, None)
                elif functions_in_call == 0:
                    message = "`<tool_call>` holds no `<function=` block"
                    self.outer_error(ErrorKind.EMPTY_TOOL_CALL, message, None)
                in_call = implicit = False
                pos = at + len(tag)
            else:
                if not in_call or (implicit and functions_in_call > 0):
                    self.error(ErrorKind.MISSING_TOOL_CALL_OPEN, "`<function=` block without `<tool_call>`")
                    in_call, implicit, functions_in_call = True, True, 0
                elif functions_in_call > 0:
                    message = "a second `<function=` block inside one `<tool_call>`"
                    self.error(ErrorKind.EXTRA_FUNCTION, message)
                functions_in_call += 1
                pos = self.function(at)
        if in_call and not implicit:
            last = len(self.calls) - 1 if functions_in_call else None
            self.outer_error(ErrorKind.MISSING_TOOL_CALL_CLOSE, UNCLOSED_TOOL_CALL, last)


def parse_tool_calls(text: str, tools: Iterable[Mapping[str, Any]] | None = None) -> ParseResult:
    """Split model output into content and tool calls, typing each argument by the schema in `tools`.

    `content` is the text before the first `<tool_call>` (or stray `<function=`), trailing whitespace removed,
    None when empty. Without `tools` every argument stays text except `null` (None); with `tools`, unknown
    functions, unknown or missing required parameters and unconvertible values are reported in `errors`.
    The output is never evaluated: objects and arrays go through `json.loads`, then `ast.literal_eval`.
    """
    start, _ = _first(text, (TOOL_CALL_OPEN, FUNCTION_OPEN), 0)
    content = text[:start].rstrip() or None
    scanner = _Scanner(text, index_tools(tools))
    if start < len(text):
        scanner.run(start)
    return ParseResult(content=content, tool_calls=scanner.calls, errors=scanner.errors)
