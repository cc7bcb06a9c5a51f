"""The tree is the architecture: floors import only floors below, no cycles, small modules.

A static check over the source (``ast``): every ``import`` of the project's own modules
counts, lazy ones inside functions included (a lazy import hides a cycle, it does not
remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("al", "hpo")
MAX_LINES = 600

#: Floors from the ground up; a module may import its own package and lower floors only.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("al.config", "al.extras", "al.plots", "al.progress", "al.registry", "al.runtime"),
    ("al.data",),
    ("al.models",),
    ("al.training",),
    ("al.uncertainty",),
    ("al.acquisition", "al.oracles"),
    ("al.baselines",),
    ("al.tracking",),
    ("al.loop",),
    ("al.report",),
    ("al.entrypoints",),
    ("hpo",),
    ("al.cli", "al.pyfunc", "al.mlflow_model", "al.api"),
)
#: The root package only holds the version: the ground floor.
ROOT = "al"


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (resolved to the longest known module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
            ]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            # a package's __init__ importing its own parts is its face, not a dependency
            if t and t != name and not t.startswith(name + "."):
                out.add(t)
    return out


def _floor(module: str) -> int:
    return _place(module)[0]


def _package(module: str) -> str:
    """The floor entry a module belongs to (its package, or the module itself)."""
    return _place(module)[1]


def _place(module: str) -> tuple[int, str]:
    if module == ROOT:
        return 0, ROOT
    best, level, where = -1, -1, ""
    for i, group in enumerate(FLOORS):
        for prefix in group:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level, where = len(prefix), i, prefix
    assert level >= 0, f"{module} is on no floor: add it to FLOORS"
    return level, where


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, f, mods) for m, f in mods.items()}


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = [*path[path.index(t) :], t]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_floors_import_only_floors_below(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{m} (floor {_floor(m)}) imports {t} (floor {_floor(t)})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if _package(t) != _package(m) and _floor(t) >= _floor(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_module_over_the_limit() -> None:
    sizes = {m: len(f.read_text().splitlines()) for m, f in _modules().items()}
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, big


def test_library_code_does_not_print() -> None:
    """Library code logs or takes an ``echo`` callable; only the CLI writes to stdout."""
    offenders = []
    for m, f in _modules().items():
        if m == "al.cli":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
