"""
rtunnel's import graph, read statically: no cycles, a pure core, dependencies pointing
down, and a library that never imports the command-line grammar.

Every module is parsed with :mod:`ast`, not imported, so imports inside functions and
under ``if TYPE_CHECKING:`` are seen too. An edge has one of three kinds:

- ``module``: runs when the module is imported (module level, class bodies, ``try``);
- ``function``: inside a function body, runs on the first call. It is a runtime import
  all the same: a cycle does not go away by moving one of its imports into a function;
- ``typing``: under ``if TYPE_CHECKING:``, never runs. Counted separately: such a cycle
  imports fine, but it still ties two layers to each other.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from typing_extensions import override

SOURCE = Path(__file__).resolve().parents[2] / "rtunnel"

RUNTIME = frozenset({"module", "function"})

# The layers, lowest first: a module may import its own layer and the ones below, never
# one above. A module belongs to the most specific package named; the packages in EXACT
# name only their own __init__. A new module has to be placed (test_every_module_has_a_layer).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pure core", ("rtunnel.errors", "rtunnel._core")),
    ("data model", ("rtunnel._model", "rtunnel._quiet")),
    ("SSH transport", ("rtunnel.client", "rtunnel.client.transport")),
    ("host keys", ("rtunnel.client.hostkeys",)),
    ("user authentication", ("rtunnel.client.auth",)),
    ("connection and channels", ("rtunnel.client.channels",)),
    # ClientTransport builds its ssh-userauth client and carries the connection service,
    # so it sits above both although it lives with the transport; the connection
    # endpoint (client/reach/endpoint.py) composes it with a route to the server.
    ("client session", ("rtunnel.client.transport.client_transport",)),
    ("reaching the server", ("rtunnel.client.reach",)),
    # What the facade is told: typed groups over the client's own types.
    ("options", ("rtunnel.options",)),
    # The reconnect loop drives the pure core's state table for the facade; the forward
    # table, observer dispatch and session parts are the facade's own pieces.
    (
        "facade",
        (
            "rtunnel._reconnect",
            "rtunnel._forward_table",
            "rtunnel._observers",
            "rtunnel._statistics",
            "rtunnel._session",
            "rtunnel._connection_host",
            "rtunnel.tunnel",
        ),
    ),
    # One service through several servers (issue #15): a composition of tunnels.
    ("tunnel groups", ("rtunnel.group",)),
    # The blocking and asyncio front doors over the facade, and the reactor thread they share.
    ("other front doors", ("rtunnel._bridge", "rtunnel.blocking", "rtunnel.aio")),
    ("public names", ("rtunnel",)),
    ("OpenSSH grammar", ("rtunnel.openssh",)),
    # Many tunnels from a configuration, reload, status, metrics (issue #14).
    ("operations", ("rtunnel.operations",)),
    # The runner starts tunnels as the command does (its credentials, defaults and
    # messages, from rtunnel._front); the configuration and the status types stay below.
    (
        "front ends",
        (
            "rtunnel._front",
            "rtunnel.service",
            "rtunnel.cli",
            "rtunnel.operations.runner",
            "rtunnel.tap",
        ),
    ),
    ("test helpers and demo", ("rtunnel.testing", "rtunnel.demo")),
)
EXACT = frozenset({"rtunnel", "rtunnel.client"})
# The command-line grammar and the front ends over it: nothing in the library (the layers
# up to its public names) imports them.
FRONT_ENDS = ("rtunnel.openssh", "rtunnel.cli", "rtunnel.service", "rtunnel._front")
LIBRARY_TOP = "public names"
CORE = "rtunnel._core"
# What the pure core may import: itself, the error classes, the standard library.
CORE_MAY_IMPORT = ("rtunnel._core", "rtunnel.errors", "typing_extensions")


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency of ``source`` on ``target``."""

    source: str
    target: str
    kind: str  # "module", "function" or "typing"
    line: int

    @override
    def __str__(self) -> str:
        where = {"module": "", "function": " (in a function)", "typing": " (TYPE_CHECKING)"}
        return f"{self.source} -> {self.target}{where[self.kind]}, line {self.line}"


def within(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or inside it."""
    return module == package or module.startswith(package + ".")


def in_layer(module: str, package: str) -> bool:
    """Whether ``module`` belongs to ``package``'s layer (a package in EXACT: only itself)."""
    return module == package if package in EXACT else within(module, package)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, str, int]]:
    """
    Every import in ``source`` as (imported name, kind, line). ``from a import b`` gives
    ``a.b`` (the resolver decides whether that is a module or a name in ``a``).
    """
    found: list[tuple[str, str, int]] = []
    package = module if is_package else module.rpartition(".")[0]

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, kind, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = absolute(node)
            found.extend((f"{origin}.{alias.name}", kind, node.lineno) for alias in node.names)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            for statement in node.body:
                visit(statement, "typing")
            for statement in node.orelse:
                visit(statement, kind)
        else:
            inner = kind
            if kind == "module" and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            ):
                inner = "function"
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

    visit(ast.parse(source), "module")
    return found


