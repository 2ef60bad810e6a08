"""What `qtools check` evaluates on: held-out code, tool-call prompts, fill-in-the-middle prompts.

- code: top-level standard-library modules of the running Python whose SHA-256 of the file name falls in
  bucket 0 of 10. It is the same split `qtools.toy` holds out of its training, so the toy never saw them.
- tools: the generic built-in prompts of `builtin_tools.py`; when the reference is the project's toy model
  (its directory holds `toy_gate.json`), the toy's held-out tool requests instead (phrasings and argument
  values kept out of its training), cycling over every tool, plus held-out plain questions that expect no call.
- fim: (prefix, middle, suffix) cut from the held-out code at line boundaries, the middle 1-2 lines.
- user JSONL (`--suite-file`, extends the built-in suites), one object per line, by `kind`:
  `{"kind": "code", "text": "..."}`, `{"kind": "tools", "messages": [...], "tools": [...],
  "expected_calls": [{"name": ..., "arguments": {...}}]}` (`expected_calls` optional; `[]` = no call) and
  `{"kind": "fim", "prefix": "...", "suffix": "...", "middle": "..."}` (`middle` optional).
Everything is drawn from `random.Random(seed)`, so a seed fixes the suites.
"""

from __future__ import annotations

import json
import random
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qtools.check.builtin_tools import BUILTIN_TOOL_PROMPTS
from qtools.errors import QtoolsError
from qtools.toy.code_corpus import CodeFile, load_code_files
from qtools.toy.conversations import split_for_fim

SUITE_NAMES = ("code", "tools", "fim", "weights")
TOY_MARKER = "toy_gate.json"
FIM_WINDOW_CHARS = 2000


class SuiteSizes(BaseModel):
    """How much of each suite to run; the defaults are sized for a small model on a CPU (a few minutes)."""

    model_config = ConfigDict(extra="forbid")

    code_tokens: int = Field(16384, ge=2, description="held-out code tokens scored teacher-forced")
    window: int = Field(1024, ge=2, description="tokens per scored window (each window's first is context)")
    continuation_prompts: int = Field(16, ge=0, description="greedy code continuations compared")
    continuation_prompt_tokens: int = Field(64, ge=1)
    continuation_new_tokens: int = Field(32, ge=1)
    tool_prompts: int = Field(48, ge=0, description="most tool prompts (the toy suite cycles over its tools)")
    tool_new_tokens: int = Field(96, ge=1)
    fim_prompts: int = Field(16, ge=0)
    fim_new_tokens: int = Field(48, ge=1)


@dataclass
class ToolPrompt:
    """A conversation ending in a user turn, the tools offered, and the calls a correct model makes (None when
    unknown, [] when the right answer calls nothing)."""

    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    expected_calls: list[dict[str, Any]] | None = None


@dataclass
class FimPrompt:
    """A fill-in-the-middle request and its ground-truth middle (None when unknown)."""

    id: str
    prefix: str
    suffix: str
    middle: str | None = None


@dataclass
class Suites:
    """Everything one check evaluates on; `sources` says where each part came from."""

    code: list[CodeFile] = field(default_factory=list)
    tools: list[ToolPrompt] = field(default_factory=list)
    fim: list[FimPrompt] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def heldout_code() -> list[CodeFile]:
    """Held-out standard-library modules in name order (the split `qtools.toy` keeps out of training)."""
    return load_code_files(heldout=True)


def fim_prompts(code: list[CodeFile], count: int, rng: random.Random) -> list[FimPrompt]:
    """`count` FIM prompts cut from FIM_WINDOW_CHARS windows of the longer texts in `code`."""
    sources = [item for item in code if len(item.text) > FIM_WINDOW_CHARS]
    prompts: list[FimPrompt] = []
    while len(prompts) < count and sources:
        item = rng.choice(sources)
        start = rng.randrange(len(item.text) - FIM_WINDOW_CHARS)
        parts = split_for_fim(item.text[start : start + FIM_WINDOW_CHARS], rng)
        if parts is not None:
            prompts.append(FimPrompt(f"fim-{len(prompts)}:{item.name}@{start}", parts[0], parts[2], parts[1]))
    return prompts


def builtin_tool_prompts() -> list[ToolPrompt]:
    """The generic built-in tool prompts (no system message: the template's default system text is used)."""
    return [
        ToolPrompt(f"builtin-{index}", [{"role": "user", "content": request}], tools, expected)
        for index, (tools, request, expected) in enumerate(BUILTIN_TOOL_PROMPTS)
    ]


