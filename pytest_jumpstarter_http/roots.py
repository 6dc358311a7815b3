"""Where a served root comes from, who owns it, and who removes it.

A root is one of two kinds, and which one is recorded here when it comes to be, never inferred
from its path later (a link makes any path look like one of ours):

* **a user's directory**: ``--http-root``, the ``http_server(root=...)`` marker, a ``served_dir``
  overridden in a conftest, a root given to ``http_server_factory``. The plugin never writes,
  moves or removes anything in it; files a test stages for it go to a staging folder of the
  plugin's own, served beside it.
* **the plugin's own**: a temporary folder :class:`Roots` makes below pytest's basetemp, for one
  test, one session, one factory server or one staging folder. It is removed at the end of its
  scope unless ``--http-keep``; pytest's retention of old basetemps removes whatever a killed
  run left.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .values import Keep


class Roots:
    """Makes the plugin's own folders below ``basetemp`` and remembers that they are its own."""

    def __init__(self, basetemp: Callable[[], Path], *, keep: Keep) -> None:
        #: Where its folders go, asked on first use: pytest decides its basetemp late.
        self._basetemp = basetemp
        self._keep = keep
        self._own: set[Path] = set()

    def make(self, label: str) -> Path:
        """A new empty folder of the plugin's own, named after ``label``."""
        prefix = re.sub(r"[^\w.-]+", "_", label)[:40] + "-"
        basetemp = self._basetemp()
        try:
            root = Path(tempfile.mkdtemp(prefix=prefix, dir=basetemp))
        except FileNotFoundError:  # the first root of the session
            basetemp.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix=prefix, dir=basetemp))
        self._own.add(root)
        return root

    def owns(self, root: Path) -> bool:
        """Whether the plugin made ``root`` (a user's directory never is, whatever its path)."""
        return root in self._own

    def keeps(self, *, failed: bool) -> bool:
        """Whether ``--http-keep`` keeps the folders of a scope that ``failed`` (or not)."""
        return self._keep == "all" or (failed and self._keep == "failed")

    def remove(self, root: Path, *, failed: bool = False) -> None:
        """Remove a folder the plugin made, unless ``--http-keep`` keeps it (``failed``: its test
        failed); anything else is left alone."""
        if root not in self._own:
            return
        self._own.discard(root)
        if self.keeps(failed=failed):
            return
        try:
            root.rmdir()  # most tests' roots are empty by now, and this is the per-test path
        except OSError:
            shutil.rmtree(root, ignore_errors=True)

    @contextmanager
    def temporary(self, label: str, failed: Callable[[], bool] = lambda: False) -> Iterator[Path]:
        """A folder of the plugin's own for the block, removed after it unless ``--http-keep`` keeps it
        (``failed`` tells, at the end, whether the block's test failed)."""
        root = self.make(label)
        try:
            yield root
        finally:
            self.remove(root, failed=failed())