def resolve(name: str, modules: Iterable[str]) -> str:
    """The longest module of ``modules`` that ``name`` is or is inside of ("" if none)."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return ""


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: list[Edge]
    # Imports of modules outside rtunnel: (module, imported name, kind, line).
    external: list[tuple[str, str, str, int]]


def read_graph(root: Path = SOURCE) -> Graph:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(path, root): path for path in paths}
    edges: list[Edge] = []
    external: list[tuple[str, str, str, int]] = []
    for module, path in modules.items():
        imports = imports_of(path.read_text(), module, path.name == "__init__.py")
        for name, kind, line in imports:
            if within(name, "rtunnel"):
                target = resolve(name, modules)
                assert target, f"{path}:{line} imports {name}, which is no module of rtunnel"
                edge = Edge(module, target, kind, line)
                if target != module and edge not in edges:
                    edges.append(edge)
            else:
                external.append((module, name, kind, line))
    return Graph(modules, edges, external)


def find_cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """
    The cycles of the graph: for each edge that lies on a cycle, the shortest cycle
    through it, each cycle once (so every tangle is named, with each of its edges).
    """
    following: dict[str, list[Edge]] = {}
    for edge in edges:
        following.setdefault(edge.source, []).append(edge)

    def path(start: str, goal: str) -> list[Edge] | None:
        came: dict[str, Edge | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node == goal:
                steps: list[Edge] = []
                while (edge := came[node]) is not None:
                    steps.append(edge)
                    node = edge.source
                return steps[::-1]
            for edge in following.get(node, []):
                if edge.target not in came:
                    came[edge.target] = edge
                    queue.append(edge.target)
        return None

    cycles: dict[tuple[str, ...], list[Edge]] = {}
    for edge_list in following.values():
        for edge in edge_list:
            back = path(edge.target, edge.source)
            if back is None:
                continue
            cycle = [edge, *back]
            names = [step.source for step in cycle]
            first = names.index(min(names))
            key = tuple(names[first:] + names[:first])
            cycles.setdefault(key, cycle[first:] + cycle[:first])
    return [cycles[key] for key in sorted(cycles)]


def describe(cycles: list[list[Edge]]) -> str:
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join([step.source for step in cycle] + [cycle[0].source]))
        lines.extend(f"    {step}" for step in cycle)
    return "\n".join(lines)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of the most specific package ``module`` is in."""
    best: tuple[int, int] | None = None  # (length of the package name, layer)
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if in_layer(module, package) and (best is None or len(package) > best[0]):
                best = (len(package), index)
    return None if best is None else best[1]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph()


def test_no_import_cycles(graph: Graph) -> None:
    cycles = find_cycles(edge for edge in graph.edges if edge.kind in RUNTIME)
    assert not cycles, "import cycles at runtime:\n" + describe(cycles)


def test_no_import_cycles_through_type_checking_imports(graph: Graph) -> None:
    cycles = find_cycles(graph.edges)
    assert not cycles, "import cycles, counting TYPE_CHECKING imports:\n" + describe(cycles)


def test_the_core_is_pure(graph: Graph) -> None:
    """
    ``rtunnel._core`` imports only itself, ``rtunnel.errors``, the standard library and
    ``typing_extensions`` at runtime: no reactor, no Conch. Under ``TYPE_CHECKING`` it may
    name other packages' types (an ``IReactorTime``, say), but never a part of rtunnel
    above it.
    """
    stdlib = sys.stdlib_module_names
    wrong = [
        str(edge)
        for edge in graph.edges
        if within(edge.source, CORE)
        and not any(within(edge.target, allowed) for allowed in CORE_MAY_IMPORT)
    ]
    wrong.extend(
        f"{module} -> {name} ({kind}), line {line}"
        for module, name, kind, line in graph.external
        if within(module, CORE)
        and kind in RUNTIME
        and name.partition(".")[0] not in stdlib
        and not any(within(name, allowed) for allowed in CORE_MAY_IMPORT)
    )
    assert not wrong, "the pure core imports more than it may:\n" + "\n".join(wrong)


def in_library(module: str) -> bool:
    top = [name for name, _ in LAYERS].index(LIBRARY_TOP)
    layer = layer_of(module)
    return layer is not None and layer <= top


def test_the_library_never_imports_the_command_line_grammar(graph: Graph) -> None:
    wrong = [
        str(edge)
        for edge in graph.edges
        if in_library(edge.source) and any(within(edge.target, front) for front in FRONT_ENDS)
    ]
    assert not wrong, "the library imports the command line's modules:\n" + "\n".join(wrong)


def test_every_module_has_a_layer(graph: Graph) -> None:
    unplaced = [module for module in graph.modules if layer_of(module) is None]
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_dependencies_point_down(graph: Graph) -> None:
    wrong = []
    for edge in graph.edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is not None and target is not None and target > source:
            wrong.append(f"{edge} ({LAYERS[source][0]} imports {LAYERS[target][0]})")
    assert not wrong, "imports that point up a layer:\n" + "\n".join(wrong)


# The checks above must be able to fail: the scanner and the cycle finder on made-up input.


