"""The project's own Qwen3-Coder chat template (`templates/qwen3_coder.jinja`) and how to render it.

`render_template` renders the way transformers' `apply_chat_template` does: an `ImmutableSandboxedEnvironment`
with `trim_blocks` and `lstrip_blocks`, a `tojson` filter that is plain `json.dumps(..., ensure_ascii=False)`,
and a `raise_exception` global. Record `chat_template_sha256(load_chat_template())` in reports that use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from qtools.chat.messages import normalize_messages
from qtools.errors import QtoolsError

TEMPLATE_NAME = "qwen3_coder.jinja"


def load_chat_template() -> str:
    """Text of the bundled Qwen3-Coder chat template (set it as a tokenizer's `chat_template`)."""
    return resources.files("qtools.chat").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")


def chat_template_sha256(template: str) -> str:
    """Hex SHA-256 of a template's UTF-8 text, to pin which template produced a prompt."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    options = {"indent": indent, "separators": separators, "sort_keys": sort_keys}
    return json.dumps(value, ensure_ascii=ensure_ascii, **options)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


@cache
def _compile(template: str) -> Any:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise QtoolsError("rendering a chat template needs jinja2: pip install 'jinja2>=3.1'") from exc
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    return environment.from_string(template)


def render_template(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    template: str | None = None,
) -> str:
    """Render `messages` through a Jinja chat template (the bundled one by default) as transformers would."""
    compiled = _compile(load_chat_template() if template is None else template)
    return compiled.render(
        messages=normalize_messages(messages),
        tools=list(tools) if tools else None,
        add_generation_prompt=add_generation_prompt,
    )
