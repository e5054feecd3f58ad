"""The package's shape: an acyclic import graph, small modules, and a Django-free ``inference``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "modalkit_django"
# Code Django generates, or that is data rather than logic.
EXEMPT_FROM_SIZE = {"migrations"}
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts and "__pycache__" not in path.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code, except under TYPE_CHECKING."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        # The longest package module the dotted name starts with.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (module := resolve(alias.name)) is not None:
                    found.add(module)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            for alias in node.names:
                if (module := resolve(f"{prefix}.{alias.name}")) is not None:
                    found.add(module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(name)
    # Importing a submodule runs its packages' __init__ first: those are edges too, but a
    # package importing its own children is not a cycle with them.
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as a list of modules, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def walk(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := walk(target):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := walk(node):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    modules = package_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    # A package's __init__ that re-exports its children is fine; children importing the
    # package's __init__ back would be the cycle, and that is still caught.
    for name in graph:
        graph[name] = {target for target in graph[name] if not target.startswith(name + ".")}
    assert graph["modalkit_django.engine"] >= {"modalkit_django.models", "modalkit_django.queues"}  # the graph is real
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("modalkit_django.broker", {"modalkit_django.engine", "modalkit_django.services", "modalkit_django.tasks"}),
        ("modalkit_django.redis_stream", {"modalkit_django.engine", "modalkit_django.services"}),
        ("modalkit_django.queues", {"modalkit_django.broker", "modalkit_django.engine", "modalkit_django.services"}),
        ("modalkit_django.models", {"modalkit_django.conf", "modalkit_django.queues", "modalkit_django.clients"}),
    ],
)
def test_leaves_stay_leaves(layer: str, forbidden: set[str]) -> None:
    modules = package_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    reached: set[str] = set()
    stack = [name for name in graph if name == layer or name.startswith(layer + ".")]
    while stack:
        node = stack.pop()
        if node not in reached:
            reached.add(node)
            stack.extend(graph.get(node, ()))
    assert not reached & forbidden, f"{layer} reaches {sorted(reached & forbidden)}"


def test_no_module_is_much_over_300_lines() -> None:
    sizes = {
        name: len(path.read_text().splitlines())
        for name, path in package_modules().items()
        if not EXEMPT_FROM_SIZE & set(path.parts)
    }
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_inference_imports_without_django() -> None:
    """What runs in the Modal container: every inference module, with Django unimportable."""
    names = sorted(name for name in package_modules() if name.startswith("modalkit_django.inference"))
    assert "modalkit_django.inference.service" in names
    script = (
        "import sys\n"
        "sys.modules['django'] = None  # any import of Django fails\n"
        f"for name in {names!r}:\n"
        "    __import__(name)\n"
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules if sys.modules[m])\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
