"""What one pytest process keeps for its run: its roots, its backends, its session servers.

Built when a fixture first needs it (``plugin._runtime``), so a run that serves nothing never
imports it. The backends (loopback, exporter) sit behind one interface, :class:`Backend`, and
are made on first use, so a run that never serves imports neither jumpstarter nor aiohttp.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import pytest

from .markers import NO_EXPORTER, Choice
from .options import Settings, tls_mode
from .records import user_facing
from .roots import Roots
from .tls import Authority

if TYPE_CHECKING:
    from .handle import HttpServerHandle
    from .values import TlsMode

log = logging.getLogger("pytest_jumpstarter_http")


def worker_id() -> str:
    """The xdist worker this process is (``gw0``...), or ``main``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class Backend(Protocol):
    """Where servers run: in this process (loopback), or on an exporter next to the board."""

    def server(
        self,
        root: Path,
        *,
        owned: bool,
        selector: str | None = None,
        driver_path: str | None = None,
        exporter_client: Any = None,
        tls: TlsMode = "off",
    ) -> HttpServerHandle:
        """A running server on ``root`` (``owned``: a folder of the plugin's own, which it may write),
        serving HTTPS with a certificate of ``Runtime.authority`` unless ``tls`` is off."""
        ...

    def summary(self) -> list[str]:
        """Lines for the run's summary."""
        ...

    def removing(self) -> list[str]:
        """The servers it used whose storage removes, when the Jumpstarter session ends, what the
        session wrote there (what ``--http-keep`` kept too), each as the run's summary names it."""
        ...

    def kept(self) -> dict[str, int]:
        """How many folders ``--http-keep`` kept on servers away from this machine, by where they
        are as the run's summary names it; read after ``close()``."""
        ...

    def close(self, *, failed: bool = False) -> None:
        """Let go of everything it holds, at the end of the run (``failed``: a test of it failed)."""
        ...


