"""Check the import graph of the project's packages: no cycles, and a core free of Flower.

    python tools/check_imports.py        # prints the cycles / forbidden imports, exit 1 if any

Reads every module's imports statically (``ast``; function-level imports included), builds
the graph between the project's own modules, and reports every cycle (Tarjan's strongly
connected components) and every import the core package may not make (``flwr``, ``ray``,
``subprocess``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedunlearn", "clients", "server", "simulations", "deploy")
#: Top-level modules the core package must never import.
CORE_FORBIDDEN = ("flwr", "ray", "subprocess")


def module_name(path: Path) -> str:
    """``fedunlearn/data/indexed.py`` -> ``fedunlearn.data.indexed`` (packages: their ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved).

    ``from package import submodule`` imports the submodule (not the package's other
    modules), when ``submodule`` is one of ``modules``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = {f"{base}.{alias.name}" for alias in node.names}
            submodules = names & set(modules)
            found.update(submodules if submodules == names else {base, *names})
    return found


def graph() -> dict[str, set[str]]:
    """The project's modules and, for each, the project modules it imports."""
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    names = set(modules)
    return {name: {i for i in imports_of(path, names) if i in names and i != name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def forbidden_core_imports() -> list[str]:
    """``module: import`` for every forbidden import in the core package."""
    bad = []
    for path in sorted((ROOT / "fedunlearn").rglob("*.py")):
        for name in sorted(imports_of(path)):
            if name.split(".")[0] in CORE_FORBIDDEN:
                bad.append(f"{module_name(path)}: {name}")
    return bad


def report(lines: Iterable[str], title: str) -> int:
    """Print ``lines`` under ``title``; return how many."""
    items = list(lines)
    if items:
        print(title)
        for line in items:
            print(f"  {line}")
    return len(items)


def main() -> int:
    """Exit 1 when the graph has a cycle or the core imports Flower, Ray or subprocess."""
    problems = report((" -> ".join(c) for c in cycles(graph())), "import cycles:")
    problems += report(forbidden_core_imports(), "forbidden imports in fedunlearn/:")
    if not problems:
        print(f"no import cycle among {len(graph())} modules; fedunlearn/ imports no {', '.join(CORE_FORBIDDEN)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
