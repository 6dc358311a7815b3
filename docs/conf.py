"""Sphinx configuration of the pytest-jumpstarter-http documentation.

The options, fixtures and markers tables are generated from the package itself
(``options.OPTIONS``, the fixtures in ``plugin.py``, ``markers.MARKERS``), so they cannot drift
from the code. Build with ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_jumpstarter_http import markers, options, plugin

project = "pytest-jumpstarter-http"
author = "pytest-jumpstarter-http developers"
copyright = "pytest-jumpstarter-http developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib.mermaid",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
smartquotes = False  # keep "--http-scope" as typed, not an en dash
html_theme = "furo"
html_title = "pytest-jumpstarter-http"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "special-members": "__call__"}

FIXTURES = ("served_dir", "http_server", "http_url", "http_server_factory", "http_exporter_client")
DEFAULT = re.compile(r"\s*\(default: (?P<default>[^)]*(?:\([^)]*\))?[^)]*)\)\s*$")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def option_rows() -> list[tuple[str, str, str, str]]:
    """(command line, ini key, default, help) for every option, in the order pytest lists them."""
    rows = []
    for option in options.OPTIONS:
        match = DEFAULT.search(option.help)
        default = match["default"] if match else ""
        text = option.help[: match.start()] if match else option.help
        flag = option.flag if option.metavar is None else f"{option.flag} {option.metavar}"
        rows.append((flag, option.ini, default, text))
    return rows


def fixture_rows() -> list[tuple[str, str, str, str]]:
    """(name, pytest scope, yielded type, first sentence of the docstring) for every public fixture."""
    rows = []
    for name in FIXTURES:
        definition = getattr(plugin, name)
        # pytest >= 8.4 wraps fixture functions; the wrapped one has the annotations.
        function = getattr(definition, "_get_wrapped_function", lambda d=definition: d)()
        marker = getattr(definition, "_fixture_function_marker", None)
        scope = getattr(marker, "scope", "function")
        returns = str(inspect.signature(function).return_annotation)
        returns = re.sub(r"^Iterator\[(.*)\]$", r"\1", returns)
        doc = inspect.cleandoc(function.__doc__ or "")
        rows.append((name, scope, returns, doc.split("\n\n")[0].replace("\n", " ")))
    return rows


class _TableDirective(SphinxDirective):
    """Render generated Markdown through MyST, so the tables use the same inline syntax as the pages."""

    def markdown(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(self.markdown(), source="conf.py"), self.content_offset, container)
        return container.children


class OptionsTable(_TableDirective):
    def markdown(self) -> list[str]:
        lines = ["| Command line | ini key | Default | What it does |", "|---|---|---|---|"]
        for flag, ini, default, text in option_rows():
            lines.append(f"| `{flag}` | `{ini}` | {_cell(default)} | {_cell(text)} |")
        return lines


class FixturesTable(_TableDirective):
    def markdown(self) -> list[str]:
        lines = ["| Fixture | pytest scope | Yields | What it is |", "|---|---|---|---|"]
        for name, scope, returns, doc in fixture_rows():
            lines.append(f"| `{name}` | {scope} | `{returns}` | {_cell(doc)} |")
        return lines


class FixtureDoc(_TableDirective):
    """The whole docstring of the fixture named in the argument: ``{http-fixture-doc} served_dir``."""

    required_arguments = 1

    def markdown(self) -> list[str]:
        name = self.arguments[0]
        row = next(row for row in fixture_rows() if row[0] == name)
        definition = getattr(plugin, name)
        function = getattr(definition, "_get_wrapped_function", lambda: definition)()
        lines = [f"*pytest scope:* {row[1]}. *Yields:* `{row[2]}`.", ""]
        return lines + inspect.cleandoc(function.__doc__ or "").splitlines()


class MarkersList(_TableDirective):
    def markdown(self) -> list[str]:
        lines: list[str] = []
        for line in markers.MARKERS:
            signature, _, text = line.partition(": ")
            lines += [f"`@pytest.mark.{signature}`", f": {text[0].upper()}{text[1:]}.", ""]
        return lines


def _hide_factory_constructor(app: Sphinx, what: str, name: str, *args: Any) -> tuple[str, None] | None:
    """The factory is made by its fixture: its constructor's arguments are no business of users."""
    return ("", None) if name == "pytest_jumpstarter_http.HttpServerFactory" else None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", _hide_factory_constructor)
    app.add_directive("http-options-table", OptionsTable)
    app.add_directive("http-fixtures-table", FixturesTable)
    app.add_directive("http-fixture-doc", FixtureDoc)
    app.add_directive("http-markers-list", MarkersList)
    return {"parallel_read_safe": True}
