"""Generated conversations for the toy model: tool calls, tool round trips, plain answers, code, FIM.

Each generator draws from a `random.Random` it is given, so a seed fixes the whole data set. A `Chat` holds
messages in the OpenAI shape that `qtools.chat.render_chat` accepts, the tools offered, and, for tool-call
requests, the call a correct model makes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from qtools.chat import fim_messages
from qtools.toy.tools_suite import TOOL_SPECS, ToolSpec, compose_request

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are an assistant that can use tools.",
    "You help users with everyday tasks.",
)
HELDOUT_SYSTEM_PROMPTS = ("You are a friendly assistant with access to some functions.",)

QUESTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("What is a Python decorator?", "Explain decorators in Python."),
        "A decorator is a function that takes another function and returns a new one that adds behaviour to it.",
    ),
    (
        ("What does the yield keyword do?", "Explain yield in Python."),
        "yield turns a function into a generator: each yield hands one value to the caller and pauses the function.",
    ),
    (
        ("What is the difference between a list and a tuple?", "List vs tuple in Python?"),
        "A list is mutable and can change size; a tuple is immutable, so it can be used as a dictionary key.",
    ),
    (
        ("What is recursion?", "Explain recursion briefly."),
        "Recursion is when a function calls itself on a smaller input until it reaches a base case.",
    ),
    (
        ("What does git rebase do?", "Explain git rebase."),
        "git rebase replays your commits on top of another branch, giving a linear history.",
    ),
    (
        ("What is a hash map?", "How does a dictionary work?"),
        "A hash map stores key-value pairs in buckets chosen by the hash of the key, so lookups take constant time.",
    ),
    (("Hello!", "Hi there!"), "Hello! How can I help you today?"),
    (("Thanks, that's all.", "Thank you!"), "You're welcome! Let me know if you need anything else."),
    (
        ("What is Big O notation?", "Explain Big O."),
        "Big O describes how the running time or memory of an algorithm grows with the size of its input.",
    ),
    (
        ("What is a race condition?", "Explain race conditions."),
        "A race condition happens when the result depends on the timing of threads that share data without locks.",
    ),
    (
        ("Who are you?", "What can you do?"),
        "I am a small assistant: I can answer programming questions and call the tools I am given.",
    ),
    (
        ("What is a unit test?", "Why write unit tests?"),
        "A unit test checks one small piece of code in isolation, so a change that breaks it is caught early.",
    ),
)
HELDOUT_QUESTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("Can you explain what a decorator is in Python?",), QUESTIONS[0][1]),
    (("Briefly, what is recursion in programming?",), QUESTIONS[3][1]),
    (("Good evening!",), QUESTIONS[6][1]),
    (("Please explain what Big O notation means.",), QUESTIONS[8][1]),
)

LIST_TASKS = (
    (
        "the sum of a list of numbers",
        "total",
        "total = 0\n    for value in values:\n        total += value\n    return total",
    ),
    ("the largest value in a list", "largest", "return max(values)"),
    ("the average of a list of numbers", "average", "return sum(values) / len(values)"),
    ("a list with the items in reverse order", "reverse_list", "return values[::-1]"),
    ("the squares of the numbers in a list", "squares", "return [value * value for value in values]"),
    ("only the even numbers of a list", "evens", "return [value for value in values if value % 2 == 0]"),
    ("how many numbers in a list are positive", "count_positive", "return sum(1 for value in values if value > 0)"),
    ("a list sorted in descending order", "sort_descending", "return sorted(values, reverse=True)"),
    ("the distinct items of a list in their original order", "unique", "return list(dict.fromkeys(values))"),
    (
        "the product of a list of numbers",
        "product",
        "result = 1\n    for value in values:\n        result *= value\n    return result",
    ),
)
TEXT_TASKS = (
    ("a string reversed", "reverse_text", "return text[::-1]"),
    ("a string in upper case", "shout", "return text.upper()"),
    ("the number of vowels in a string", "count_vowels", 'return sum(1 for char in text.lower() if char in "aeiou")'),
    ("True when a string is a palindrome", "is_palindrome", "return text == text[::-1]"),
    ("the words of a sentence", "words", "return text.split()"),
)
CODING_REQUESTS = (
    "Write a Python function named {name} that returns {task}.",
    "Implement {name}({arg}) in Python: it should return {task}.",
    "I need a Python function {name} that computes {task}.",
)


@dataclass
class Chat:
    """A conversation to train on or to ask: messages, the tools offered, and the call expected if any."""

    kind: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    expected_call: dict[str, Any] | None = None


def _system(rng: random.Random, heldout: bool) -> list[dict[str, Any]]:
    """No system message half the time (the template's default system text is used), else a short one."""
    if rng.random() < 0.5:
        return []
    return [{"role": "system", "content": rng.choice(HELDOUT_SYSTEM_PROMPTS if heldout else SYSTEM_PROMPTS)}]


def _offered_tools(rng: random.Random, include: ToolSpec | None, count: int) -> list[dict[str, Any]]:
    """`count` tools in random order, `include` among them, the rest drawn from the other tools."""
    others = [spec for spec in TOOL_SPECS if spec is not include]
    chosen = rng.sample(others, count - (include is not None))
    if include is not None:
        chosen.append(include)
    rng.shuffle(chosen)
    return [spec.schema for spec in chosen]


def tool_call_chat(rng: random.Random, spec: ToolSpec | None = None, heldout: bool = False, max_tools: int = 4) -> Chat:
    """A request that one of the offered tools answers; the assistant turn is that call and nothing else."""
    spec = spec or rng.choice(TOOL_SPECS)
    turn = _tool_turn(rng, spec, answered=False, heldout=heldout)
    messages = [*_system(rng, heldout), *turn]
    tools = _offered_tools(rng, spec, rng.randint(2, max_tools))
    return Chat("tool_call", messages, tools, _call_of(turn))


def bare_call_chat(rng: random.Random) -> Chat:
    """A request answered by a call with no tool list rendered: a short sequence that teaches which request
    words pick which tool. The tool list is what makes real prompts long; without it the link from request to
    name is learned in a fraction of the steps, and carries over to prompts that list the tools."""
    turn = _tool_turn(rng, rng.choice(TOOL_SPECS), answered=False)
    return Chat("bare_call", turn, None, _call_of(turn))


def _call_of(turn: list[dict[str, Any]]) -> dict[str, Any]:
    """The call made by the assistant message of a `_tool_turn` without a result."""
    return turn[-1]["tool_calls"][0]["function"]


def _tool_turn(rng: random.Random, spec: ToolSpec, answered: bool, heldout: bool = False) -> list[dict[str, Any]]:
    """A request for `spec`, the call, and (when `answered`) the tool's result and the reply built from it."""
    request, arguments = compose_request(spec, rng, heldout)
    call = {"name": spec.name, "arguments": arguments}
    turn = [
        {"role": "user", "content": request},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
    ]
    if answered:
        result = spec.respond(arguments, rng)
        turn += [{"role": "tool", "content": result}, {"role": "assistant", "content": spec.reply(arguments, result)}]
    return turn


def tool_session_chat(rng: random.Random, max_tools: int = 4, max_turns: int = 4) -> Chat:
    """A conversation over 2..`max_tools` offered tools: 1..`max_turns` requests, each calling a different
    offered tool (its result and the reply follow, except perhaps after the last), and now and then a question
    no tool fits, answered in prose.

    Several requests share one rendering of the tool list, so the long system turn is paid for once.
    """
    offered = rng.sample(TOOL_SPECS, rng.randint(min(2, max_tools), max_tools))
    # Each offered tool is called at most once, so a later request cannot be answered by repeating an earlier
    # call's name: every call has to be chosen from the request.
    called = rng.sample(offered, rng.randint(1, min(len(offered), max_turns)))
    plan: list[ToolSpec | None] = [*called, *([None] * sum(rng.random() < 0.15 for _ in called))]
    rng.shuffle(plan)
    messages = _system(rng, heldout=False)
    for turn, spec in enumerate(plan):
        if spec is None:
            phrasings, answer = rng.choice(QUESTIONS)
            messages += [{"role": "user", "content": rng.choice(phrasings)}, {"role": "assistant", "content": answer}]
        else:
            answered = turn < len(plan) - 1 or rng.random() < 0.5
            messages += _tool_turn(rng, spec, answered)
    return Chat("tool_session", messages, [spec.schema for spec in offered])


def plain_answer_chat(rng: random.Random, heldout: bool = False, max_tools: int = 3) -> Chat:
    """A question none of the offered tools fits (sometimes no tools at all), answered in prose."""
    phrasings, answer = rng.choice(HELDOUT_QUESTIONS if heldout else QUESTIONS)
    tools = _offered_tools(rng, None, rng.randint(1, max_tools)) if rng.random() < 0.8 else None
    messages = [
        *_system(rng, heldout),
        {"role": "user", "content": rng.choice(phrasings)},
        {"role": "assistant", "content": answer},
    ]
    return Chat("plain_answer", messages, tools)


def coding_chat(rng: random.Random) -> Chat:
    """A request for a small Python function, answered with the function in a fenced block."""
    if rng.random() < 0.65:
        task, name, body = rng.choice(LIST_TASKS)
        arg = "values"
    else:
        task, name, body = rng.choice(TEXT_TASKS)
        arg = "text"
    request = rng.choice(CODING_REQUESTS).format(name=name, task=task, arg=arg)
    answer = f"```python\ndef {name}({arg}):\n    {body}\n```"
    messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
    return Chat("coding", messages)


def split_for_fim(
    code: str, rng: random.Random, prefix_chars: int = 400, suffix_chars: int = 200, max_middle_lines: int = 2
) -> tuple[str, str, str] | None:
    """Cut `code` into (prefix, middle, suffix) at line boundaries; the middle is 1..`max_middle_lines`
    non-blank lines. None when the text has too few lines."""
    lines = code.splitlines(keepends=True)
    candidates = [index for index in range(2, len(lines) - 2) if lines[index].strip()]
    if not candidates:
        return None
    start = rng.choice(candidates)
    stop = min(start + rng.randint(1, max_middle_lines), len(lines))
    prefix = "".join(lines[:start])
    suffix = "".join(lines[stop:])
    cut = prefix.find("\n", max(0, len(prefix) - prefix_chars))
    prefix = prefix[cut + 1 :] if len(prefix) > prefix_chars and cut != -1 else prefix
    end = suffix.rfind("\n", 0, suffix_chars)
    suffix = suffix[: end + 1] if len(suffix) > suffix_chars and end != -1 else suffix
    return prefix, "".join(lines[start:stop]), suffix


def fim_chat(code: str, rng: random.Random) -> Chat | None:
    """A fill-in-the-middle request built from `code`; the assistant writes the missing lines."""
    parts = split_for_fim(code, rng)
    if parts is None:
        return None
    prefix, middle, suffix = parts
    messages = [*fim_messages(prefix, suffix), {"role": "assistant", "content": middle}]
    return Chat("fim", messages)
