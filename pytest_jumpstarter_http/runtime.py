"""What one pytest process keeps for its whole session: session servers, temporary roots, exporters."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import pytest

from .handle import HttpServerHandle
from .markers import Choice
from .settings import Settings

if TYPE_CHECKING:
    from .exporter import Exporters

log = logging.getLogger("pytest_jumpstarter_http")


def worker_id() -> str:
    """The xdist worker this process is (``gw0``...), or ``main``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class Runtime:
    """Starts servers for the fixtures and stops the session's ones at the end."""

    def __init__(
        self, settings: Settings, basetemp: Path, run_id: str, progress: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.progress = progress
        #: Temporary roots live here; everything below pytest's own basetemp counts as temporary.
        self.basetemp = basetemp
        self.run_id = run_id
        self._session_roots: dict[Choice, Path] = {}
        self._session_servers: dict[Choice, HttpServerHandle] = {}
        self._exporters: Exporters | None = None

    def start(self, choice: Choice, root: Path) -> HttpServerHandle:
        """A new server on ``root`` for ``choice``; the caller stops it."""
        settings = self.settings
        if choice.backend == "exporter":
            from .exporter import ExporterError, ExporterUnavailable

            try:
                return self.exporters().server(choice.selector, choice.driver, root)
            except ExporterUnavailable as exc:
                problem, required = str(exc), choice.exporter_required
            except ExporterError as exc:
                problem, required = str(exc), True
            if required:
                pytest.fail(problem, pytrace=False)
            pytest.skip(problem)
        from .loopback import LoopbackServer

        server = LoopbackServer(
            root,
            host=settings.host,
            port=settings.port,
            url_host=settings.url_host,
            keep=settings.keep,
            timeout=settings.timeout,
            # Only the plugin's own temporary roots are written; a user's root never is.
            stage_in_root=root.is_relative_to(self.basetemp.parent),
        ).start()
        log.debug("%s: loopback server %s serving %s", worker_id(), server.url, root)
        return server

    def exporters(self) -> Exporters:
        if self._exporters is None:
            from .exporter import Exporters

            self._exporters = Exporters(
                self.settings, self.basetemp.parent, self.run_id, worker_id(), progress=self.progress
            )
        return self._exporters

    def session_root(self, choice: Choice) -> Path:
        """The temporary root shared by the session's servers of ``choice``."""
        if choice not in self._session_roots:
            self._session_roots[choice] = self.make_root("session")
        return self._session_roots[choice]

    def session_server(self, choice: Choice, root: Path) -> HttpServerHandle:
        """The session's server for ``choice``, started on first use.

        One per choice: a ``served_dir`` overridden to another directory replaces it, so a
        per-test override costs a server per test but never piles them up.
        """
        server = self._session_servers.get(choice)
        if server is not None and server.root != root:
            del self._session_servers[choice]
            server.stop()
            server = None
        if server is None:
            self._session_servers[choice] = server = self.start(choice, root)
            log.info("%s: session server %s serving %s", worker_id(), server.url, root)
        return server

    def make_root(self, label: str) -> Path:
        stem = re.sub(r"[^\w.-]+", "_", label)[:40]
        try:
            return Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=self.basetemp))
        except FileNotFoundError:  # the first root of the session
            self.basetemp.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=self.basetemp))

    @contextmanager
    def temporary_root(self, label: str) -> Iterator[Path]:
        """A fresh empty root, removed afterwards unless ``--http-keep``."""
        root = self.make_root(label)
        try:
            yield root
        finally:
            self.remove_root(root)

    def remove_root(self, root: Path) -> None:
        if self.settings.keep:
            return
        try:
            root.rmdir()  # most tests' roots are empty by now, and this is the per-test path
        except OSError:
            shutil.rmtree(root, ignore_errors=True)

    def summary(self) -> list[str]:
        """What the run's summary says of the exporters this process used."""
        return (
            [f"jumpstarter-http: {line}" for line in self._exporters.bound.values()]
            if self._exporters
            else []
        )

    def close(self) -> None:
        """Stop the session's servers, newest first, then remove the session's roots."""
        try:
            stop_all(reversed(self._session_servers.values()))
        finally:
            self._session_servers.clear()
            for root in self._session_roots.values():
                self.remove_root(root)
            if self._exporters is not None:
                self._exporters.close()


def stop_all(servers: Iterator[HttpServerHandle] | list[HttpServerHandle]) -> None:
    """Stop every server even when one fails; raise the first failure."""
    first: BaseException | None = None
    for server in servers:
        try:
            server.stop()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


class HttpServerFactory:
    """Makes more servers inside one test; ``http_server_factory`` stops them all at teardown."""

    def __init__(
        self, runtime: Runtime, on_start: Callable[[HttpServerHandle], object] = lambda server: None
    ) -> None:
        self._runtime = runtime
        self._on_start = on_start
        self._servers: list[HttpServerHandle] = []
        self._roots: list[Path] = []

    def __call__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        backend: Literal["loopback", "exporter"] = "loopback",
        selector: str | None = None,
        driver: str | None = None,
    ) -> HttpServerHandle:
        """Start a server on ``root`` (default: a fresh temporary directory) and return its handle."""
        runtime = self._runtime
        if root is None:
            path = runtime.make_root("factory")
            self._roots.append(path)
        else:
            path = Path(root)
            if not path.is_dir():
                raise NotADirectoryError(f"http_server_factory: root {str(root)!r} is not a directory.")
        settings = runtime.settings
        choice = Choice(
            "function",
            path,
            backend,
            selector=selector or settings.selector,
            driver=driver or settings.driver,
            exporter_required=True,
        )
        server = runtime.start(choice, path)
        self._servers.append(server)
        self._on_start(server)
        return server

    def close(self) -> None:
        try:
            stop_all(reversed(self._servers))
        finally:
            self._servers.clear()
            for root in self._roots:
                self._runtime.remove_root(root)
            self._roots.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
