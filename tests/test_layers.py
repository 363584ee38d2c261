"""The layers of docs/layers.md hold: who may import whom, and no import cycles.

The import graph is read with `ast` from every module under backprop/, service/ and
workers/. Every import statement is an edge, those inside functions included (they run
when the function does); those under `if TYPE_CHECKING:` are not (they never run).
Names given as strings (Celery's `include=["workers.tasks"]`, `send_task("train_job")`)
are not imports and are not seen.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backprop", "service", "workers")
STDLIB = frozenset(sys.stdlib_module_names)

# Third-party packages that each layer may import; the standard library is always allowed.
ENGINE_THIRD_PARTY = frozenset({"numpy", "cupy"})  # CuPy only when a GPU is asked for
# What service/client must not import: the service's own stack (it uses requests, click, tqdm).
CLIENT_FORBIDDEN_THIRD_PARTY = frozenset({"numpy", "flask", "werkzeug", "sqlalchemy", "celery"})
# What service/core must not import: the two edges' frameworks.
CORE_FORBIDDEN_THIRD_PARTY = frozenset({"flask", "werkzeug", "celery"})
# Top-level names the client's import must not load at run time.
CLIENT_MUST_NOT_LOAD = ("numpy", "flask", "werkzeug", "sqlalchemy", "celery", "backprop", "workers",
                        "service.core", "service.api")


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen in one module."""

    importer: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} imports {self.target}"


def module_name(path: Path) -> str:
    """Return the dotted name of a module file (a package's __init__ is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Return every module of the project's packages by dotted name."""
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is `TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Yield every import statement under `node` except those under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for statement in child.orelse:
                yield from runtime_import_nodes(ast.Module(body=[statement], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from runtime_import_nodes(child)


def resolve_from(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """Return the absolute module of a `from ... import` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(importer: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Yield the targets of a module's runtime imports: a project module, or another top-level name.

    `from a.b import c` targets the module a.b.c when there is one, else a.b.
    """
    for node in runtime_import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = resolve_from(importer, path, node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in dict.fromkeys(targets):
            yield Import(importer, target, path, node.lineno)


def all_imports() -> list[Import]:
    """Return every runtime import of the project's modules."""
    modules = project_modules()
    return [edge for name, path in modules.items() for edge in imports_of(name, path, modules)]


def top_level(name: str) -> str:
    return name.partition(".")[0]


def is_under(name: str, package: str) -> bool:
    """Whether a dotted name is `package` or inside it."""
    return name == package or name.startswith(package + ".")


def layer_violation(edge: Import) -> str | None:
    """Return the rule an import breaks, or None when it is allowed."""
    importer, target = edge.importer, edge.target
    third_party = top_level(target) not in PACKAGES and top_level(target) not in STDLIB
    if is_under(importer, "backprop"):
        if third_party and top_level(target) not in ENGINE_THIRD_PARTY:
            return "backprop imports numpy (CuPy for the GPU) and the standard library only"
        if not third_party and top_level(target) in PACKAGES and not is_under(target, "backprop"):
            return "backprop knows nothing of the service or the workers"
    if is_under(importer, "service.client"):
        if top_level(target) in CLIENT_FORBIDDEN_THIRD_PARTY:
            return "service.client is plain HTTP: no numpy, Flask, SQLAlchemy or Celery"
        if top_level(target) in PACKAGES and not is_under(target, "service.client"):
            return "service.client imports nothing else of the project"
    if is_under(importer, "service.core"):
        if top_level(target) in CORE_FORBIDDEN_THIRD_PARTY:
            return "service.core imports neither Flask (werkzeug) nor Celery"
        if any(is_under(target, upper) for upper in ("service.api", "service.ui", "workers")) or target == "service":
            return "service.core is imported by service.api and workers, never the other way round"
    api_side = importer == "service" or is_under(importer, "service.api") or is_under(importer, "service.ui")
    if api_side and top_level(target) == "celery" and importer != "service.api.queue":
        return "the API is Flask only; its one Celery app, which only publishes, is service.api.queue"
    if api_side and is_under(target, "workers"):
        return "the API never imports workers (jobs reach them through the broker, by task name)"
    if is_under(importer, "workers") and (
            target == "service" or is_under(target, "service.api") or is_under(target, "service.ui")):
        return "workers never import the API"
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle, as a closed path of module names, per group of mutually importing modules.

    The groups are the strongly connected components of the graph (Tarjan's algorithm).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [cycle_within(graph, component) for component in components]


def cycle_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """Return a shortest cycle through the first module of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & component):
                if target == start:
                    return paths[module] + [start]
                if target not in paths:
                    paths[target] = paths[module] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_the_graph_is_read() -> None:
    """A guard against a walker that sees nothing: known edges of each layer are found."""
    edges = {(edge.importer, edge.target) for edge in all_imports()}
    assert ("service.core.db.store", "service.core.db.tables") in edges
    assert ("service.api.app", "flask") in edges
    assert ("workers.training", "backprop") in edges


def test_imports_in_functions_count_and_those_under_type_checking_do_not() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import flask\n"
        "else:\n"
        "    import json\n"
        "def later():\n"
        "    from numpy import asarray\n"
    )
    assert [ast.unparse(node) for node in runtime_import_nodes(tree)] == [
        "from typing import TYPE_CHECKING", "import json", "from numpy import asarray"]


def test_each_layer_imports_only_what_it_may() -> None:
    broken = [f"{edge}\n    ({rule})" for edge in all_imports() if (rule := layer_violation(edge))]
    assert not broken, "imports that cross the layers of docs/layers.md:\n" + "\n".join(broken)


def test_no_import_cycles() -> None:
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], str] = {}
    for edge in all_imports():
        if edge.target in modules and edge.target != edge.importer:
            graph[edge.importer].add(edge.target)
            lines.setdefault((edge.importer, edge.target), str(edge))
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        " -> ".join(cycle) + "".join(f"\n    {lines[pair]}" for pair in zip(cycle, cycle[1:])) for cycle in cycles)


def test_the_client_loads_nothing_of_the_service() -> None:
    """Importing the client and its command, in a fresh interpreter, loads no numpy and no Flask."""
    probe = (
        "import json, sys\n"
        "import service.client, service.client.cli\n"
        f"names = {CLIENT_MUST_NOT_LOAD!r}\n"
        "print(json.dumps([n for n in names if any(m == n or m.startswith(n + '.') for m in sys.modules)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded == [], f"`import service.client, service.client.cli` loaded {loaded}"
