"""The house rules that keep the package installable and simple to follow.

No import cycle among densenet_opt's modules (function-level imports included), nothing
imported from tests/, and no test-only switch read on the production path. The tests' shared
fixtures live in the top-level conftest.py; the sweep's fixtures, options and hooks only in
the plugin (densenet_opt/plugin.py), which an installed copy has too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "densenet_opt"
CONFTEST = PACKAGE.parent / "conftest.py"
PLUGIN = PACKAGE / "plugin.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere in it (top level or inside a function)."""
    found = set()
    is_package = path.name == "__init__.py"
    this = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = this.split(".") if is_package else this.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            # "from densenet_opt import x" imports the package and, when x is a module, x.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "densenet_opt":  # the package's own __init__ imports nothing of ours
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "densenet_opt.sweep" in graph and "densenet_opt.plugin" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_needs_nothing_from_tests_and_reads_no_test_switch() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [name for name in imported if name == "tests" or name.startswith(("tests.", "conftest", "fault_plugin"))], path
        assert "DENSENET_OPT_TEST" not in text, path


def fixture_names(path: Path) -> set[str]:
    """The fixtures ``path`` defines: functions decorated with ``pytest.fixture`` (bare or called)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (isinstance(target, ast.Name) and target.id == "fixture"):
                    names.add(node.name)
    return names


def hook_names(path: Path) -> set[str]:
    """The pytest hooks ``path`` implements: its top-level ``pytest_*`` functions."""
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("pytest_")}


def test_conftest_holds_the_shared_fixtures_and_the_plugin_owns_the_sweeps() -> None:
    shared = fixture_names(CONFTEST)
    sweep_fixtures = fixture_names(PLUGIN)
    assert {"sweep", "engine_config"} <= sweep_fixtures and {"tiny_densenet", "fault_plugin_on_path"} <= shared
    # Nothing registered twice: the plugin alone defines the sweep's fixtures, options and hooks.
    assert not shared & sweep_fixtures, shared & sweep_fixtures
    # conftest.py's hooks select the repository's test kinds; none is one of the plugin's own.
    assert "pytest_addoption" in hook_names(PLUGIN)
    assert hook_names(CONFTEST) <= {"pytest_addoption", "pytest_configure", "pytest_collection_modifyitems"}, hook_names(CONFTEST)
    assert "--all-kinds" not in PLUGIN.read_text()
    # One copy of each shared fixture: no test file defines its own under the same name.
    for path in sorted(CONFTEST.parent.glob("tests/*.py")):
        assert not fixture_names(path) & shared, (path.name, fixture_names(path) & shared)
