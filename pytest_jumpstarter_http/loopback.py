"""The loopback backend: Jumpstarter's own HttpServer driver, run in this process."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import eventloop
from .handle import HttpServerHandle, concrete_host, format_url
from .names import check_name, url_path
from .requestlog import HttpRequest, RequestLog, install
from .settings import PortRange

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware
    from jumpstarter_driver_http.driver import HttpServer

#: Seconds a stopping server waits for downloads still in flight before it cuts them.
SHUTDOWN_GRACE = 2.0


class PortsExhausted(RuntimeError):
    """Every port of the configured range is taken."""


class LoopbackServer(HttpServerHandle):
    """Serve ``root`` from ``jumpstarter_driver_http.driver.HttpServer`` on this machine.

    Works on its own as a context manager::

        with LoopbackServer(Path("images")).start() as server:
            print(server.url_for("disk.raw"))

    ``stage()`` links files into ``root`` only when ``stage_in_root`` says the root is the
    plugin's own; otherwise it serves them from a second server on a temporary root, so a
    directory you gave is never written, even by a run that is killed.
    """

    backend: Literal["loopback"] = "loopback"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: PortRange | None = None,
        url_host: str | None = None,
        keep: bool = False,
        timeout: float = 30.0,
        stage_in_root: bool = False,
        log: RequestLog | None = None,
    ) -> None:
        self.root: Path = Path(root)
        self.host = host
        self.port = 0
        self.url = ""
        self._ports = port
        self._url_host = url_host
        self._keep = keep
        self._timeout = timeout
        self._driver: HttpServer | None = None
        self._created: list[Path] = []
        self._client: Any = None
        self._client_stack = ExitStack()
        self._log = log or RequestLog()
        self._stage_in_root = stage_in_root
        self._scratch: LoopbackServer | None = None

    def start(self) -> Self:
        """Start the driver's server on a free port of the configured range."""
        from jumpstarter_driver_http.driver import HttpServer

        # The driver's defaults bind the LAN address on port 8080 and serve /var/www; never use them.
        # mypy takes the grpc servicer methods the Driver base leaves to the exporter as abstract.
        driver = HttpServer(  # type: ignore[abstract]
            root_dir=str(self.root),
            host=self.host,
            port=0,
            remove_created_on_close=False,
            # Its INFO lines ("HTTP server started at ...") would fill every test's captured log.
            log_level="WARNING",
        )
        driver.app.middlewares.append(_too_long_is_not_found())
        # Each running server holds the loop thread: used without pytest, the last stop() ends
        # the thread, whose portal would otherwise hang the interpreter's exit.
        eventloop.acquire()
        try:
            self._bind(driver)
        except BaseException:
            eventloop.release()
            raise
        self._driver = driver
        self.port = driver.get_port()
        self.url = format_url(self._url_host or concrete_host(self.host), self.port)
        return self

    def _bind(self, driver: HttpServer) -> None:
        for port in _candidates(self._ports):
            driver.port = port
            try:
                eventloop.call(_start, driver, self._log, timeout=self._timeout)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._ports is None:
                    raise
        raise PortsExhausted(
            f"--http-port: every port of {self._ports} on {self.host} is in use; "
            "widen the range, or give 0 for any free port."
        )

    @property
    def client(self) -> Any:
        """A Jumpstarter ``HttpServerClient`` on this server, through a local session opened on first use."""
        if self._client is None:
            from jumpstarter.common.utils import serve_async

            if self._driver is None:
                raise RuntimeError(f"{self!r} is not running; start() it first.")
            portal = eventloop.portal()
            stack = self._client_stack
            self._client = stack.enter_context(
                portal.wrap_async_context_manager(serve_async(self._driver, portal, stack))
            )
        return self._client

    def stage(self, src: str | os.PathLike[str], name: str | None = None) -> str:
        """Link (or copy) the local file ``src`` into the served root as ``name``; return its URL.

        A file already at that place in the root is served as it is; a file there that this
        server did not create is never replaced.
        """
        source = Path(src)
        if not source.is_file():
            raise FileNotFoundError(
                f"stage(): {str(source)!r} is not a file; give the path of a file to serve."
            )
        name = check_name(name or source.name, where="stage() name")
        target = self.root / name
        if target.exists() and target.resolve() == source.resolve():
            return self.url + url_path(name)
        if not self._stage_in_root:
            return self._scratch_server().stage(source, name)
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"stage(): {name!r} leads outside the served root through a symbolic link.")
        if target.exists() or target.is_symlink():
            if target not in self._created:
                raise FileExistsError(
                    f"stage(): {str(target)!r} already exists and the plugin did not create it; "
                    "stage under another name."
                )
            target.unlink()
            self._created.remove(target)
        for parent in reversed(target.relative_to(self.root).parents[:-1]):
            folder = self.root / parent
            if not folder.exists():
                folder.mkdir()
                self._created.append(folder)
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, target)
        self._created.append(target)
        return self.url + url_path(name)

    def _scratch_server(self) -> LoopbackServer:
        """A second server, on a temporary root of its own, for what ``stage()`` serves."""
        if self._scratch is None:
            root = tempfile.mkdtemp(prefix="pytest-jumpstarter-http-stage-")
            self._scratch = LoopbackServer(
                root,
                host=self.host,
                port=self._ports,
                url_host=self._url_host,
                keep=self._keep,
                timeout=self._timeout,
                stage_in_root=True,
                log=self._log,
            ).start()
        return self._scratch

    def publish(self, name: str | None = None) -> None:
        """Nothing to do: the server reads ``root`` directly."""

    def _requests_since(self, start: int) -> list[HttpRequest]:
        # A client can read a response before the server's task logs it; while a connection is
        # open, let the loop catch up (a closed one has logged everything it answered).
        runner = self._driver.runner if self._driver else None
        if runner is not None and runner.server is not None and runner.server.connections:
            eventloop.call(_settle)
        return self._log.since(start)

    def _request_count(self) -> int:
        return self._log.total

    def stop(self) -> None:
        driver, self._driver = self._driver, None
        scratch, self._scratch = self._scratch, None
        try:
            if scratch is not None:
                scratch.stop()
                if not self._keep:
                    shutil.rmtree(scratch.root, ignore_errors=True)
            if driver is not None and driver.runner is not None:
                eventloop.call(driver.stop, timeout=self._timeout)
        finally:
            try:
                self._client_stack.close()
            finally:
                self._client = None
                if driver is not None:
                    eventloop.release()
                if not self._keep:
                    self._remove_created()

    def _remove_created(self) -> None:
        for path in reversed(self._created):
            if not path.is_dir() or path.is_symlink():
                path.unlink(missing_ok=True)
            elif not any(path.iterdir()):  # a test may have put its own files there
                path.rmdir()
        self._created.clear()


