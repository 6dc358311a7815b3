"""The package's shape (issue 18): four layers by where code runs, arrows one way, no import loop.

pytest → the test process → records ← the server. Imports inside functions count: a loop or an
arrow up through a lazy import is as hard to read as one at the top of a module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_jumpstarter_http"

LAYERS = {
    "pytest": {"plugin", "options", "preflight", "markers", "runtime", "reports"},
    "process": {
        "handle",
        "loopback",
        "exporter",
        "connect",
        "client",
        "store",
        "roots",
        "locks",
        "eventloop",
        "tls",
    },
    "records": {"records", "deviceapi", "beneath", "values", "channel"},
    "server": {"driver", "serving", "offload", "shaping", "answering", "tlssites", "namespaces"},
}
#: The layers each layer may import from.
ALLOWED = {
    "pytest": {"pytest", "process", "records"},
    "process": {"process", "records"},
    "records": {"records"},
    "server": {"server", "records"},
}
#: Arrows across the layers that the design has: the loopback backend runs the server in this process.
BRIDGES = {("loopback", "driver")}


def modules() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}


def layer_of(module: str) -> str:
    (layer,) = [name for name, members in LAYERS.items() if module in members]
    return layer


def imports(module: str) -> tuple[set[str], set[str]]:
    """The package modules ``module`` imports, and the top-level outside packages, anywhere in it."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            ours.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and node.module:
            theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(alias.name.split(".")[0] for alias in node.names)
    return ours & modules() - {module}, theirs


def test_every_module_of_the_package_has_a_layer():
    placed = set().union(*LAYERS.values())
    assert modules() == placed, f"give these modules a layer here: {sorted(modules() - placed)}"


@pytest.mark.parametrize("module", sorted(set().union(*LAYERS.values())))
def test_a_module_imports_only_from_its_own_layer_and_those_below(module):
    wrong = [
        target
        for target in imports(module)[0]
        if layer_of(target) not in ALLOWED[layer_of(module)] and (module, target) not in BRIDGES
    ]
    assert not wrong, f"{module} ({layer_of(module)}) imports {wrong}, an arrow the wrong way"


@pytest.mark.parametrize("module", sorted(set().union(*LAYERS.values()) - LAYERS["pytest"]))
def test_only_the_pytest_layer_imports_pytest(module):
    assert "pytest" not in imports(module)[1], f"{module} imports pytest; it must work without it"


@pytest.mark.parametrize("module", sorted(LAYERS["records"]))
def test_the_records_import_neither_aiohttp_nor_jumpstarter(module):
    assert not imports(module)[1] & {"aiohttp", "jumpstarter", "grpc", "pytest"}


def test_no_modules_import_each_other_in_a_loop():
    edges = {module: imports(module)[0] for module in modules()}
    loops = []
    for start in sorted(edges):
        seen, todo = set(), list(edges[start])
        while todo:
            module = todo.pop()
            if module == start:
                loops.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(edges[module])
    assert not loops, f"these modules are on an import loop: {loops}"


def test_the_layers_page_places_every_module_where_this_test_does():
    page = (PACKAGE.parent / "docs" / "lifecycle.md").read_text()
    named = {"pytest": "pytest", "test process": "process", "records": "records", "server": "server"}
    rows = re.findall(r"^\| (pytest|test process|records|server) \| `(\w+)` \|", page, re.MULTILINE)
    on_page = {module: named[layer] for layer, module in rows}
    here = {module: layer for layer, members in LAYERS.items() for module in members}
    assert on_page == here
