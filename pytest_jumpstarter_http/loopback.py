"""The loopback backend: Jumpstarter's own HttpServer driver, run in this process."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import eventloop
from .handle import HttpServerHandle, concrete_host, format_url
from .options import PortRange
from .records import HttpRequest, Progress, url_path

if TYPE_CHECKING:
    from .driver import RecordingHttpServer
    from .faults import FaultSpec

#: Seconds a stopping server waits for downloads still in flight before it cuts them.
SHUTDOWN_GRACE = 2.0


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
    ) -> None:
        self.root: Path = Path(root)
        self.host = host
        self._ports = port
        self._url_host = url_host
        self._timeout = timeout
        self._staging = staging
        self._staged: set[Path] = set()
        self._driver: RecordingHttpServer | None = None
        #: The port it last listened on: a stopped server's URL still names it, in its report.
        self._port = 0
        self._stopped = False
        self._url, self._url_port = "", -1
        self._client: Any = None
        self._client_stack = ExitStack()

    def start(self) -> Self:
        """Start the driver's server on a free port of the configured range."""
        from .driver import RecordingHttpServer

        # The driver's defaults bind the LAN address on port 8080 and serve /var/www; never use them.
        # mypy takes the grpc servicer methods the Driver base leaves to the exporter as abstract.
        driver = RecordingHttpServer(  # type: ignore[abstract]
            root_dir=str(self.root),
            host=self.host,
            port=0,
            remove_created_on_close=False,
            # Its INFO lines ("HTTP server started at ...") would fill every test's captured log.
            log_level="WARNING",
            shutdown_grace=SHUTDOWN_GRACE,
        )
        if isinstance(self._staging, Path) and self._staging != self.root:
            driver.roots.append(self._staging)
        # Each running server holds the loop thread: used without pytest, the last stop() ends
        # the thread, whose portal would otherwise hang the interpreter's exit.
        eventloop.acquire()
        try:
            self._bind(driver)
        except BaseException:
            eventloop.release()
            raise
        self._driver = driver
        self._url_base_host = self._url_host or concrete_host(self.host)
        return self

    def _bind(self, driver: RecordingHttpServer) -> None:
        for port in _candidates(self._ports):
            driver.port = port
            try:
                eventloop.call(driver.start, timeout=self._timeout)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._ports is None:
                    raise
        raise PortsExhausted(
            f"--http-port: every port of {self._ports} on {self.host} is in use; "
            "widen the range, or give 0 for any free port."
        )

    @property
    def _started(self) -> RecordingHttpServer:
        if self._driver is None:
            raise RuntimeError(f"{type(self).__name__} on {str(self.root)!r} was never started; start() it.")
        return self._driver

    @property
    def port(self) -> int:
        if not self._stopped:
            self._port = int(self._started.get_port()) or self._port
        return self._port

    @property
    def url(self) -> str:
        port = self.port
        if port != self._url_port:  # formatted once per port: tests read it often
            self._url, self._url_port = format_url(self._url_base_host, port), port
        return self._url

    @property
    def staging(self) -> Path | None:
        """The folder ``stage()`` copies into, once there is one."""
        return self._staging if isinstance(self._staging, Path) else None

    @property
    def client(self) -> Any:
        """A Jumpstarter ``HttpServerClient`` on this server, through a local session opened on first use."""
        if self._client is None:
            from jumpstarter.common.utils import serve_async

            portal = eventloop.portal()
            stack = self._client_stack
            self._client = stack.enter_context(
                portal.wrap_async_context_manager(serve_async(self._started, portal, stack))
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
            self._started.roots.append(staging)
        return staging

    def publish(self, name: str | None = None) -> None:
        """Nothing to do: the server reads ``root`` directly."""

    def _requests_since(self, start: int) -> list[HttpRequest]:
        # A client can read a response before the server's task logs it; while a connection is
        # open, let the loop catch up (a closed one has logged everything it answered).
        runner = self._started.runner
        if runner is not None and runner.server is not None and runner.server.connections:
            eventloop.call(_settle)
        return self._started.request_log.since(start)

    def _in_flight(self) -> list[Progress]:
        return self._started.request_log.in_flight()

    def _request_count(self) -> int:
        return self._started.request_log.started

    # The registry takes its own lock: the server's loop thread matches while this thread adds.
    def _inject_fault(self, spec: FaultSpec) -> str:
        return self._started.faults.add(spec)

    def _clear_fault(self, fault_id: str) -> int:
        return self._started.faults.clear(fault_id)

    def _fault_hits(self, fault_id: str) -> int:
        return self._started.faults.hits(fault_id)

    def stop(self) -> None:
        """Stop the server; what ``stage()`` copied stays for the owner of its folder to remove."""
        if self._stopped or self._driver is None:
            return
        self.port  # noqa: B018 (remembered for the URL in the report)
        self._stopped = True
        driver = self._driver
        try:
            self.clear_faults()  # the driver's stop() releases any other stalled response
            if driver.runner is not None:
                eventloop.call(driver.stop, timeout=self._timeout)
        finally:
            try:
                self._client_stack.close()
            finally:
                self._client = None
                eventloop.release()


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
