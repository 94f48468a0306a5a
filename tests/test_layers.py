"""The tree is the architecture: layers point one way, and every subpackage has its place.

`lint-imports` (CI) checks the contracts in pyproject.toml; these tests guard what the
contracts cannot say by themselves.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # a dependency of mypy, in the test extra

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aexp_relay_mcp"
# The CLI keeps heavy imports (pydantic, the mcp SDK, the selftest) out of its start-up.
STARTUP_LAZY = {"aexp_relay_mcp/adapters/cli/main.py"}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan: every group of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    """No cycle among the package's modules, counting imports inside functions and under
    TYPE_CHECKING (grimp sees both)."""
    graph = grimp.build_graph("aexp_relay_mcp")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = [sorted(g) for g in _strongly_connected(edges) if len(g) > 1]
    self_loops = [m for m, targets in edges.items() if m in targets]
    assert not cycles and not self_loops, cycles or self_loops


def test_imports_inside_functions_are_only_the_cli_s_start_up_laziness() -> None:
    """An import inside a function is never a way around a cycle."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                if inner and rel not in STARTUP_LAZY:
                    found.append(f"{rel}:{node.name}")
    assert not found, found


def test_the_layers_contracts_name_every_subpackage() -> None:
    """A new folder must be given its place in a layers contract, or lint-imports would
    let it import anything."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named: set[str] = set()
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            for layer in contract["layers"]:
                named.update(part.strip() for part in layer.replace(":", "|").split("|"))
    subpackages = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE
    }
    assert subpackages - named == set(), sorted(subpackages - named)


def test_no_module_uses_another_module_s_private_names() -> None:
    """``from .x import _name`` across modules couples them behind their backs."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
                if private:
                    found.append(f"{path.relative_to(ROOT)}: {private}")
    assert not found, found
