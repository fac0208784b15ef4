"""The shape of the package (issue 19): ``ftpack/core`` is the ground floor, and ftpack's modules
import one another without cycles.

Read from the source with :mod:`ast` (nothing is imported): every import statement of every
module under ftpack/, at module level and inside functions.

- ``ftpack.core`` imports nothing from the packages above it, not even inside a function:
  each domain checks its own settings and ``ftpack.settings`` composes them.
- Counting what runs at import time (module level, class bodies, not function bodies nor
  ``if TYPE_CHECKING:`` blocks), no module imports itself back through others. An import
  inside a function is the accepted way to defer a heavy or upper module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ftpack"

#: What ftpack/core may not import from, at any depth of a module.
ABOVE_CORE = ("ftpack.gguf", "ftpack.ollama", "ftpack.training", "ftpack.inference", "ftpack.commands",
              "ftpack.pipeline", "ftpack.model_card")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the ftpack module imported
    line: int
    at_import_time: bool  # module level (or a class body), not in a function or TYPE_CHECKING block

    def __str__(self) -> str:
        return f"{_path(self.module)}:{self.line} imports {self.target}"


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE.parent))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports included)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    found: list[Import] = []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = _resolve(module, node)
        names = []
        for alias in node.names:  # `from ftpack.core import doctor`: the submodule, when it is one
            sub = f"{base}.{alias.name}"
            names.append(sub if sub in MODULES else base)
        return list(dict.fromkeys(names))  # `from M import a, b`: M once

    def visit(node: ast.AST, at_import_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    if target == "ftpack" or target.startswith("ftpack."):
                        found.append(Import(module, target, child.lineno, at_import_time))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(child, False)
            else:
                visit(child, at_import_time)

    visit(tree, True)
    return found


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _above_core(target: str) -> bool:
    return any(target == pkg or target.startswith(pkg + ".") for pkg in ABOVE_CORE)


def test_the_modules_are_found():
    assert "ftpack.core.config" in MODULES and "ftpack.cli" in MODULES and "ftpack" in MODULES
    assert any(imp.module == "ftpack.core.config" for imp in IMPORTS)


def test_core_imports_nothing_above_it():
    offenders = [str(imp) for imp in IMPORTS if imp.module.startswith("ftpack.core") and _above_core(imp.target)]
    assert not offenders, ("ftpack/core is the ground floor, yet it imports from above ("
                           + ", ".join(ABOVE_CORE) + "):\n  " + "\n  ".join(offenders))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing
    itself), each as a sorted list: Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges.get(node, ()):
                        out.append(sorted(component))
    return out


def test_no_import_cycles_at_import_time():
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in IMPORTS:
        if imp.at_import_time and imp.target in MODULES:
            edges[imp.module].add(imp.target)
    cycles = _cycles(edges)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(" <-> ".join(component))
        lines += [f"    {imp}" for imp in IMPORTS
                  if imp.at_import_time and imp.module in members and imp.target in members]
    assert not cycles, "Import cycles among ftpack modules (module-level imports):\n  " + "\n  ".join(lines)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