class Runtime:
    """Starts servers for the fixtures, and stops the session's ones at the end."""

    def __init__(
        self,
        settings: Settings,
        basetemp: Callable[[], Path],
        run_id: str,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.roots = Roots(basetemp, keep=settings.keep)
        #: This process's test CA, made on its first HTTPS server (each xdist worker has its own).
        self.authority = Authority(lambda: self.roots.make("tls"))
        self._run_id = run_id
        self._progress = progress
        self._makers: dict[str, Callable[[], Backend]] = {
            "loopback": self._loopback,
            "exporter": self._exporter,
        }
        self._backends: dict[str, Backend] = {}
        self._session_roots: dict[Choice, Path] = {}
        self._session_servers: dict[Choice, HttpServerHandle] = {}

    @contextmanager
    def served_dir(
        self, choice: Choice, root: Path | None, label: str, failed: Callable[[], bool]
    ) -> Iterator[Path]:
        """The user's ``root`` if given, else a root of the plugin's own for the choice's scope.

        ``failed`` tells, as the test ends, whether it failed: ``--http-keep=failed`` keeps its root.
        """
        if root is not None:
            yield root
        elif choice.scope == "session":
            if choice not in self._session_roots:
                self._session_roots[choice] = self.roots.make("session")
            yield self._session_roots[choice]
        else:
            with self.roots.temporary(label, failed) as path:
                yield path

    @contextmanager
    def server(self, choice: Choice, root: Path, failed: Callable[[], bool]) -> Iterator[HttpServerHandle]:
        """A server on ``root`` for one test: the session's one for ``choice`` (cleared after the
        test), or a new one (stopped after it, keeping what ``--http-keep`` keeps if it ``failed``)."""
        if choice.scope == "session":
            server = self._session_server(choice, root)
            try:
                yield server
            finally:
                server.clear()
            return
        server = self.start(choice, root)
        try:
            yield server
        finally:
            self.stop_all([server], failed=failed())

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
        """A new server on ``root`` for ``choice``; the caller stops it with :meth:`stop_all`.

        An exporter that cannot be reached skips the test, or fails it when the run asked for one.
        """
        from .connect import ExporterError, ExporterUnavailable

        try:
            return self._backend(choice.backend).server(
                root,
                owned=self.roots.owns(root),
                selector=choice.selector,
                driver_path=choice.driver_path,
                exporter_client=choice.exporter_client,
                tls=choice.tls,
            )
        except ExporterUnavailable as exc:
            if not choice.required:
                pytest.skip(NO_EXPORTER + str(exc))
            problem = str(exc)
        except ExporterError as exc:
            problem = str(exc)
        pytest.fail(problem, pytrace=False)

    def _backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = self._makers[name]()
        return self._backends[name]

    def _loopback(self) -> Backend:
        from .loopback import LoopbackBackend

        settings = self.settings
        return LoopbackBackend(
            host=settings.host,
            port=settings.port,
            url_host=settings.url_host,
            timeout=settings.timeout,
            roots=self.roots,
            authority=self.authority,
            progress=self._progress,
        )

    def _exporter(self) -> Backend:
        from .exporter import ExporterBackend

        settings = self.settings
        return ExporterBackend(
            client_config=settings.client,
            jumpstarter_host=settings.jumpstarter_host,
            timeout=settings.timeout,
            keep=settings.keep,
            url_host=settings.url_host,
            run_id=self._run_id,
            worker=worker_id(),
            authority=self.authority,
            progress=self._progress,
        )

    def stop_all(self, servers: Iterable[HttpServerHandle], *, failed: bool = False) -> None:
        """Stop every server, even when one fails; raise the first failure."""
        first: BaseException | None = None
        for server in servers:
            try:
                server.stop(failed=failed)
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    def summary(self) -> list[str]:
        """What the run's summary says of the servers this process used."""
        return [
            f"jumpstarter-http: {line}" for backend in self._backends.values() for line in backend.summary()
        ]

    def removing(self) -> list[str]:
        """The servers this process used that remove what ``--http-keep`` kept there when the
        Jumpstarter session ends (see ``Backend.removing``)."""
        return [where for backend in self._backends.values() for where in backend.removing()]

    def kept(self) -> dict[str, int]:
        """The folders ``--http-keep`` kept on exporters (see ``Backend.kept``), after ``close()``."""
        return {
            where: count for backend in self._backends.values() for where, count in backend.kept().items()
        }

    def close(self, *, failed: bool = False) -> None:
        """Stop the session's servers, newest first, remove the session's roots, let go of the
        backends; ``failed``: a test of the run failed, which ``--http-keep=failed`` keeps them for."""
        try:
            self.stop_all(reversed(self._session_servers.values()), failed=failed)
        finally:
            self._session_servers.clear()
            for root in self._session_roots.values():
                self.roots.remove(root, failed=failed)
            self._session_roots.clear()
            if self.authority.folder is not None:
                self.roots.remove(self.authority.folder)
            for backend in self._backends.values():
                backend.close(failed=failed)


@user_facing
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
        tls: bool | Literal["off", "on", "mutual"] = False,
    ) -> HttpServerHandle:
        """Start a server on ``root`` (default: a fresh temporary directory) and return its handle.

        ``tls=True`` (or ``"on"``) serves HTTPS, ``tls="mutual"`` HTTPS that asks the device for a
        certificate (``handle.client_cert``): the values ``--http-tls`` takes, read as it reads them;
        a bad value is a ``ValueError``.
        """
        runtime = self._runtime
        mode = tls_mode(tls)
        if root is None:
            path = runtime.roots.make("factory")
            self._roots.append(path)
        else:
            path = Path(root)
            if not path.is_dir():
                raise NotADirectoryError(f"http_server_factory: root {str(root)!r} is not a directory.")
        settings = runtime.settings
        choice = Choice(
            scope="function",
            backend=backend,
            selector=selector or settings.selector,
            driver_path=driver or settings.driver,
            required=True,
            tls=mode,
        )
        server = runtime.start(choice, path)
        self._servers.append(server)
        self._on_start(server)
        return server

    def close(self, *, failed: bool = False) -> None:
        """Stop every server it made and remove their temporary roots (``failed``: the test failed)."""
        try:
            self._runtime.stop_all(reversed(self._servers), failed=failed)
        finally:
            self._servers.clear()
            for root in self._roots:
                self._runtime.roots.remove(root, failed=failed)
            self._roots.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
