"""No import cycles in shared_code/, functions/, simulator/ and function_app.py (the project rule; issue 10 §7).

Every import counts, wherever it stands: module level, inside a function ("local import: X imports this module" is
how a cycle hides), under ``if TYPE_CHECKING:``, and ``importlib.import_module("literal")``. The graph is read with
``ast`` (nothing is imported), so the test is fast and fails with the cycle spelled out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("shared_code", "functions", "simulator")


def _modules() -> dict[str, Path]:
    found = {"function_app": ROOT / "function_app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports (a name imported from a package resolves to its submodule when it is
    one, else to the package)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(str(node.args[0].value))
    out: set[str] = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_cycles() -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a cycle path ``a → b → … → a``."""
    modules = _modules()
    graph = {m: _imported(m, p, modules) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path(graph, group) for group in groups]


def _path(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected group (shortest way back to its first module)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(group)  # pragma: no cover - a strongly connected group always has a way back


def test_there_are_no_import_cycles() -> None:
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_check_sees_local_and_importlib_imports(tmp_path: Path) -> None:
    # The forms the removed cycles hid behind are found (a check that cannot fail proves nothing).
    (tmp_path / "a.py").write_text("def f():\n    from simulator import scenarios  # local import\n")
    (tmp_path / "b.py").write_text("import importlib\nM = importlib.import_module('shared_code.permissions')\n")
    modules = {"simulator.scenarios": ROOT, "shared_code.permissions": ROOT, "a": ROOT, "b": ROOT}
    assert _imported("a", tmp_path / "a.py", modules) == {"simulator.scenarios"}
    assert _imported("b", tmp_path / "b.py", modules) == {"shared_code.permissions"}
