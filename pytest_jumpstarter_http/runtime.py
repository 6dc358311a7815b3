"""What one pytest process keeps for its session: its roots, its session servers, its exporters."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import pytest

from .handle import HttpServerHandle
from .loopback import LoopbackServer
from .markers import NO_EXPORTER, Choice
from .options import Settings
from .roots import Roots

if TYPE_CHECKING:
    from .exporter import ExporterBackend

log = logging.getLogger("pytest_jumpstarter_http")


def worker_id() -> str:
    """The xdist worker this process is (``gw0``...), or ``main``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class Runtime:
    """Starts servers for the fixtures, and stops the session's ones at the end."""

    def __init__(
        self, settings: Settings, basetemp: Path, run_id: str, progress: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.roots = Roots(basetemp, keep=settings.keep)
        self.run_id = run_id
        self._session_roots: dict[Choice, Path] = {}
        self._session_servers: dict[Choice, HttpServerHandle] = {}
        self._exporters: ExporterBackend | None = None

    @contextmanager
    def served_dir(self, choice: Choice, root: Path | None, label: str) -> Iterator[Path]:
        """The user's ``root`` if given, else a root of the plugin's own for the choice's scope."""
        if root is not None:
            yield root
        elif choice.scope == "session":
            if choice not in self._session_roots:
                self._session_roots[choice] = self.roots.make("session")
            yield self._session_roots[choice]
        else:
            with self.roots.temporary(label) as path:
                yield path

    @contextmanager
    def server(self, choice: Choice, root: Path) -> Iterator[HttpServerHandle]:
        """A server on ``root``: the session's one for ``choice``, or a new one for the block."""
        if choice.scope == "session":
            yield self._session_server(choice, root)
            return
        server = self.start(choice, root)
        try:
            yield server
        finally:
            self.stop_all([server])

    def _session_server(self, choice: Choice, root: Path) -> HttpServerHandle:
        """The session's server for ``choice``, started on first use.

        One per choice: a ``served_dir`` overridden to another directory replaces it, so a
        per-test override costs a server per test but never piles them up.
        """
        server = self._session_servers.get(choice)
        if server is not None and server.root != root:
            del self._session_servers[choice]
            self.stop_all([server])
            server = None
        if server is None:
            self._session_servers[choice] = server = self.start(choice, root)
            log.info("%s: session server %s serving %s", worker_id(), server.url, root)
        return server

    def start(self, choice: Choice, root: Path) -> HttpServerHandle:
        """A new server on ``root`` for ``choice``; the caller stops it with :meth:`stop_all`."""
        if choice.backend == "exporter":
            return self._exporter_server(choice, root)
        settings = self.settings
        server = LoopbackServer(
            root,
            host=settings.host,
            port=settings.port,
            url_host=settings.url_host,
            timeout=settings.timeout,
            # A user's root is never written: what a test stages there goes to a folder of ours.
            staging=root if self.roots.owns(root) else lambda: self.roots.make("staged"),
        ).start()
        log.debug("%s: loopback server %s serving %s", worker_id(), server.url, root)
        return server

    def _exporter_server(self, choice: Choice, root: Path) -> HttpServerHandle:
        from .connect import ExporterError, ExporterUnavailable

        try:
            return self.backend().server(
                choice.selector, choice.driver, root, owned=self.roots.owns(root), client=choice.client
            )
        except ExporterUnavailable as exc:
            if not choice.required:
                pytest.skip(NO_EXPORTER + str(exc))
            problem = str(exc)
        except ExporterError as exc:
            problem = str(exc)
        pytest.fail(problem, pytrace=False)

    def backend(self) -> ExporterBackend:
        if self._exporters is None:
            from .exporter import ExporterBackend

            self._exporters = ExporterBackend(self.settings, self.run_id, worker_id(), progress=self.progress)
        return self._exporters

    def stop_all(self, servers: Iterable[HttpServerHandle]) -> None:
        """Stop every server, and remove its staging folder, even when one fails; raise the first failure."""
        first: BaseException | None = None
        for server in servers:
            try:
                server.stop()
            except BaseException as exc:
                first = first or exc
            finally:
                if isinstance(server, LoopbackServer) and server.staging not in (None, server.root):
                    self.roots.remove(server.staging)
        if first is not None:
            raise first

    def summary(self) -> list[str]:
        """What the run's summary says of the exporters this process used."""
        return [f"jumpstarter-http: {line}" for line in self._exporters.bound] if self._exporters else []

    def close(self) -> None:
        """Stop the session's servers, newest first, then remove the session's roots."""
        try:
            self.stop_all(reversed(self._session_servers.values()))
        finally:
            self._session_servers.clear()
            for root in self._session_roots.values():
                self.roots.remove(root)
            if self._exporters is not None:
                self._exporters.close()


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
            path = runtime.roots.make("factory")
            self._roots.append(path)
        else:
            path = Path(root)
            if not path.is_dir():
                raise NotADirectoryError(f"http_server_factory: root {str(root)!r} is not a directory.")
        settings = runtime.settings
        choice = Choice("function", backend, selector or settings.selector, driver or settings.driver, True)
        server = runtime.start(choice, path)
        self._servers.append(server)
        self._on_start(server)
        return server

    def close(self) -> None:
        try:
            self._runtime.stop_all(reversed(self._servers))
        finally:
            self._servers.clear()
            for root in self._roots:
                self._runtime.roots.remove(root)
            self._roots.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
