"""The loopback backend: the exporter's server, run in this process.

One :class:`~pytest_jumpstarter_http.driver.RecordingHttpServer` per process (:class:`LocalServer`)
serves every loopback handle, each an owner's namespace on it as on an exporter, showing the
handle's local folders. A port of its own reaches the namespace, so that ``http_url`` stays
``http://127.0.0.1:PORT``: a new port per function-scoped test, the app and runner kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import eventloop
from .client import ServerApi
from .handle import HttpServerHandle, concrete_host, format_url, refuse_unstaged
from .records import NS, RUNS, TlsSpec, url_path
from .values import PortRange, TlsMode

if TYPE_CHECKING:
    from .driver import RecordingHttpServer
    from .roots import Roots
    from .tls import Authority, Tls

#: Seconds a stopping server waits for downloads still in flight before it cuts them.
SHUTDOWN_GRACE = 2.0
#: Linux's PATH_MAX: the bytes of a path, its final NUL included.
_PATH_MAX = 4096
#: The shape of the name a staged file is copied to before its rename: ``.<8 hex>.part``.
_PARTIAL = ".00000000.part"


class PortsExhausted(RuntimeError):
    """Every port of the configured range is taken."""


class LocalApi(ServerApi):
    """The server API of the process's own server: the driver's exported methods, called here
    (a coroutine on the server's loop thread)."""

    def __init__(self, server: LocalServer) -> None:
        self._server = server

    def call(self, method: str, *args: Any) -> Any:
        bound = getattr(self._server.driver, method)
        if inspect.iscoroutinefunction(bound):
            return eventloop.call(bound, *args)
        return bound(*args)

    def get_requests(self, start: int = 0, prefix: str = "") -> tuple[int, list[Any]]:
        # A client can read a response before the server's task logs it; while a connection is
        # open, let the loop catch up (a closed one has logged everything it answered).
        runner = self._server.driver.runner
        if runner is not None and runner.server is not None and runner.server.connections:
            eventloop.call(_settle)
        return super().get_requests(start, prefix)

    def read_upload(self, entry: dict[str, Any], namespace: str | None = None) -> bytes:
        return self._server.driver.device_api.read(str(entry["api_id"]), str(entry["name"]), namespace)


class LocalServer:
    """The process's one RecordingHttpServer, on the loop thread, with this process as its owner.

    ``folder`` is the server's own (its driver's ``root_dir``): what devices upload goes below it,
    never into a served root. Without one, :meth:`start` makes a private folder (``mkdtemp``: 0700,
    a random name) in the system's temporary folder, and :meth:`stop` removes it: used without
    pytest, there is no basetemp. Works on its own as a context manager; the loopback backend keeps
    one per process, its folder below pytest's basetemp.
    """

    def __init__(self, host: str, folder: Path | None = None, timeout: float = 30.0) -> None:
        self.host = host
        self._folder = folder
        #: Whether start() makes the folder, and stop() removes it.
        self._makes_folder = folder is None
        #: The driver, made by start(): Jumpstarter's makes its root_dir as it is made.
        self._driver: RecordingHttpServer | None = None
        #: The server API, as every handle of it calls it.
        self.api = LocalApi(self)
        self.timeout = timeout
        #: This process's id as the server's owner, once started.
        self.owner = ""
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._client_stack = ExitStack()

    @property
    def folder(self) -> Path:
        """The server's own folder."""
        if self._folder is None:
            raise RuntimeError("LocalServer: its folder is made by start(); start() it first.")
        return self._folder

    @property
    def driver(self) -> RecordingHttpServer:
        """The server's driver: Jumpstarter's HttpServer, recording."""
        if self._driver is None:
            raise RuntimeError("LocalServer: its driver is made by start(); start() it first.")
        return self._driver

    def start(self) -> Self:
        """Start the server and own it; the loop thread runs until :meth:`stop`."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="pytest-jumpstarter-http-"))
            self._driver = None  # one made for a folder removed since
        if self._driver is None:
            self._driver = new_driver(self.host, self._folder)
        # Each running server holds the loop thread: used without pytest, the last stop() ends
        # the thread, whose portal would otherwise hang the interpreter's exit.
        eventloop.acquire()
        try:
            self.owner = eventloop.call(self._started, timeout=self.timeout)
        except BaseException:
            eventloop.release()
            self._remove_made_folder()
            raise
        return self

    def _remove_made_folder(self) -> None:
        if self._makes_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None  # its request log stays readable; a new start() makes both again

    async def _started(self) -> str:
        await self.driver.start_unless_running()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(ready))
        return await ready

    async def _own(self, ready: asyncio.Future[str]) -> None:
        """Own the server, as an exporter's run does through its stream, and answer the requests it
        hands over for the test's handlers, each in a worker thread."""
        loop = asyncio.get_running_loop()
        # Kept: the backend removes the server's folder, as --http-keep says.
        async for want in self.driver.own(f"{RUNS}/local", keep=True):
            if not ready.done():
                ready.set_result(str(want))
            elif isinstance(want, dict) and "call" in want:
                loop.run_in_executor(None, self.api.answer_handed, want)

    def open(self, folders: list[Path]) -> str:
        """A namespace of this process that shows the local ``folders``; its token."""
        return self.driver.namespaces.open_local(self.owner, folders)

    async def serve(self, token: str, port: int, tls: TlsSpec | None) -> int:
        """Serve the namespace ``token`` on ``port``; started again first if a test stopped it
        through its client."""
        await self.driver.start_unless_running()
        return await self.driver.serve_namespace(token, port, tls)

    @property
    def client(self) -> Any:
        """A Jumpstarter ``HttpServerClient`` on this server, its storage the server's folder, as an
        exporter's; through a local session opened on first use."""
        if self._client is None:
            from jumpstarter.common.utils import serve_async
            from jumpstarter_driver_opendal.driver import Opendal

            self.driver.children["storage"] = Opendal(  # type: ignore[abstract]
                scheme="fs", kwargs={"root": str(self.folder)}, remove_created_on_close=False
            )
            portal = eventloop.portal()
            session = portal.wrap_async_context_manager(serve_async(self.driver, portal, self._client_stack))
            self._client = self._client_stack.enter_context(session)
        return self._client

    def stop(self) -> None:
        """End what this process owns on the server, and stop it."""
        try:
            # The server first: the session's close would close the driver, skipping its stop().
            eventloop.call(self._stopped, timeout=self.timeout)
        finally:
            try:
                if self._client is not None:  # its call channel before the session it is on
                    self._client.close_calls()
                self._client_stack.close()
            finally:
                self._client = None
                eventloop.release()
                self._remove_made_folder()

    async def _stopped(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.driver.runner is not None:
            await self.driver.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackServer(HttpServerHandle):
    """Serve ``root`` from Jumpstarter's HttpServer driver on this machine.

    Works on its own as a context manager::

        with LoopbackServer(Path("images"), staging=Path("staged")).start() as server:
            print(server.url_for("disk.raw"))

    ``stage()`` copies files into ``staging`` (a folder, or a function that makes one on first
    use), which is served beside ``root``: give ``staging=root`` for a root you own, a folder of
    its own for a root that must not be written. ``server``: the process's server it is a
    namespace of (default: one of its own, started and stopped with it, see :class:`LocalServer`).
    """

    backend: Literal["loopback"] = "loopback"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: PortRange | None = None,
        url_host: str | None = None,
        timeout: float = 30.0,
        staging: Path | Callable[[], Path] | None = None,
        release: Callable[[Path, bool], object] | None = None,
        progress: Callable[[str], None] | None = None,
        tls: Tls | None = None,
        server: LocalServer | None = None,
    ) -> None:
        #: Whether it made the server it is a namespace of, which it stops with itself.
        self._made_server = server is None
        self._server = server = server or LocalServer(host, timeout=timeout)
        super().__init__(Path(root), host, recorder=server.api, progress=progress, tls=tls)
        self._tls = tls
        self._ports = port
        self._url_base_host = url_host or concrete_host(host)
        self._timeout = self.handler_wait = timeout
        self._staging = staging
        #: Called with a staging folder this server made (not one it was given) once it stops, and
        #: whether its test failed.
        self._release = release
        self._made_staging: Path | None = None
        self._started = False
        self._stopped = False
        #: The port it last listened on: a stopped server's URL still names it, in its report.
        self._port = 0
        self._url, self._url_port = "", -1

    def start(self) -> Self:
        """Open its namespace on the server, on a free port of the configured range."""
        server = self._server
        if self._made_server:
            server.start()
        self._started = True
        try:
            shown = [self.root]
            if isinstance(self._staging, Path) and self._staging != self.root:
                shown.append(self._staging)
            self._namespace = server.open(shown)
            self._request_mark = server.api.requests_started()
            self._port = self._bind()
        except BaseException:
            self.stop()
            raise
        return self

    def _bind(self) -> int:
        """Serve its namespace on the first free port of the range; that port."""
        spec = None if self._tls is None else self._tls.spec
        for port in _candidates(self._ports):
            try:
                return eventloop.call(self._server.serve, self._ns, port, spec, timeout=self._timeout)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._ports is None:
                    raise
        raise PortsExhausted(
            f"--http-port: every port of {self._ports} on {self.host} is in use; "
            "widen the range, or give 0 for any free port."
        )

    @property
    def _ns(self) -> str:
        assert self._namespace is not None  # opened by start()
        return self._namespace

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__} on {str(self.root)!r} was never started; start() it.")
        if not self._stopped:
            driver = self._server.driver
            port = driver.port_of(self._ns)
            if not port and driver.runner is not None:  # a test restarted the server through its client
                port = self._bind()
            self._port = port or self._port
        return self._port

    @property
    def label(self) -> str:
        return format_url(self._url_base_host, self._port, self.scheme)

    def _url_path(self) -> str:
        return url_path(f"{NS}/{self._ns}")

    @property
    def url(self) -> str:
        port = self.port
        if port != self._url_port:  # formatted once per port: tests read it often
            self._url, self._url_port = format_url(self._url_base_host, port, self.scheme), port
        return self._url

    @property
    def client(self) -> Any:
        """A Jumpstarter ``HttpServerClient`` on the process's server: ``stop()`` stops it for every
        handle of the process, as on an exporter."""
        return self._server.client

    def _stage(self, source: Path, name: str) -> str:
        """Copy ``source`` into the staging folder as ``name``, which ``stage()`` checked against
        ``root``; a staging folder given to it is checked the same way: what the plugin did not
        create there is never replaced."""
        staging = self._staging_folder()
        target = staging / name
        longest = max(len(os.fsencode(path.absolute())) for path in (target, target.parent / _PARTIAL))
        if longest >= _PATH_MAX:
            raise ValueError(
                f"stage(): the name of {len(name.encode())} bytes is too long to serve below "
                f"{str(staging)!r}: its path would be {longest} bytes, and Linux takes fewer than "
                f"{_PATH_MAX}; stage under a shorter name."
            )
        for folder in {self.root, staging}:
            if not (folder / name).resolve().is_relative_to(folder.resolve()):
                raise ValueError(f"stage(): {name!r} leads outside the served root through a symbolic link.")
        refuse_unstaged(staging, name, self._staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the target and rename: a download in flight keeps the file it opened. A short
        # name, so that any name the target may have (up to 255 bytes) leaves room for the copy's.
        partial = target.with_name(f".{uuid.uuid4().hex[:8]}.part")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return self.url + url_path(name)

    def _staging_folder(self) -> Path:
        staging = self._staging
        if staging is None:
            raise RuntimeError(
                f"stage(): this {type(self).__name__} has no folder for staged files; "
                "give LoopbackServer(..., staging=FOLDER)."
            )
        if not isinstance(staging, Path):
            self._staging = staging = staging()
            self._made_staging = staging
            self._server.driver.namespaces.show(self._ns, staging)
        return staging

    def publish(self, name: str | None = None) -> None:
        """Nothing to do: the server reads ``root`` directly."""

    def stop(self, *, failed: bool = False) -> None:
        """End its namespace and close its port; a staging folder it made goes to ``release``, one it
        was given stays."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        try:
            if self._namespace is not None:
                self._port = self._server.driver.port_of(self._namespace) or self._port
                try:
                    self._end_scripts()
                finally:
                    eventloop.call(self._server.driver.end_namespace, self._namespace, timeout=self._timeout)
        finally:
            try:
                if self._made_server:
                    self._server.stop()
            finally:
                if self._made_staging is not None and self._release is not None:
                    self._release(self._made_staging, failed)


def new_driver(host: str, folder: str | os.PathLike[str]) -> RecordingHttpServer:
    """Jumpstarter's HttpServer driver (recording) for the loopback's server on ``host``, not
    started, its own folder ``folder``."""
    from .driver import RecordingHttpServer

    # The driver's defaults bind the LAN address on port 8080 and serve /var/www; never use them.
    # mypy takes the grpc servicer methods the Driver base leaves to the exporter as abstract.
    return RecordingHttpServer(  # type: ignore[abstract]
        root_dir=str(folder),
        host=host,
        port=0,
        remove_created_on_close=False,
        # Its INFO lines ("HTTP server started at ...") would fill every test's captured log.
        log_level="WARNING",
        shutdown_grace=SHUTDOWN_GRACE,
    )


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


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


class LoopbackBackend:
    """Loopback servers for the fixtures: each a namespace of the process's one server, on a port
    of its own, on the run's address and ports."""

    def __init__(
        self,
        *,
        host: str,
        port: PortRange | None,
        url_host: str | None,
        timeout: float,
        roots: Roots,
        authority: Authority,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self._host = host
        self._authority = authority
        self._port = port
        self._url_host = url_host
        self._timeout = timeout
        self._roots = roots
        self._progress = progress
        #: The process's server, started on first use.
        self._server: LocalServer | None = None

    def server(self, root: Path, *, owned: bool, tls: TlsMode = "off", **where: Any) -> LoopbackServer:
        """A started server on ``root``, HTTPS unless ``tls`` is off; ``where`` (an exporter's
        selector, driver, client) is not for it."""
        if self._server is None:
            self._server = LocalServer(self._host, self._roots.make("server"), self._timeout).start()
        roots = self._roots
        return LoopbackServer(
            root,
            host=self._host,
            port=self._port,
            url_host=self._url_host,
            timeout=self._timeout,
            # A user's root is never written: what a test stages there goes to a folder of ours.
            staging=root if owned else lambda: roots.make("staged"),
            release=lambda staging, failed: roots.remove(staging, failed=failed),
            progress=self._progress,
            tls=self._authority.tls(tls, self._url_host or concrete_host(self._host)),
            server=self._server,
        ).start()

    def summary(self) -> list[str]:
        return []

    def removing(self) -> list[str]:
        return []  # its driver's storage removes nothing (remove_created_on_close=False)

    def kept(self) -> dict[str, int]:
        return {}  # in the plugin's folder of this machine, which the run's summary counts

    def close(self, *, failed: bool = False) -> None:
        """Stop the process's server; its folder (what devices uploaded) goes as ``--http-keep`` says."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                # Empty unless a test accepted device uploads: then nothing worth a --http-keep line.
                with contextlib.suppress(OSError):
                    server.folder.rmdir()
                self._roots.remove(server.folder, failed=failed)
