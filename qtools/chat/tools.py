"""Tool schemas: accept OpenAI-style `{"type": "function", "function": {...}}` or the bare function dict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from qtools.errors import QtoolsError


def function_tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An OpenAI-style function tool: `{"type": "function", "function": {name, description, parameters}}`."""
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def function_spec(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function dict of a tool (`tool["function"]` when wrapped, else `tool`), checked to have a name."""
    if not isinstance(tool, Mapping):
        raise QtoolsError(f"a tool must be a dict, got {type(tool).__name__}: {tool!r}")
    spec = tool["function"] if "function" in tool else tool
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise QtoolsError(
            f"a tool needs a function name: pass {{'type': 'function', 'function': {{'name': ..., "
            f"'parameters': {{...}}}}}} or the bare function dict; got {tool!r}"
        )
    return spec


def index_tools(tools: Iterable[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]] | None:
    """Map function name to its function dict; None when no tool list was given (nothing can be checked)."""
    if tools is None:
        return None
    return {spec["name"]: spec for spec in map(function_spec, tools)}


def parameter_properties(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `parameters.properties` mapping of a function dict, empty when absent or malformed."""
    parameters = spec.get("parameters")
    if isinstance(parameters, Mapping) and isinstance(parameters.get("properties"), Mapping):
        return parameters["properties"]
    return {}


def required_parameters(spec: Mapping[str, Any]) -> list[str]:
    """The `parameters.required` names of a function dict, empty when absent or malformed."""
    parameters = spec.get("parameters")
    required = parameters.get("required") if isinstance(parameters, Mapping) else None
    if isinstance(required, list | tuple):
        return [name for name in required if isinstance(name, str)]
    return []