def test_each_kind_of_import_is_seen() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import rtunnel.a\n"
        "from rtunnel import b\n"
        "from . import c\n"
        "if TYPE_CHECKING:\n"
        "    from rtunnel.d import D\n"
        "class K:\n"
        "    from rtunnel import e\n"
        "    def method(self):\n"
        "        import rtunnel.f\n"
        "async def g():\n"
        "    from ..h import H\n"
    )
    found = imports_of(source, "rtunnel.pkg.mod", is_package=False)
    assert found == [
        ("typing.TYPE_CHECKING", "module", 1),
        ("rtunnel.a", "module", 2),
        ("rtunnel.b", "module", 3),
        ("rtunnel.pkg.c", "module", 4),
        ("rtunnel.d.D", "typing", 6),
        ("rtunnel.e", "module", 8),
        ("rtunnel.f", "function", 10),
        ("rtunnel.h.H", "function", 12),
    ]


def test_names_resolve_to_the_module_that_holds_them() -> None:
    modules = ["rtunnel", "rtunnel.client", "rtunnel.client.reach.jump"]
    assert resolve("rtunnel.client.reach.jump.JumpHost", modules) == "rtunnel.client.reach.jump"
    assert resolve("rtunnel.client.reach.jump", modules) == "rtunnel.client.reach.jump"
    assert resolve("rtunnel.client.Other", modules) == "rtunnel.client"
    assert resolve("rtunnel.ReverseTunnel", modules) == "rtunnel"
    assert resolve("twisted.internet", modules) == ""


def _edges(pairs: Mapping[tuple[str, str], str]) -> list[Edge]:
    return [Edge(a, b, kind, 1) for (a, b), kind in pairs.items()]


def test_cycles_are_found_and_named() -> None:
    edges = _edges(
        {
            ("a", "b"): "module",
            ("b", "a"): "typing",
            ("b", "c"): "module",
            ("c", "d"): "function",
            ("d", "b"): "module",
            ("d", "e"): "module",
        }
    )
    cycles = find_cycles(edges)
    assert [[step.source for step in cycle] for cycle in cycles] == [["a", "b"], ["b", "c", "d"]]
    assert describe(cycles).splitlines()[0] == "a -> b -> a"
    assert "b -> a (TYPE_CHECKING), line 1" in describe(cycles)
    runtime = find_cycles(edge for edge in edges if edge.kind in RUNTIME)
    assert [[step.source for step in cycle] for cycle in runtime] == [["b", "c", "d"]]
    assert find_cycles(_edges({("a", "b"): "module", ("b", "c"): "module"})) == []


def test_the_library_is_what_the_issue_calls_it() -> None:
    for module in (
        "rtunnel",
        "rtunnel.tunnel",
        "rtunnel.options",
        "rtunnel._core.wire",
        "rtunnel.errors",
    ):
        assert in_library(module), module
    for module in ("rtunnel.client.reach.jump", "rtunnel.client.transport.client_transport"):
        assert in_library(module), module
    for module in ("rtunnel.openssh.options", "rtunnel.cli", "rtunnel.testing.server._server"):
        assert not in_library(module), module


def test_layers_are_matched_by_the_most_specific_package() -> None:
    def name(module: str) -> str:
        index = layer_of(module)
        return "none" if index is None else LAYERS[index][0]

    assert name("rtunnel") == "public names"
    assert name("rtunnel.client.channels.connection") == "connection and channels"
    assert name("rtunnel.client.transport._kex") == "SSH transport"
    assert name("rtunnel.client.transport.client_transport") == "client session"
    assert name("rtunnel.client") == "SSH transport"
    assert name("rtunnel.client.elsewhere") == "none"
    assert name("rtunnel._core.wire") == "pure core"
    assert name("rtunnel.testing.server._server") == "test helpers and demo"
    assert name("rtunnel.elsewhere") == "none"
    assert name("rtunnelx") == "none"


def test_the_graph_is_the_real_one(graph: Graph) -> None:
    """The scanner reads every module of the tree, and finds its imports."""
    assert len(graph.modules) == len(list(SOURCE.rglob("*.py")))
    assert 40 <= len(graph.modules) <= 200
    assert 150 <= len(graph.edges) <= 1500
    assert any(
        edge.source == "rtunnel.tunnel"
        and edge.target == "rtunnel.errors"
        and edge.kind == "module"
        for edge in graph.edges
    )


def test_the_library_never_imports_the_global_reactor(graph: Graph) -> None:
    # STYLE: reactor and clock are arguments. Only the front ends that run the global
    # reactor (twistd's service and plugin) and the pytest plugin may import it.
    allowed = ("rtunnel.service", "rtunnel.tap", "rtunnel.testing.pytest_plugin")
    found = [
        f"{module}:{line}"
        for module, name, _kind, line in graph.external
        if (name == "twisted.internet.reactor" or name.startswith("twisted.internet.reactor."))
        and module not in allowed
    ]
    assert not found, "the global reactor is imported by:\n" + "\n".join(found)
    # Not vacuous: the allowed ones are seen.
    assert {m for m, n, _k, _l in graph.external if n == "twisted.internet.reactor"} == set(allowed)
