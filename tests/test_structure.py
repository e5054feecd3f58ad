"""The package's shape: one-way imports held by contracts, no cycle, no private name shared.

The contracts live in ``[tool.importlinter]`` of pyproject.toml and run in ``make lint``;
here they run once as they are (all kept) and once on a copy with a planted violation
(caught), so that a contract that silently stopped checking fails too.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "modalkit_django"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
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


def import_statements(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import of the module, at any depth of its code, except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports, function-level imports included."""

    def resolve(target: str) -> str | None:
        # The longest package module the dotted name starts with.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str] = set()
    for node in import_statements(path):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            prefix = absolute(name, path, node)
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        found |= {module for target in targets if (module := resolve(target)) is not None}
    # A module importing its own package (``from .. import __version__``) runs that
    # package's __init__ first anyway: not an edge. A package importing its children is.
    return {module for module in found if module != name and not name.startswith(module + ".")}


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


def test_the_import_graph_has_no_cycle_function_level_imports_included() -> None:
    modules = package_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert graph["modalkit_django.worker.engine"] >= {"modalkit_django.models", "modalkit_django.queues"}
    assert "modalkit_django.jobs.wakeups" in graph["modalkit_django.apps"]  # a function-level import, counted
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root)},
    )  # fmt: skip


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        # A function-level import, as the cycle used to be hidden.
        ("models/keys.py", "def _f() -> None:\n    from ..conf import get_settings\n", "Models know no configuration"),
        ("broker/redis_stream.py", "from ..jobs import wakeups\n", "The broker is a transport"),
        ("worker/batcher.py", "from ..jobs.submit import submit_job\n", "never the API's use cases"),
        ("jobs/keys.py", "import asyncio\n", "The use cases know neither asyncio nor TaskIQ"),
        ("inference/batch.py", "import django\n", "imports no Django"),
        ("jobs/stats.py", "from ..api import intake\n", "Layers"),
        ("metrics/collector.py", "from ..worker import heartbeats\n", "Layers"),
    ],
)
def test_a_planted_violation_breaks_its_contract(tmp_path: Path, module: str, planted: str, contract: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "modalkit_django", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "modalkit_django" / module).open("a") as file:
        file.write("\n\n" + planted)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken, result.stdout


def test_no_private_name_is_imported_across_modules() -> None:
    modules = package_modules()
    shared = []
    for name, path in modules.items():
        for node in import_statements(path):
            if isinstance(node, ast.ImportFrom) and absolute(name, path, node).startswith("modalkit_django"):
                shared += [f"{name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    # __version__ is a dunder, public by convention.
    assert [line for line in shared if not line.endswith("__version__")] == []


def test_each_folder_says_which_process_runs_it() -> None:
    """A newcomer reading the tree: every subpackage opens with what it is and who runs it."""
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name in {"migrations", "management"}:
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.parent.name}/ has no docstring"


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
