"""Type a parameter's text by its JSON schema, as the reference `qwen3coder_tool_parser.py` does.

`null` (any case) is None for every type; string-like types and `enum` stay text; integer types go through
`int`; number types through `float`, integral values becoming int; booleans are `text.lower() == "true"`;
object/array try `json.loads`, then `ast.literal_eval` (which evaluates literals only, never code), then stay
text. Parameters without a schema stay text. Where the reference silently degrades, a problem is returned too.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from typing import Any

from qtools.chat.result import ErrorKind

STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")
INTEGER_PREFIXES = ("int", "uint", "long", "short", "unsigned")
NUMBER_PREFIXES = ("num", "float")
BOOLEAN_TYPES = ("boolean", "bool", "binary")
CONTAINER_TYPES = {"object": dict, "dict": dict, "array": list, "arr": list, "list": list}

Problem = tuple[ErrorKind, str] | None


def schema_type(schema: Any) -> str:
    """The lower-cased `type` of a parameter schema; "string" when it has none."""
    if isinstance(schema, Mapping) and "type" in schema:
        return str(schema["type"]).strip().lower()
    return "string"


def _container_type(type_name: str) -> type | None:
    for prefix, container in CONTAINER_TYPES.items():
        if type_name == prefix or (prefix in ("dict", "list") and type_name.startswith(prefix)):
            return container
    return None


def _json_ready(value: Any) -> tuple[bool, Any]:
    """Tuples become lists; False when the value holds something JSON cannot carry (sets, bytes, complex)."""
    if value is None or isinstance(value, bool | int | str):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, list | tuple):
        items = [_json_ready(item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if isinstance(value, dict):
        pairs = {key: _json_ready(item) for key, item in value.items()}
        keys_ok = all(isinstance(key, str) for key in value)
        values = {key: item for key, (_, item) in pairs.items()}
        return keys_ok and all(ok for ok, _ in pairs.values()), values
    return False, value


def _literal(text: str) -> tuple[bool, Any]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, text
    return _json_ready(value)


def _to_integer(text: str) -> tuple[Any, Problem]:
    try:
        return int(text), None
    except ValueError:
        return text, (ErrorKind.TYPE_CONVERSION, f"{text!r} is not an integer; kept as text")


def _to_number(text: str) -> tuple[Any, Problem]:
    try:
        number = float(text)
    except ValueError:
        return text, (ErrorKind.TYPE_CONVERSION, f"{text!r} is not a number; kept as text")
    if not math.isfinite(number):
        return text, (ErrorKind.TYPE_CONVERSION, f"{text!r} is not a finite number; kept as text")
    return (int(number) if number.is_integer() else number), None


def _to_boolean(text: str) -> tuple[Any, Problem]:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true", None
    return False, (ErrorKind.TYPE_CONVERSION, f"{text!r} is not true or false; read as false")


def _to_container(text: str, type_name: str, container: type | None) -> tuple[Any, Problem]:
    if container is not None:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            pass
        else:
            if isinstance(value, container):
                return value, None
            return value, (ErrorKind.TYPE_CONVERSION, f"JSON value {text!r} is not a {type_name}")
    ok, value = _literal(text)
    if container is None:
        return (value if ok else text), None
    if not ok:
        message = f"{text!r} is neither JSON nor a literal {type_name}; kept as text"
        return text, (ErrorKind.TYPE_CONVERSION, message)
    if not isinstance(value, container):
        return value, (ErrorKind.TYPE_CONVERSION, f"literal {text!r} is not a {type_name}")
    return value, (ErrorKind.PYTHON_LITERAL, f"{type_name} given as a Python literal, not JSON: {text!r}")


def convert_value(text: str, schema: Any) -> tuple[Any, Problem]:
    """Typed value of a parameter's text under its schema (None: no schema), and the problem found if any."""
    if text.lower() == "null":
        return None, None
    if schema is None:
        return text, None
    type_name = schema_type(schema)
    if type_name in STRING_TYPES:
        value, problem = text, None
    elif type_name.startswith(INTEGER_PREFIXES):
        value, problem = _to_integer(text)
    elif type_name.startswith(NUMBER_PREFIXES):
        value, problem = _to_number(text)
    elif type_name in BOOLEAN_TYPES:
        value, problem = _to_boolean(text)
    else:
        value, problem = _to_container(text, type_name, _container_type(type_name))
    enum = schema.get("enum") if isinstance(schema, Mapping) else None
    if problem is None and isinstance(enum, list) and value not in enum:
        problem = (ErrorKind.ENUM_MISMATCH, f"{value!r} is not one of {enum!r}")
    return value, problem
