"""Sphinx configuration of the pytest-jumpstarter-http documentation.

The options, fixtures and markers tables are generated from the package itself by
``docs/generate.py`` and written into the pages between ``<!-- generated: ... -->`` comments, so
they read well unbuilt and cannot drift from the code: the build warns (an error under ``-W``)
when a page's generated part is stale. Build with ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate  # docs/generate.py, which puts the package on the path

logger = logging.getLogger(__name__)

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


def _current_generated_parts(app: Sphinx, docname: str, source: list[str]) -> None:
    """Build every generated part as the code makes it now, and warn (an error under ``-W``) when
    the page holds another text: the page is what a forge shows, so it must be rewritten."""
    current = generate.render(source[0])
    if current != source[0]:
        logger.warning(
            "its generated parts differ from what the code makes now; run python docs/generate.py",
            location=docname,
        )
        source[0] = current


def _hide_factory_constructor(app: Sphinx, what: str, name: str, *args: Any) -> tuple[str, None] | None:
    """The factory is made by its fixture: its constructor's arguments are no business of users."""
    return ("", None) if name == "pytest_jumpstarter_http.HttpServerFactory" else None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", _hide_factory_constructor)
    app.connect("source-read", _current_generated_parts)
    return {"parallel_read_safe": True}
