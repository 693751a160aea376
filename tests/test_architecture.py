"""The shape of the house (docs/architecture.md), checked by walking every module's imports with ``ast``.

- The core (``distill/`` but for the orchestration layer and the imitation servers) imports nothing from
  ``formats``, ``trainers``, the CLI, the orchestration layer or the servers: what it needs is passed in.
- The imitation servers (``distill/servers/``) take from the rest of the project only its leaf modules.
- No import circle among the project's modules, counting every import: at the top, in a function, or for types.
- No module outside the tests is over :data:`MAX_LINES` lines.

The modules are found by walking the source tree, so a new module is checked without a list to update.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("distill", "formats", "trainers", "bench")
ORCHESTRATION = (
    "distill.cli",
    "distill.runner",
    "distill.pipeline",
    "distill.dry_run",
    "distill.manifest",
    "distill.__main__",
    "distill.view",
    "distill.cluster",
)
SERVERS = "distill.servers"
SERVERS_MAY_IMPORT = ("distill.errors", "distill.tokens", "distill.requests")
NOT_FOR_THE_CORE = ("formats", "trainers", SERVERS, *ORCHESTRATION)
MAX_LINES = 450


def module_files() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imported_names(module: str, path: Path) -> set[str]:
    """The dotted names ``module`` imports anywhere in its body (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_imports(module: str) -> set[str]:
    """The project's modules that ``module`` imports: for each name, the longest module it names."""
    found = set()
    for name in imported_names(module, MODULES[module]):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


GRAPH = {module: project_imports(module) for module in MODULES}


def is_core(module: str) -> bool:
    return within(module, "distill") and not any(within(module, p) for p in (SERVERS, *ORCHESTRATION))


def test_the_walk_finds_the_modules_and_their_imports():
    assert {"distill.engine", "distill.runner", "formats.readers.base", "distill.servers.teacher.app"} <= set(
        GRAPH
    )
    assert "distill.cache" in GRAPH["distill.engine"] and "distill.engine" in GRAPH["distill.runner"]
    assert "formats.readers" in GRAPH["distill.runner"]  # a function-level import counts too
    assert (
        is_core("distill.engine")
        and not is_core("distill.cli.run")
        and not is_core("distill.servers.teacher")
    )


def test_the_core_imports_no_reader_writer_trainer_cli_or_server():
    offences = {
        module: sorted(t for t in targets if any(within(t, p) for p in NOT_FOR_THE_CORE))
        for module, targets in GRAPH.items()
        if is_core(module)
    }
    assert {module: found for module, found in offences.items() if found} == {}


def test_the_imitation_servers_take_only_leaf_modules_from_the_rest():
    offences = {
        module: sorted(t for t in targets if not within(t, SERVERS) and t not in SERVERS_MAY_IMPORT)
        for module, targets in GRAPH.items()
        if within(module, SERVERS)
    }
    assert {module: found for module, found in offences.items() if found} == {}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_the_circle_finder_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_among_the_projects_modules():
    assert import_circles(GRAPH) == []


def test_importing_the_whole_core_loads_no_reader_writer_trainer_or_cli():
    core = sorted(module for module in MODULES if is_core(module))
    forbidden = ", ".join(repr(p) for p in NOT_FOR_THE_CORE)
    script = (
        "import importlib, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in ({forbidden},)))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in MODULES.values()
    }


def test_no_module_outside_the_tests_is_over_the_limit():
    oversized = {path: lines for path, lines in line_counts().items() if lines > MAX_LINES}
    assert oversized == {}
