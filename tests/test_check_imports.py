"""The check package's import graph is acyclic: every import counts, including lazy ones inside functions and
those under `TYPE_CHECKING` (the reports read `CheckResult` from `qtools.check.result`, not the pipeline)."""

from __future__ import annotations

import ast
from pathlib import Path

import qtools

PACKAGE_ROOT = Path(qtools.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that the file at `path` imports anywhere (a `from a import b` counts `a.b`
    when that is a module, else `a`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name in modules} - {_module_name(path)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_check_package_has_no_import_cycle() -> None:
    files = sorted((PACKAGE_ROOT / "check").rglob("*.py"))
    modules = {_module_name(path) for path in files}
    # A package's __init__ is imported on the way to any of its modules; lazy exports (qtools._lazy) are not
    # imports, so the graph holds each file's own import statements only.
    graph = {_module_name(path): _imports(path, modules) for path in files}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
