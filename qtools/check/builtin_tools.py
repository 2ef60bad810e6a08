"""The generic built-in tool-call prompts: a few realistic tool schemas and requests, each with the call (or
no call) a correct model makes. Used when the reference checkpoint brings no suite of its own."""

from __future__ import annotations

from typing import Any

from qtools.chat.tools import function_tool
from qtools.toy.tool_schemas import CONVERT as CONVERT_CURRENCY
from qtools.toy.tool_schemas import WEATHER as GET_WEATHER

READ_FILE = function_tool(
    "read_file",
    "Read a text file from the repository.",
    {
        "path": {"type": "string", "description": "Path relative to the repository root"},
        "max_lines": {"type": "integer", "description": "Read at most this many lines"},
    },
    ["path"],
)
RUN_TESTS = function_tool(
    "run_tests",
    "Run the project's test suite, optionally a subset.",
    {
        "pattern": {"type": "string", "description": "Only tests whose name matches this pattern"},
        "verbose": {"type": "boolean", "description": "Print every test name"},
    },
    [],
)
SEARCH_CODE = function_tool(
    "search_code",
    "Search the repository for a regular expression.",
    {
        "regex": {"type": "string", "description": "Regular expression to look for"},
        "file_types": {"type": "array", "items": {"type": "string"}, "description": "File extensions to search"},
    },
    ["regex"],
)
CREATE_ISSUE = function_tool(
    "create_issue",
    "Open an issue in the tracker.",
    {
        "title": {"type": "string", "description": "Issue title"},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "Labels to attach"},
        "priority": {"type": "integer", "description": "1 (highest) to 4"},
    },
    ["title"],
)

CODING_TOOLS = [READ_FILE, RUN_TESTS, SEARCH_CODE, CREATE_ISSUE]
EVERYDAY_TOOLS = [GET_WEATHER, CONVERT_CURRENCY, SEARCH_CODE]


def _call(name: str, **arguments: Any) -> list[dict[str, Any]]:
    return [{"name": name, "arguments": arguments}]


# (tools, user request, expected calls); [] expects a plain answer with no call.
BUILTIN_TOOL_PROMPTS: list[tuple[list[dict[str, Any]], str, list[dict[str, Any]]]] = [
    (
        CODING_TOOLS,
        "Show me the first 40 lines of src/app/main.py.",
        _call("read_file", path="src/app/main.py", max_lines=40),
    ),
    (CODING_TOOLS, "Open setup.cfg.", _call("read_file", path="setup.cfg")),
    (
        CODING_TOOLS,
        "Run only the tests matching 'test_parser', verbosely.",
        _call("run_tests", pattern="test_parser", verbose=True),
    ),
    (CODING_TOOLS, "Run the whole test suite.", _call("run_tests")),
    (
        CODING_TOOLS,
        "Find every use of 'load_config(' in the Python and YAML files.",
        _call("search_code", regex="load_config\\(", file_types=["py", "yaml"]),
    ),
    (
        CODING_TOOLS,
        "File an issue titled 'Crash on empty input' with labels bug and parser, priority 1.",
        _call("create_issue", title="Crash on empty input", labels=["bug", "parser"], priority=1),
    ),
    (CODING_TOOLS, "What does the 'yield' keyword do in Python?", []),
    (
        EVERYDAY_TOOLS,
        "What's the weather like in Lisbon right now, in celsius?",
        _call("get_weather", city="Lisbon", unit="celsius"),
    ),
    (EVERYDAY_TOOLS, "How warm is it in Seattle?", _call("get_weather", city="Seattle")),
    (
        EVERYDAY_TOOLS,
        "Convert 250 euros to Japanese yen.",
        _call("convert_currency", amount=250, from_currency="EUR", to_currency="JPY"),
    ),
    (
        EVERYDAY_TOOLS,
        "How much is 19.99 USD in GBP?",
        _call("convert_currency", amount=19.99, from_currency="USD", to_currency="GBP"),
    ),
    (EVERYDAY_TOOLS, "Thanks, that's all for today!", []),
]