def toy_tool_prompts(count: int, rng: random.Random) -> list[ToolPrompt]:
    """Held-out requests of the toy model's own tools, cycling over every tool, and one held-out plain
    question (expects no call) for every eight tool requests."""
    from qtools.toy.conversations import plain_answer_chat, tool_call_chat
    from qtools.toy.tools_suite import TOOL_SPECS

    prompts = []
    for index in range(count):
        if index % 9 == 8:
            chat = plain_answer_chat(rng, heldout=True)
            expected: list[dict[str, Any]] = []
        else:
            chat = tool_call_chat(rng, TOOL_SPECS[index % len(TOOL_SPECS)], heldout=True)
            expected = [chat.expected_call]
        prompts.append(ToolPrompt(f"toy-{index}", chat.messages[:-1], chat.tools or [], expected))
    return prompts


# JSON types of a suite record's fields, by kind (None: the field may be null or absent).
_FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "code": {"text": (str,), "name": (str, type(None))},
    "tools": {"messages": (list,), "tools": (list, type(None)), "expected_calls": (list, type(None))},
    "fim": {"prefix": (str,), "suffix": (str,), "middle": (str, type(None))},
}


def _check_types(record: Any) -> None:
    """TypeError/ValueError unless `record` has the JSON types the suite format gives (see module doc), so a
    bad record is refused while the file is read, not after both models have run."""
    if not isinstance(record, dict):
        raise TypeError("a record is a JSON object")
    for field_name, types in _FIELD_TYPES.get(record.get("kind"), {}).items():
        if not isinstance(record.get(field_name), types):
            names = {str: "a string", list: "a list", type(None): "null"}
            raise TypeError(f"{field_name!r} must be {' or '.join(names[t] for t in types)}")
    if not isinstance(record.get("id", ""), str):
        raise TypeError("'id' must be a string")
    if record.get("kind") != "tools":
        return
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in record["messages"]):
        raise TypeError("each message is an object with a string 'role'")
    if not all(isinstance(tool, dict) for tool in record.get("tools") or []):
        raise TypeError("each tool is an object (an OpenAI-style function schema)")
    for call in record.get("expected_calls") or []:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise TypeError("each expected call is an object with a string 'name'")
        if not isinstance(call.get("arguments", {}), dict):
            raise TypeError("an expected call's 'arguments' is an object")


def read_suite_file(path: Path) -> Suites:
    """Parse a user JSONL suite file (format in the module docstring); QtoolsError names the bad line."""
    suites = Suites(sources={"file": str(path)})
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read suite file ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise QtoolsError(f"{path}: a suite file is UTF-8 JSONL; byte {error.start} is not UTF-8") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            _check_types(record)
            kind = record["kind"]
            if kind == "code":
                suites.code.append(CodeFile(record.get("name", where), str(record["text"])))
            elif kind == "tools":
                messages, tools = record["messages"], record.get("tools") or []
                if not messages or messages[-1].get("role") not in ("user", "tool"):
                    raise ValueError("messages must end with a user (or tool) turn")
                suites.tools.append(ToolPrompt(record.get("id", where), messages, tools, record.get("expected_calls")))
            elif kind == "fim":
                suites.fim.append(
                    FimPrompt(record.get("id", where), record["prefix"], record["suffix"], record.get("middle"))
                )
            else:
                raise ValueError(f"unknown kind {kind!r} (code, tools or fim)")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise QtoolsError(f"{where}: not a valid suite record ({error!r})") from error
    return suites


def load_suites(
    reference: Path, names: tuple[str, ...], sizes: SuiteSizes, seed: int = 0, files: tuple[Path, ...] = ()
) -> Suites:
    """The built-in suites named in `names` (see module doc), extended by each user JSONL in `files`."""
    rng = random.Random(seed)
    suites = Suites()
    code = heldout_code() if {"code", "fim"} & set(names) else []
    if "code" in names:
        suites.code = code
        suites.sources["code"] = (
            f"{len(code)} held-out standard-library modules (Python {sysconfig.get_python_version()})"
        )
    if "tools" in names and sizes.tool_prompts:
        if (reference / TOY_MARKER).is_file():
            suites.tools = toy_tool_prompts(sizes.tool_prompts, random.Random(seed + 1))
            suites.sources["tools"] = "qtools.toy held-out tool requests"
        else:
            suites.tools = builtin_tool_prompts()[: sizes.tool_prompts]
            suites.sources["tools"] = "qtools.check built-in tool prompts"
    if "fim" in names:
        suites.fim = fim_prompts(code, sizes.fim_prompts, rng)
        suites.sources["fim"] = "held-out standard-library modules"
    for path in files:
        extra = read_suite_file(path)
        suites.code += extra.code if "code" in names else []
        suites.tools += extra.tools if "tools" in names else []
        suites.fim += extra.fim if "fim" in names else []
        suites.sources.setdefault("files", "")
        suites.sources["files"] = (suites.sources["files"] + f" {path}").strip()
    return suites


def parse_suite_names(text: str) -> tuple[str, ...]:
    """'code,tools' -> ("code", "tools"); QtoolsError for unknown names."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SUITE_NAMES]
    if unknown or not names:
        raise QtoolsError(f"--suite takes a comma-separated subset of {', '.join(SUITE_NAMES)}; got {text!r}")
    return names
