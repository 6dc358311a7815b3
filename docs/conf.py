"""Sphinx configuration of the pytest-jumpstarter-http documentation.

Every page reads the same unbuilt, on a forge, as built: the options, fixtures and markers
tables, the API reference, each example and the changelog are written into the Markdown by
``docs/generate.py`` between ``<!-- generated: ... -->`` comments, and the build warns (an error
under ``-W``) when a page's generated part is stale. No API pages made by the build, no
include: nothing it adds can go missing from a page without a test seeing it.

The diagrams are plain ``mermaid`` fences, which a forge draws; the build draws them as SVG
files with mermaidx (mermaid's own script run in an embedded JavaScript engine), so the site
loads nothing from another host. Build with
``.venv/bin/sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import shlex
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

extensions = ["myst_parser", "sphinxcontrib.mermaid"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# A ```mermaid fence is the diagram on a forge and the directive here.
myst_fence_as_directive = ["mermaid"]
smartquotes = False  # keep "--http-scope" as typed, not an en dash
html_theme = "furo"
html_title = "pytest-jumpstarter-http"

# Drawn at build time into SVG files: no mermaid script from a CDN, at build or view time.
mermaid_output_format = "svg"
mermaid_cmd = f"{shlex.quote(sys.executable)} -m mermaidx --quiet"
mermaid_params = ["--background", "white"]


def _current_generated_parts(app: Sphinx, docname: str, source: list[str]) -> None:
    """Build every generated part as the code makes it now, and warn (an error under ``-W``) when
    the page holds another text: the page is what a forge shows, so it must be rewritten."""
    here = Path(app.env.doc2path(docname)).parent
    current = generate.render(source[0], here)
    if current != source[0]:
        logger.warning(
            "its generated parts differ from what the code makes now; run python docs/generate.py",
            location=docname,
        )
        source[0] = current


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _current_generated_parts)
    return {"parallel_read_safe": True}
