"""The package's layers, as the folders draw them: each layer imports only the layers below
it (and itself), and no module imports itself back through others.

Read from the source with `ast`, every import counts, those inside functions too; only the
ones under `if TYPE_CHECKING:` do not (they name types and run nothing).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "server"

# Top to bottom. A module belongs to the first entry that names it or its package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("commands: the CLI and its processes", ("commands", "__main__")),
    ("the app factory", ("app",)),
    ("the Pusher dialect", ("pusher",)),
    ("the web edge", ("web",)),
    ("the service and its settings", ("service", "config")),
    ("attach mode", ("attach",)),
    ("the engine", ("engine",)),
    ("the database", ("database",)),
    ("the pure rules and helpers", ("core", "tasks", "resources", "__init__")),
]
# The public client stands apart: it imports nothing of the server.
APART = ("client",)


def module_names() -> list[str]:
    return sorted(
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts) for path in PACKAGE.rglob("*.py")
    )


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    return None


def _runtime_imports(node: ast.AST) -> Iterator[ast.ImportFrom | ast.Import]:
    if isinstance(node, ast.ImportFrom | ast.Import):
        yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield from _runtime_imports(other)
        else:
            yield from _runtime_imports(child)


def imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports (packages resolved to their modules)."""
    path = PACKAGE.joinpath(*module.split("."))
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    known = set(module_names())
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            targets = [
                a.name.removeprefix("opspush.") for a in node.names if a.name.startswith("opspush.")
            ]
        elif node.level:
            base = here[: len(here) - node.level + 1]
            prefix = [*base, *(node.module.split(".") if node.module else [])]
            targets = [".".join([*prefix, alias.name]) for alias in node.names]
            targets.append(".".join(prefix))
        elif node.module and (node.module == "opspush" or node.module.startswith("opspush.")):
            prefix = node.module.split(".")[1:]
            targets = [".".join([*prefix, alias.name]) for alias in node.names]
            targets.append(".".join(prefix))
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
            elif f"{target}.__init__" in known and target:
                found.add(f"{target}.__init__")
    found.discard(module)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in module_names() if layer_of(m) is None and m.split(".")[0] not in APART]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("module", module_names())
def test_imports_go_down_the_layers(module: str) -> None:
    mine = layer_of(module)
    if module.split(".")[0] in APART:
        assert not imports_of(module), f"{module} must import nothing of the server"
        return
    assert mine is not None
    upward = {
        target: LAYERS[layer][0]
        for target in imports_of(module)
        if (layer := layer_of(target)) is not None and layer < mine
    }
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports from above it: {upward}"


def test_no_import_cycles() -> None:
    graph = {module: imports_of(module) for module in module_names()}
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.endswith("__init__")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
