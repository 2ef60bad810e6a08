"""The tool half of the built-in calibration data: agentic coding conversations with tool calls and responses.

Each conversation offers a seeded subset of six coding-agent tools and follows one of these shapes: read a file
(the response is a window of real code), search the code (matching lines), run a command (test output), write a
file (a function taken from real code as the `content` argument), two calls in one turn (two responses in one
user turn), or a plain question answered without a call. The code in them comes from the same training-side
standard-library files as the code half, so tool responses carry code as they do in agentic use.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from qtools.chat.tools import function_tool

_STRING = {"type": "string"}
TOOLS = {
    "read_file": function_tool(
        "read_file",
        "Read a text file of the repository and return its lines.",
        {
            "path": {**_STRING, "description": "path relative to the repository root"},
            "start_line": {"type": "integer", "description": "first line to return (1-based)"},
        },
        ["path"],
    ),
    "search_code": function_tool(
        "search_code",
        "Search the repository for a regular expression and return matching lines with their locations.",
        {
            "pattern": {**_STRING, "description": "a Python regular expression"},
            "max_results": {"type": "integer", "description": "most matches returned"},
        },
        ["pattern"],
    ),
    "run_command": function_tool(
        "run_command",
        "Run a shell command in the repository and return its exit status and output.",
        {
            "command": {**_STRING, "description": "the command line"},
            "timeout": {"type": "integer", "description": "seconds before the command is stopped"},
        },
        ["command"],
    ),
    "write_file": function_tool(
        "write_file",
        "Create or overwrite a file with the given content.",
        {"path": _STRING, "content": {**_STRING, "description": "the complete new file content"}},
        ["path", "content"],
    ),
    "list_directory": function_tool("list_directory", "List the entries of a directory.", {"path": _STRING}, ["path"]),
    "web_search": function_tool(
        "web_search",
        "Search the web and return titles and snippets.",
        {"query": _STRING, "max_results": {"type": "integer"}},
        ["query"],
    ),
}
QUESTIONS = (
    "What is the difference between a list and a tuple in Python?",
    "Explain what a context manager is, briefly.",
    "When should I use a dataclass instead of a dict?",
    "How do generators save memory?",
)
ANSWERS = (
    "A list is mutable and a tuple is not; tuples can be dictionary keys and signal a fixed structure.",
    "A context manager pairs setup with guaranteed cleanup through `with`, via `__enter__` and `__exit__`.",
    "Use a dataclass when the fields are known in advance: you get types, defaults and a readable repr.",
    "A generator yields one item at a time instead of building the whole sequence in memory.",
)
DEF = re.compile(r"^def (\w+)\(", re.MULTILINE)


def _window(rng: random.Random, text: str, lines: int) -> tuple[int, str]:
    rows = text.splitlines()
    start = rng.randrange(max(1, len(rows) - lines))
    return start + 1, "\n".join(rows[start : start + lines])


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


Turn = tuple[str, list[dict[str, Any]], list[str], str, str]
"""(request, tool calls, tool responses, final answer, the tool used) of one conversation."""


def _read_file(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    path = f"{rng.choice(('src', 'lib', 'app'))}/{name}"
    first, body = _window(rng, text, rng.randint(12, 40))
    request = f"Show me {path} around line {first} and tell me what it does."
    answer = f"Lines {first} onwards of {path} are shown above: part of the {name[:-3]} module."
    return request, [_call("read_file", path=path, start_line=first)], [body], answer, "read_file"


def _search_code(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    target = rng.choice(DEF.findall(text) or ["main"])
    hits = [f"src/{name}:{number}: {line}" for number, line in enumerate(text.splitlines(), 1) if target in line]
    calls = [_call("search_code", pattern=rf"\b{target}\b", max_results=rng.choice((10, 20, 50)))]
    answer = f"{target} appears {len(hits)} times, all in src/{name}."
    return f"Where is {target} used?", calls, ["\n".join(hits[:20])], answer, "search_code"


def _run_tests(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    passed, failed = rng.randint(3, 200), rng.choice((0, 0, 1, 2))
    output = f"exit status {int(failed > 0)}\n" + "." * min(passed, 60) + "F" * failed
    output += f"\n{passed} passed" + (f", {failed} failed" if failed else "") + f" in {rng.uniform(0.2, 30):.2f}s"
    calls = [_call("run_command", command=f"python -m pytest -q tests/test_{name}", timeout=rng.choice((60, 300)))]
    answer = "All tests pass." if not failed else f"{failed} test(s) fail; I will look at the first failure."
    return f"Run the tests for {name[:-3]}.", calls, [output], answer, "run_command"


def _write_file(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    path = f"app/{name}"
    _, body = _window(rng, text, rng.randint(8, 30))
    request = f"Save this snippet as {path}:\n```python\n{body}\n```"
    calls = [_call("write_file", path=path, content=body)]
    return request, calls, [f"wrote {len(body.encode())} bytes to {path}"], f"Saved {path}.", "write_file"


def _compare_files(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    other, other_text = rng.choice(code)
    bodies = [_window(rng, text, rng.randint(8, 20))[1], _window(rng, other_text, rng.randint(8, 20))[1]]
    calls = [_call("read_file", path=f"src/{name}"), _call("read_file", path=f"lib/{other}")]
    answer = f"{name} and {other} solve different problems; see the excerpts."
    return f"Compare {name} and {other}.", calls, bodies, answer, "read_file"


def _plain_answer(rng: random.Random, name: str, text: str, code: list[tuple[str, str]]) -> Turn:
    index = rng.randrange(len(QUESTIONS))
    return QUESTIONS[index], [], [], ANSWERS[index], rng.choice(tuple(TOOLS))


SHAPES = (_read_file, _search_code, _run_tests, _write_file, _compare_files, _plain_answer)


def tool_conversations(rng: random.Random, code: list[tuple[str, str]]) -> Iterator[tuple[list[dict], list[dict]]]:
    """An endless stream of (messages, tools) drawn from `rng`; the code windows come from `code`
    ((name, text) pairs)."""
    names = tuple(TOOLS)
    while True:
        name, text = rng.choice(code)
        request, calls, responses, answer, used = rng.choice(SHAPES)(rng, name, text, code)
        offered = [used, *rng.sample([name for name in names if name != used], rng.randint(1, 4))]
        rng.shuffle(offered)
        messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
        if calls:
            thought = rng.choice(("", "", "Let me check.", "I'll look at the repository first."))
            messages.append({"role": "assistant", "content": thought, "tool_calls": calls})
            messages.extend({"role": "tool", "content": response} for response in responses)
        messages.append({"role": "assistant", "content": answer})
        yield messages, [TOOLS[name] for name in offered]
