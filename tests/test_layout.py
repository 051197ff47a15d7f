"""The package layout: every import goes down the layers, and no two packages import each other.

The flow is connection -> hub -> broker -> transports, drawn as layers
(docs/architecture.md). A module may import only from its own layer or lower
ones; TYPE_CHECKING imports and imports inside functions count too, since
they are the same dependency. The table below is the one place the layout is
written down for the code: moving a module is one edit here.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsrelay"

#: (layer, name, modules): the modules are names under ``wsrelay``; a package stands for
#: every module in it, ``__init__`` for ``wsrelay/__init__.py`` itself.
LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (0, "core values", ("ids", "channels", "message", "errors", "error_codes", "config",
                        "stats", "fairness", "pacing", "control", "memo")),
    (0, "policy", ("auth", "limits", "origins", "hosts")),
    (1, "broker", ("broker",)),
    (2, "hub", ("hub",)),
    (3, "websocket", ("websocket",)),
    (3, "ops", ("ops",)),
    (4, "server", ("server",)),
    (5, "transports", ("transports",)),
    (6, "app", ("relay", "app")),
    (7, "entry points", ("cli", "gunicorn_worker", "gunicorn_conf", "__init__", "__main__")),
    (7, "aside", ("bench",)),
)
#: Packages that only the named modules may import.
ONLY_FROM: dict[str, tuple[str, ...]] = {"bench": ("cli.bench",)}


def module_name(path: Path) -> str:
    """``websocket.protocol`` for wsrelay/websocket/protocol.py, ``__init__`` for the top."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def is_package(name: str) -> bool:
    return name == "__init__" or (PACKAGE / name.replace(".", "/") / "__init__.py").exists()


def exists(name: str) -> bool:
    return is_package(name) or (PACKAGE / (name.replace(".", "/") + ".py")).exists()


def imports_of(path: Path) -> set[str]:
    """The wsrelay modules ``path`` imports, anywhere in it, as names under ``wsrelay``."""
    name = module_name(path)
    package = [] if name == "__init__" else name.split(".")
    if not is_package(name):
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets = ["wsrelay." + module if module else "wsrelay"]
            else:
                targets = [node.module or ""]
            # `from X import y` imports module X.y where there is one, else a name of X
            submodules = [f"{targets[0]}.{alias.name}" for alias in node.names]
            targets = [t for t in submodules if exists(t.partition(".")[2])] or targets
        else:
            continue
        for target in targets:
            if target == "wsrelay":
                found.add("__init__")
            elif target.startswith("wsrelay."):
                parts = target.split(".")[1:]
                while parts and not exists(".".join(parts)):
                    parts.pop()  # a name inside a module, not a module
                if parts:
                    found.add(".".join(parts))
    found.discard(name)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str] | None:
    """The layer and the table entry of ``module`` (the longest entry that contains it)."""
    best: tuple[int, str] | None = None
    for layer, _name, entries in LAYERS:
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (layer, entry)
    return best


def unit_of(module: str) -> str:
    """What the cycle check compares: a subpackage as a whole, a top-level module alone."""
    top = module.split(".")[0]
    return top if is_package(top) else module


def unplaced(graph: Mapping[str, Iterable[str]]) -> list[str]:
    return sorted(module for module in graph if layer_of(module) is None)


def upward(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import of a higher layer, and every import that ONLY_FROM forbids."""
    found = []
    for module, targets in graph.items():
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there[0] > here[0]:
                found.append(f"{module} (layer {here[0]}) imports {target} (layer {there[0]})")
            top = target.split(".")[0]
            if top in ONLY_FROM and unit_of(module) != top and module not in ONLY_FROM[top]:
                found.append(f"{module} imports {target}: only {ONLY_FROM[top]} may")
    return found


def cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle between units (packages, top-level modules), or None."""
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            if unit_of(module) != unit_of(target):
                edges.setdefault(unit_of(module), set()).add(unit_of(target))
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        path.append(unit)
        for following in sorted(edges.get(unit, ())):
            if state.get(following) == "open":
                return [*path[path.index(following):], following]
            if following not in state and (found := visit(following)):
                return found
        path.pop()
        state[unit] = "done"
        return None

    for unit in sorted(edges):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_every_module_has_a_place_in_the_layers():
    assert unplaced(import_graph()) == [], "add the new modules to LAYERS"


def test_no_import_goes_up_a_layer():
    assert upward(import_graph()) == []


def test_no_two_packages_import_each_other():
    assert cycle(import_graph()) is None


def test_imports_are_found_wherever_they_are_written():
    """Relative and absolute, modules named in ``from package import module``, and imports
    under TYPE_CHECKING (the hub's first draft had its only upward arrow there)."""
    graph = import_graph()
    assert {"broker", "ids", "message", "stats"} <= graph["hub"]
    assert "websocket.envelopes" in graph["websocket.modes"]  # `from . import envelopes`
    assert "hub" in graph["ops.metrics"]  # under TYPE_CHECKING
    assert "__init__" in graph["cli.ticker"]  # `import wsrelay`
    assert "broker.redis" in graph["broker"]  # inside a function


@pytest.mark.parametrize("graph,expected", [
    ({"hub": {"websocket.protocol"}, "websocket.protocol": set()},
     ["hub (layer 2) imports websocket.protocol (layer 3)"]),
    ({"server.handler": {"gunicorn_worker"}, "gunicorn_worker": set()},
     ["server.handler (layer 4) imports gunicorn_worker (layer 7)"]),
    ({"cli.serve": {"bench.report"}, "bench.report": set()},
     ["cli.serve imports bench.report: only ('cli.bench',) may"]),
    ({"cli.bench": {"bench.report"}, "websocket.modes": {"websocket.connection", "hub"}}, []),
])
def test_the_check_reports_what_goes_up(graph, expected):
    assert upward(graph) == expected


def test_the_check_reports_a_cycle_between_packages():
    graph = {"websocket.connection": {"ops.metrics"}, "ops.logs": {"websocket.protocol"}}
    assert cycle(graph) == ["ops", "websocket", "ops"]
    assert cycle({"websocket.modes": {"websocket.connection"},
                  "websocket.connection": {"websocket.modes"}}) is None  # inside one package
