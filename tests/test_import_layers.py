"""The import graph, read from the source: no cycles inside `qtools`, the kernels package stands alone, and
imports flow one way through the layers of STYLE.md (kernels <- numerics <- checkpoint <- formats <- engines <-
pipelines <- CLI).

Every `import` counts, at module level and inside functions alike (a deferred import is still a dependency),
except those under `if TYPE_CHECKING:`, which never run. `from pkg import name` depends on the submodule
`pkg.name` when there is one, else on `pkg` and, where `pkg` exports `name` lazily (`qtools._lazy`), on the module
that defines it. A package is not counted as a dependency of its own submodules (Python imports it first, always).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT_PACKAGE = "qtools"

# Lowest first. A module may import modules of its own layer or of lower ones, never of a higher one. Every module
# of qtools must fall under one entry (the bare "qtools" entry holds only the package's own __init__).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("qtools", "qtools.errors", "qtools._lazy")),
    # Need only torch (and qtools_kernels, the layer below everything here).
    ("building blocks", ("qtools.numerics", "qtools.chat", "qtools.generation")),
    ("checkpoint files", ("qtools.checkpoint",)),
    ("formats and recipes", ("qtools.formats", "qtools.recipe")),
    ("engines", ("qtools.convert", "qtools.verify", "qtools.inspect", "qtools.runtime", "qtools.calibration")),
    # Calibrated conversion (qtools.gptq) runs the runtime's layers over calibration data and writes through
    # qtools.convert's plan, state and writers: a pipeline over engines.
    ("pipelines", ("qtools.check", "qtools.toy", "qtools.gptq", "qtools.publish")),
    ("command line", ("qtools.cli", "qtools.__main__")),
    # For tests, benchmarks and scripts: nothing in the library imports it.
    ("test support", ("qtools.testing",)),
)


def module_files(base: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of `package` found under `base`."""
    found = {}
    for path in sorted((base / package).rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_statements(tree: ast.AST, type_checking: bool = False) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in `tree`; those under `if TYPE_CHECKING:` only when `type_checking`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for statement in node.orelse:
                yield from import_statements(ast.Module(body=[statement], type_ignores=[]), type_checking)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from import_statements(node, type_checking)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """{name: module} of a package `__init__` that sets `__getattr__ = lazy_getattr(__name__, MAPPING)`."""
    literals = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    literals[target.id] = node.value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_getattr" and len(node.args) == 2:
            mapping = node.args[1]
            if isinstance(mapping, ast.Name) and mapping.id in literals:
                return ast.literal_eval(literals[mapping.id])
    return {}


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, restricted to the modules in `files`."""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    lazy = {name: lazy_exports(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}
    graph: dict[str, dict[str, int]] = {}
    for module, tree in trees.items():
        edges: dict[str, int] = {}
        for node in import_statements(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(node, module, files[module].name == "__init__.py")
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        targets.append(f"{base}.{alias.name}")
                        continue
                    targets.append(base)
                    if alias.name in lazy.get(base, {}):
                        targets.append(lazy[base][alias.name])
            for target in targets:
                if target in files and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) per strongly connected component of `graph`."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return [_cycle_through(component, graph) for component in components]


def _cycle_through(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the entry that holds `module` (the longest matching one), None when none does."""
    best, best_length = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            holds = module == entry or (entry != ROOT_PACKAGE and module.startswith(entry + "."))
            if holds and len(entry) > best_length:
                best, best_length = index, len(entry)
    return best


QTOOLS = module_files(REPO, ROOT_PACKAGE)


def test_qtools_has_no_import_cycles():
    graph = import_graph(QTOOLS)
    cycles = find_cycles(graph)
    described = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"
        for cycle in cycles
    ]
    assert not cycles, "import cycles in qtools:\n" + "\n".join(described)


def test_every_module_has_a_layer():
    assert [m for m in QTOOLS if layer_of(m) is None] == [], "add these modules to LAYERS"


def test_imports_flow_down_the_layers():
    upward = []
    for module, edges in sorted(import_graph(QTOOLS).items()):
        for target, line in sorted(edges.items()):
            mine, theirs = layer_of(module), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(
                    f"{QTOOLS[module].relative_to(REPO)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                    f"{target} ({LAYERS[theirs][0]})"
                )
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_kernels_import_nothing_from_qtools():
    """qtools_kernels needs only torch and Triton; not even a type-checking import may name qtools."""
    files = module_files(REPO / "kernels", "qtools_kernels")
    assert files, "kernels/qtools_kernels not found"
    offending = []
    for path in files.values():
        for node in import_statements(ast.parse(path.read_text()), type_checking=True):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            offending += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "qtools"]
    assert not offending, "qtools_kernels imports qtools:\n" + "\n".join(offending)


def test_the_graph_reader_sees_deferred_lazy_and_relative_imports(tmp_path):
    """The reader itself: a cycle through a function-level import and a lazy export is found; a TYPE_CHECKING
    import and a package imported by its own submodule are not cycles."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from pkg._lazy import lazy_getattr\n_EXPORTS = {'thing': 'pkg.b'}\n"
        "__getattr__ = lazy_getattr(__name__, _EXPORTS)\n"
    )
    (package / "_lazy.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import thing\n")
    (package / "b.py").write_text(
        "from . import a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n"
    )
    (package / "c.py").write_text("import pkg.b\nfrom pkg import _lazy\n")
    graph = import_graph(module_files(tmp_path, "pkg"))
    assert graph["pkg.a"] == {"pkg": 2, "pkg.b": 2} and graph["pkg.b"] == {"pkg.a": 1}
    assert graph["pkg.c"] == {"pkg.b": 1, "pkg._lazy": 2}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
