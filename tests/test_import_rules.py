"""The import rules of ARCHITECTURE.md, checked by an ast walk over `resilient/`.

Every import counts: top level, inside functions and under ``if TYPE_CHECKING:`` (a type-only
import still ties two modules together; go through a Protocol or a leaf like `_kernel.layer`).
A module's *group* is its folder (`_strategies`, `httpx`, ...) or, for a top-level module, its
name (`deadline`, `asgi`, ...); `RULES` says which groups each group may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import resilient

PACKAGE = Path(resilient.__file__).parent

#: Which groups each group may import (its own always). A group missing here is an error:
#: a new folder or top-level module needs its rule.
RULES: dict[str, frozenset[str]] = {
    "_version": frozenset(),
    "redaction": frozenset(),
    "_kernel": frozenset(),  # errors, clock, validate, context, layer: imports nothing above it
    "deadline": frozenset({"_kernel"}),
    "logging": frozenset({"_kernel", "redaction"}),
    "instrumentation": frozenset({"_kernel", "_version", "redaction", "logging"}),
    # Redis and its degradation; the shared breaker subclasses the in-process one (see EDGES).
    "_storage": frozenset({"_kernel", "instrumentation"}),
    # One module per strategy: its config, runtime and layer. Never the engine or a wing.
    "_strategies": frozenset({"_kernel", "instrumentation", "_storage", "deadline", "redaction"}),
    # Composes the strategies; names no integration.
    "_engine": frozenset({"_kernel", "instrumentation", "_strategies"}),
    # The surface; it hands the engine the config wing's policy lookup (lazily imported).
    "__init__": frozenset({"_kernel", "instrumentation", "_storage", "_strategies", "_engine", "deadline", "config"}),
    # The wings: they import the core, never each other.
    "httpx": frozenset({"_kernel", "instrumentation", "_strategies", "_engine", "deadline", "redaction"}),
    "_edge": frozenset({"_kernel", "instrumentation", "_storage", "_strategies", "deadline", "redaction", "logging"}),
    "asgi": frozenset({"_edge", "_kernel", "instrumentation", "deadline"}),
    "wsgi": frozenset({"_edge", "_kernel", "instrumentation", "deadline"}),
    "testing": frozenset({"_kernel", "_strategies", "_engine"}),
    # `python -m resilient demo`: the one place that may import everything.
    "_demo": frozenset({"__init__", "httpx", "instrumentation", "testing"}),
    # Files, environment and zero-code: above the engine and both wings, which never import it.
    "config": frozenset(
        {"_kernel", "instrumentation", "_strategies", "_engine", "_edge", "httpx", "asgi", "wsgi", "__init__"}
    ),
    "__main__": frozenset({"_demo", "config"}),
}

#: Inside `_strategies`, a module imports a sibling only along these edges.
SIBLINGS: dict[str, frozenset[str]] = {
    "retry": frozenset({"budget", "attempt", "breaker"}),  # the quiet-breaker fast path; bounded calls
    "ratelimit": frozenset({"rate_windows"}),
    "attempt": frozenset({"breaker", "breaker_registry", "timeout"}),  # breaker + attempt timeout
    "breaker_registry": frozenset({"breaker"}),
}

#: Single edges across groups that the group rules do not allow.
EDGES: frozenset[tuple[str, str]] = frozenset(
    {
        # SharedBreakerRuntime subclasses BreakerRuntime; `breaker_registry` chooses between them.
        ("resilient._storage.shared_breaker", "resilient._strategies.breaker"),
        ("resilient._strategies.breaker_registry", "resilient._storage.shared_breaker"),
    }
)

#: Cycles tolerated for now: none. An entry here would be a cycle waiting to be broken.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package under its dotted name (a package under its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text (TYPE_CHECKING too)."""
    known = modules(package)
    root = package.name

    def resolve(name: str) -> str:
        while name not in known and "." in name:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names if alias.name.split(".")[0] == root}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] != root:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in known else resolve(base))
        targets.discard(name)
        graph[name] = targets
    return graph


def group_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import against RULES / SIBLINGS / EDGES, as 'importer -> imported: why'."""
    found = []
    for importer, targets in sorted(graph.items()):
        group = group_of(importer)
        if group not in RULES:
            found.append(f"{importer}: group {group!r} has no rule in RULES")
            continue
        for target in sorted(targets):
            other = group_of(target)
            if (importer, target) in EDGES:
                continue
            if other == group:
                if group == "_strategies" and len(target.split(".")) > 2:
                    mine, theirs = importer.split(".")[-1], target.split(".")[-1]
                    if theirs not in SIBLINGS.get(mine, frozenset()):
                        found.append(f"{importer} -> {target}: strategies import a sibling only along SIBLINGS")
                continue
            if other not in RULES[group]:
                found.append(f"{importer} -> {target}: {group} may import only {sorted(RULES[group])}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_every_import_follows_the_folder_rules() -> None:
    """No module of `resilient/` imports against RULES, SIBLINGS and EDGES."""
    assert violations(import_graph(PACKAGE)) == []


def test_no_import_cycles_but_the_known_ones() -> None:
    """The modules form no import cycle (TYPE_CHECKING imports included) beyond KNOWN_CYCLES."""
    assert set(cycles(import_graph(PACKAGE))) <= KNOWN_CYCLES


_GUARD = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "resilient"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text, encoding="utf-8")
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"_strategies/x.py": "from resilient._engine.compiled import CompiledPolicy\n", "_engine/compiled.py": ""},
            "resilient._strategies.x -> resilient._engine.compiled",
        ),
        (
            {"_kernel/a.py": "def f():\n    import resilient.deadline\n", "deadline.py": ""},
            "resilient._kernel.a -> resilient.deadline",
        ),
        (
            {
                "_engine/a.py": _GUARD + "    from resilient import httpx\n",
                "httpx/__init__.py": "",
            },
            "resilient._engine.a -> resilient.httpx",
        ),
        (
            {"_strategies/timeout.py": "from resilient._strategies import retry\n", "_strategies/retry.py": ""},
            "resilient._strategies.timeout -> resilient._strategies.retry",
        ),
        ({"chaos/__init__.py": ""}, "group 'chaos' has no rule"),
    ],
)
def test_the_rule_checker_catches_a_violating_import(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    """A synthetic tree with one import against the rules yields exactly that violation."""
    found = violations(import_graph(_tree(tmp_path, files)))
    assert len(found) == 1
    assert expected in found[0]


def test_the_rule_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    """The same kind of tree with allowed imports (relative ones too) yields no violation."""
    package = _tree(
        tmp_path,
        {
            "_kernel/clock.py": "",
            "_strategies/retry.py": "from .._kernel import clock\nfrom . import budget\n",
            "_strategies/budget.py": "",
        },
    )
    graph = import_graph(package)
    assert graph["resilient._strategies.retry"] == {"resilient._kernel.clock", "resilient._strategies.budget"}
    assert violations(graph) == []


def test_the_cycle_finder_sees_a_type_only_cycle(tmp_path: Path) -> None:
    """A cycle closed only under `if TYPE_CHECKING:` is a cycle; a chain is not."""
    guarded = _GUARD + "    from resilient._engine.a import A\n"
    package = _tree(
        tmp_path,
        {
            "_engine/a.py": "from resilient._engine import b\n",
            "_engine/b.py": "import resilient._engine.c\n",
            "_engine/c.py": guarded,
            "_engine/d.py": "from resilient._engine import a\n",
        },
    )
    assert cycles(import_graph(package)) == [
        frozenset({"resilient._engine.a", "resilient._engine.b", "resilient._engine.c"})
    ]