def _candidates(ports: PortRange | None) -> list[int]:
    """Ports to try: 0 (the OS picks), or the range starting at a per-process offset.

    Binding is the reservation: the OS refuses a second listener on a port, so a process that
    loses the race moves on to the next port; the offset keeps concurrent workers apart.
    """
    if ports is None:
        return [0]
    span = list(range(ports.first, ports.last + 1))
    offset = os.getpid() % len(span)
    return span[offset:] + span[:offset]


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def _too_long_is_not_found() -> Middleware:
    """A middleware answering 404 for a name longer than the file system allows: no such file.

    aiohttp's static route lets ENAMETOOLONG out of ``Path.resolve()`` as a 500 with a logged
    traceback (Starlette answers 404 since encode/starlette#2583).
    """
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise web.HTTPNotFound() from None

    return middleware


async def _start(driver: HttpServer, log: RequestLog) -> None:
    try:
        await driver.start()
    except BaseException:
        # The driver keeps a runner that failed to bind; clean it up or its next start warns.
        if driver.runner is not None:
            await driver.runner.cleanup()
            driver.runner = None
        raise
    # The driver's AppRunner keeps aiohttp's 60 s graceful shutdown, which would hold a test's
    # teardown as long as any download is in flight; bound it.
    if driver.runner is not None:
        driver.runner._shutdown_timeout = SHUTDOWN_GRACE
        install(driver.runner, log)
