"""The loopback backend: Jumpstarter's own HttpServer driver, run in this process."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import eventloop
from .deviceapi import AuthSpec, ReplySpec, UploadSpec
from .handle import HttpServerHandle, concrete_host, format_url
from .records import Answerer, FaultSpec, HttpRequest, Progress, TlsSpec, url_path
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


class LoopbackServer(HttpServerHandle):
    """Serve ``root`` from Jumpstarter's HttpServer driver on this machine.

    Works on its own as a context manager::

        with LoopbackServer(Path("images"), staging=Path("staged")).start() as server:
            print(server.url_for("disk.raw"))

    ``stage()`` copies files into ``staging`` (a folder, or a function that makes one on first
    use), which is served beside ``root``: give ``staging=root`` for a root you own, a folder of
    its own for a root that must not be written.
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
        uploads: Callable[[], Path] | None = None,
        tls: Tls | None = None,
        driver: RecordingHttpServer | None = None,
    ) -> None:
        #: Whether the driver outlives this server: one the backend keeps, given here to serve
        #: ``root`` (on ``host``, which it was made with) from a new port; stop() only pauses it.
        self._kept = driver is not None
        if driver is None:
            driver = new_driver(host, root)
        driver.root_dir = str(root)
        driver.roots[:] = [Path(root)]
        self._driver = driver
        #: Where device uploads go (``uploads``: makes a folder on first use), and what it made.
        self._in_process = _InProcess(self._driver, uploads)
        super().__init__(Path(root), host, recorder=self._in_process, progress=progress, tls=tls)
        # A kept driver's log holds the requests of the tests before: this server's start here.
        self._request_mark = driver.request_log.started
        self._tls = tls
        #: The port of its HTTPS site, beside the driver's plain one (0: plain HTTP).
        self._tls_port = 0
        self._ports = port
        self._url_base_host = url_host or concrete_host(host)
        self._timeout = self.handler_wait = timeout
        self._staging = staging
        #: Called with a staging folder this server made (not one it was given) once it stops, and
        #: whether its test failed.
        self._release = release
        self._staged: set[Path] = set()
        self._made_staging: Path | None = None
        if isinstance(staging, Path) and staging != self.root:
            self._driver.roots.append(staging)
        self._started = False
        self._stopped = False
        #: The port it last listened on: a stopped server's URL still names it, in its report.
        self._port = 0
        self._url, self._url_port = "", -1
        self._client: Any = None
        self._client_stack = ExitStack()

    def start(self) -> Self:
        """Start the driver's server on a free port of the configured range."""
        # Each running server holds the loop thread: used without pytest, the last stop() ends
        # the thread, whose portal would otherwise hang the interpreter's exit.
        eventloop.acquire()
        try:
            self._port = self._bind(self._start_on)
        except BaseException:
            eventloop.release()
            raise
        self._started = True
        if self._tls is not None:
            try:
                self._tls_port = self._bind(functools.partial(self._serve_tls_on, self._tls.spec))
            except BaseException:
                self.stop()
                raise
        return self

    def _start_on(self, port: int) -> int:
        return eventloop.call(self._driver.listen, port, timeout=self._timeout)

    def _serve_tls_on(self, spec: TlsSpec, port: int) -> int:
        """Add an HTTPS site to the running app on ``port``, as an exporter's server does for a run."""
        driver = self._driver
        add = driver.tls.add
        return eventloop.call(add, driver.runner, driver.host, "loopback", spec, port, timeout=self._timeout)

    def _bind(self, listen: Callable[[int], int]) -> int:
        """``listen`` on the first free port of the range; what it returns."""
        for port in _candidates(self._ports):
            try:
                return listen(port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._ports is None:
                    raise
        raise PortsExhausted(
            f"--http-port: every port of {self._ports} on {self.host} is in use; "
            "widen the range, or give 0 for any free port."
        )

    @property
    def running(self) -> bool:
        """Whether it was started and not stopped yet."""
        return self._started and not self._stopped

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__} on {str(self.root)!r} was never started; start() it.")
        if not self._stopped:
            self._port = self._listening()
        return self._port

    def _listening(self) -> int:
        """The port its URLs name: the HTTPS site's, else the driver's (the last one once stopped)."""
        return self._tls_port or int(self._driver.get_port()) or self._port

    @property
    def label(self) -> str:
        return format_url(self._url_base_host, self._port, self.scheme)

    def _url_path(self) -> str:
        return ""

    @property
    def url(self) -> str:
        port = self.port
        if port != self._url_port:  # formatted once per port: tests read it often
            self._url, self._url_port = format_url(self._url_base_host, port, self.scheme), port
        return self._url

    @property
    def client(self) -> Any:
        """A Jumpstarter ``HttpServerClient`` on this server, through a local session opened on first use."""
        if self._client is None:
            from jumpstarter.common.utils import serve_async
            from jumpstarter_driver_opendal.driver import Opendal

            # The driver's storage as the driver makes it, on this server's root: a kept driver's
            # is still on the root of the test it was made for.
            self._driver.children["storage"] = Opendal(  # type: ignore[abstract]
                scheme="fs", kwargs={"root": str(self.root)}, remove_created_on_close=False
            )
            portal = eventloop.portal()
            stack = self._client_stack
            self._client = stack.enter_context(
                portal.wrap_async_context_manager(serve_async(self._driver, portal, stack))
            )
        return self._client

    def _stage(self, source: Path, name: str) -> str:
        """Copy ``source`` into the staging folder as ``name``.

        A file of that name in ``root`` that this server did not stage is never replaced.
        """
        if _same_file(self.root / name, source):  # already served where it is
            return self.url + url_path(name)
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
        if target not in self._staged and (os.path.lexists(self.root / name) or os.path.lexists(target)):
            raise FileExistsError(
                f"stage(): {str(self.root / name)!r} already exists and the plugin did not create it; "
                "stage under another name."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the target and rename: a download in flight keeps the file it opened. A short
        # name, so that any name the target may have (up to 255 bytes) leaves room for the copy's.
        partial = target.with_name(f".{uuid.uuid4().hex[:8]}.part")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        self._staged.add(target)
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
            self._driver.roots.append(staging)
        return staging

    def publish(self, name: str | None = None) -> None:
        """Nothing to do: the server reads ``root`` directly."""

    def stop(self, *, failed: bool = False) -> None:
        """Stop the server; a staging folder it made goes to ``release``, one it was given stays."""
        if self._stopped or not self._started:
            return
        self._port = self._listening()  # its URL in the report names it
        self._stopped = True
        try:
            self.clear_faults()  # the driver's stop() releases any other stalled response
            if self._driver.runner is not None:
                end = self._driver.pause if self._kept else self._driver.stop
                eventloop.call(end, timeout=self._timeout)
        finally:
            self._in_process.until = self._driver.request_log.started
            try:
                self._client_stack.close()
            finally:
                self._client = None
                eventloop.release()
                for made in (self._made_staging, self._in_process.uploads_folder):
                    if made is not None and self._release is not None:
                        self._release(made, failed)


def new_driver(host: str, root: str | os.PathLike[str]) -> RecordingHttpServer:
    """Jumpstarter's HttpServer driver (recording) for a loopback server on ``host``, not started,
    serving ``root``: a server may give it another (``LoopbackServer(driver=...)``)."""
    from .driver import RecordingHttpServer

    # The driver's defaults bind the LAN address on port 8080 and serve /var/www; never use them.
    # mypy takes the grpc servicer methods the Driver base leaves to the exporter as abstract.
    return RecordingHttpServer(  # type: ignore[abstract]
        root_dir=str(root),
        host=host,
        port=0,
        remove_created_on_close=False,
        # Its INFO lines ("HTTP server started at ...") would fill every test's captured log.
        log_level="WARNING",
        shutdown_grace=SHUTDOWN_GRACE,
    )


class _InProcess:
    """The recorder of a server in this process: its driver's log and faults, read directly."""

    def __init__(self, driver: RecordingHttpServer, uploads: Callable[[], Path] | None = None) -> None:
        self._driver = driver
        self._uploads = uploads
        #: The folder device uploads went to, made on first use; None before.
        self.uploads_folder: Path | None = None
        #: How many requests had started when its server stopped: a kept driver goes on to serve
        #: later tests, whose requests are theirs. None while it serves.
        self.until: int | None = None

    def get_requests(self, start: int, prefix: str = "") -> tuple[int, list[HttpRequest]]:
        log = self._driver.request_log
        if start >= log.started:  # counting only (a new test's window): nothing to read
            return log.started, []
        if self.until is not None:
            return log.started, [entry for entry in log.since(start, prefix) if entry.seq < self.until]
        # A client can read a response before the server's task logs it; while a connection is
        # open, let the loop catch up (a closed one has logged everything it answered).
        runner = self._driver.runner
        if runner is not None and runner.server is not None and runner.server.connections:
            eventloop.call(_settle)
        return log.started, log.since(start, prefix)

    def get_in_flight(self, prefix: str = "") -> list[Progress]:
        if self.until is not None:  # its stop ended what it was sending
            return []
        return [
            progress for progress in self._driver.request_log.in_flight() if progress.path.startswith(prefix)
        ]

    # The registry takes its own lock: the server's loop thread matches while this thread adds.
    def inject_fault(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        return self._driver.faults.add(FaultSpec.from_dict(spec), namespace)

    def end(self, ident: str, namespace: str | None = None) -> int:
        return int(self._driver.end(ident, namespace))

    def hits(self, ident: str, namespace: str | None = None) -> int:
        return int(self._driver.hits(ident, namespace))

    def requests_started(self) -> int:
        return self._driver.request_log.started

    def add_reply(
        self, spec: dict[str, Any], namespace: str | None = None, handler: Answerer | None = None
    ) -> str:
        call = None
        if handler is not None:

            async def call(reply: str, request: dict[str, Any]) -> dict[str, Any]:
                return await asyncio.get_running_loop().run_in_executor(None, handler, request)

        return self._driver.device_api.add(ReplySpec.from_dict(spec), namespace, call)

    def get_body(self, seq: int, prefix: str) -> bytes:
        return self._driver.request_log.body(seq, prefix)

    def require_auth(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        return self._driver.device_api.add(AuthSpec.from_dict(spec), namespace)

    def accept_uploads(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        if self.uploads_folder is None:
            if self._uploads is None:
                raise RuntimeError(
                    "accept_uploads(): this LoopbackServer has no folder for uploads; "
                    "give LoopbackServer(..., uploads=FUNCTION) that makes one."
                )
            self.uploads_folder = self._uploads()
        return self._driver.device_api.accept(UploadSpec.from_dict(spec), namespace, self.uploads_folder, "")

    def get_uploads(self, api_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self._driver.get_uploads(api_id, namespace))

    def read_upload(self, entry: dict[str, Any], namespace: str | None = None) -> bytes:
        return self._driver.device_api.read(str(entry["api_id"]), str(entry["name"]), namespace)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    """Loopback servers for the fixtures: a new one per request, on the run's address and ports."""

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
        #: The driver the servers of one test after another run on, made on first use, and the
        #: server running on it now: a new port per test, the app and runner kept (issue 19).
        self._kept: RecordingHttpServer | None = None
        self._kept_by: LoopbackServer | None = None

    def server(
        self, root: Path, *, owned: bool, tls: TlsMode = "off", reuse: bool = False, **where: Any
    ) -> LoopbackServer:
        """A started server on ``root``, HTTPS unless ``tls`` is off, on the kept driver if ``reuse``
        and it is free; ``where`` (an exporter's selector, driver, client) is not for it."""
        driver = None
        if reuse and (self._kept_by is None or not self._kept_by.running):
            driver = self._kept = self._kept or new_driver(self._host, root)
        roots = self._roots
        server = LoopbackServer(
            root,
            host=self._host,
            port=self._port,
            url_host=self._url_host,
            timeout=self._timeout,
            # A user's root is never written: what a test stages there goes to a folder of ours.
            staging=root if owned else lambda: roots.make("staged"),
            release=lambda staging, failed: roots.remove(staging, failed=failed),
            progress=self._progress,
            uploads=lambda: roots.make("uploads"),
            tls=self._authority.tls(tls, self._url_host or concrete_host(self._host)),
            driver=driver,
        ).start()
        if driver is not None:
            self._kept_by = server
        return server

    def summary(self) -> list[str]:
        return []

    def removing(self) -> list[str]:
        return []  # its driver's storage removes nothing (remove_created_on_close=False)

    def close(self, *, failed: bool = False) -> None:
        """Stop the kept driver; every other server stopped with its scope."""
        kept, self._kept, self._kept_by = self._kept, None, None
        if kept is not None and kept.runner is not None:
            eventloop.call(kept.stop, timeout=self._timeout)
