"""The exporter backend: the HttpServer driver of a real Jumpstarter exporter, next to the device.

The server belongs to the exporter, and every connection to it drives the same driver: the
plugin starts it only when it is not running, never restarts it and never stops it. Jumpstarter
stops it when the lease ends or the ``jmp shell`` exits.

Everything this process puts on a server is below a folder of its own there, which it holds
(:class:`Holding`) for as long as it is connected: on a ``RecordingHttpServer`` the server
removes it, and ends the process's namespaces and faults, when that connection ends (see
:mod:`.namespaces`). Each handle serves through a namespace of its own; files get there through
:mod:`.uploads`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import locks
from .connect import CLIENT_LABEL, RECORDING_CLIENT, Connections, Exporter, ExporterError
from .faults import FaultSpec, FaultsUnavailable
from .handle import WILDCARDS, HttpServerHandle, format_url
from .options import Settings
from .records import (
    NS,
    RUNS,
    HttpPublishError,
    HttpPublishWarning,
    HttpRequest,
    Progress,
    RequestLogUnavailable,
    check_name,
    url_path,
)
from .uploads import Digests, Store, open_to_send

log = logging.getLogger("pytest_jumpstarter_http.exporter")


class ExporterBackend:
    """This process's side of the exporter backend: its connections, and what it holds on each server."""

    def __init__(
        self, settings: Settings, run_id: str, worker: str, progress: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.connections = Connections(settings.client, settings.jumpstarter_host, settings.timeout)
        self._run_id = run_id
        self._worker = worker
        self._progress = progress
        self._digests = Digests()
        #: Every HttpServer this process used, by client object.
        self._used: dict[int, Used] = {}
        #: What this process bound to, one line per HttpServer driver, for the run's summary.
        self.bound: list[str] = []

    def server(
        self, selector: str | None, driver: str | None, root: Path, *, owned: bool, client: Any = None
    ) -> ExporterServer:
        """A handle on the exporter's server for ``root``: a folder of the plugin's own (``owned``)
        or a user's directory, mirrored once per process into this process's folder on the exporter.
        """
        exporter = self.connections.get(selector, client)
        with exporter.answering():
            path, http = exporter.http(driver)
            used = self._use(exporter, path, http)
            mirror = None if owned else used.mirror(root)
            server = ExporterServer(self, used, driver=path, root=root, mirror=mirror)
            if not owned:
                server.publish()
            return server

    def _use(self, exporter: Exporter, path: str, http: Any) -> Used:
        # By client object: a test's own client (http_exporter_client) reaches the same driver
        # through objects of its own, which end with it. The entry keeps ``http`` alive, so its
        # id is never reused by another.
        key = id(http)
        if key not in self._used:
            recording = http.labels.get(CLIENT_LABEL) == RECORDING_CLIENT
            _start_unless_running(http, recording, self.settings.timeout)
            line = f"{exporter.describe()}: HttpServer {path!r} at {http.get_url()}"
            if line not in self.bound:
                self.bound.append(line)
                log.info("%s: %s", self._worker, line)
            folder = f"{RUNS}/{self._run_id}-{self._worker}-{uuid.uuid4().hex[:8]}"
            holding = Holding(http, folder, self.settings.keep, self.settings.timeout) if recording else None
            store = Store(
                http,
                exporter.name,
                self._digests,
                self.settings.timeout,
                self._progress,
                parts=f"{folder}/.parts",
            )
            self._used[key] = Used(exporter, http, store, folder, holding)
        return self._used[key]

    def close(self) -> None:
        """Let go of every server: a RecordingHttpServer then removes this process's folder itself
        (unless ``--http-keep``); the stock driver's is removed from here."""
        try:
            for used in self._used.values():
                used.close(keep=self.settings.keep)
        finally:
            self._used.clear()
            self.connections.close()


@dataclass
class Used:
    """One HttpServer as this process uses it: its connection, client, store and folder there."""

    exporter: Exporter
    http: Any
    store: Store
    #: This process's folder below the exporter's root; everything it puts there is inside.
    folder: str
    #: This process's hold on a RecordingHttpServer, which owns ``folder`` for it; None on the stock driver.
    holding: Holding | None
    #: The exporter folder mirroring each user's directory served.
    mirrors: dict[Path, str] = field(default_factory=dict)

    def mirror(self, root: Path) -> str:
        """This process's mirror of ``root`` on the exporter, shared by its handles of that root."""
        if root not in self.mirrors:
            self.mirrors[root] = f"{self.folder}/mirror-{uuid.uuid4().hex[:8]}"
        return self.mirrors[root]

    def close(self, *, keep: bool) -> None:
        if self.holding is not None:
            self.holding.close()
            return
        if keep or self.exporter.gone is not None:
            return
        # The stock driver cannot see this process end: remove its folder while it can.
        with contextlib.suppress(Exception):
            self.http.storage.remove_all(self.folder + "/")
        with contextlib.suppress(Exception):
            self.http.storage.delete(f"{RUNS}/")  # only once empty: another run's folder keeps it


class Holding:
    """This process's hold on a RecordingHttpServer: a stream that makes it an owner there.

    The server ends everything the owner set (namespaces, faults, its folder) when the stream
    ends, which Jumpstarter sees however this process ends: a clean exit, a SIGKILL, a lost lease.
    The stream runs on the client's own portal, so a test's own client works as the plugin's do.
    """

    def __init__(self, http: Any, folder: str, keep: bool, timeout: float) -> None:
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._task = http.portal.start_task_soon(_hold, http, folder, keep, ready)
        try:
            #: The owner's token on the server, which this process's namespaces name.
            self.token = ready.result(timeout)
        except BaseException:
            self._task.cancel()
            raise

    def close(self) -> None:
        self._task.cancel()


async def _hold(http: Any, folder: str, keep: bool, ready: concurrent.futures.Future[str]) -> None:
    try:
        async for token in http.hold_async(folder, keep):
            if not ready.done():
                ready.set_result(str(token))
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
        raise


def _start_unless_running(http: Any, recording: bool, timeout: float) -> None:
    """Start the server if it is not running; never restart it under someone else's downloads.

    ``start()`` on a running server restarts it on a new port, cutting every download in flight.
    A RecordingHttpServer decides on the exporter, for every connection at once; with the stock
    driver, the processes of this machine that find it stopped take turns to start it.
    """
    if http.get_port() != 0:
        return
    if recording:
        http.start_unless_running()
        return
    with locks.held(f"start:{http.uuid}", timeout):
        if http.get_port() == 0:
            http.start()


class ExporterServer(HttpServerHandle):
    """The exporter's HttpServer, seen through a URL namespace of this handle's own.

    On a RecordingHttpServer the handle's URL is a namespace that shows its own folder (what
    ``stage()`` sends) over the mirror of a user's directory, so its request log and faults are
    its alone even where another handle serves the same files. The stock driver has no
    namespaces: the URL is the folder itself, and a staged file keeps a URL of its own.
    """

    backend: Literal["exporter"] = "exporter"

    def __init__(
        self, exporters: ExporterBackend, used: Used, *, driver: str, root: Path, mirror: str | None
    ) -> None:
        self.exporter = used.exporter
        #: The dotted path of the HttpServer driver on the exporter.
        self.driver = driver
        self.root: Path = root
        #: The exporter folder ``stage()`` uploads to, removed at ``stop()`` unless ``--http-keep``.
        self.folder = f"{used.folder}/h-{uuid.uuid4().hex[:8]}"
        #: The exporter folder ``publish()`` sends ``root`` to: the mirror of a user's root, else ``folder``.
        self.served = mirror or self.folder
        self._keep = exporters.settings.keep
        self._http = used.http
        self._store = used.store
        self.host = self._http.get_host()
        url_host = exporters.settings.url_host
        if url_host is None and self.host in WILDCARDS:
            raise ExporterError(
                f"exporter {self.exporter.name!r}: its HttpServer at {driver!r} listens on "
                f"{self.host!r}, which is no address a device can use; give the address the device "
                "reaches with --http-url-host."
            )
        self._url_host = url_host or self.host
        self._last_port = 0
        #: Whether anything was put in ``folder``: a handle that put nothing there removes nothing.
        self._wrote_folder = False
        #: The names ``stage()`` sent, which the stock driver serves from ``folder``.
        self._staged: set[str] = set()
        #: This handle's namespace on a RecordingHttpServer, else None.
        self._namespace: str | None = None
        if used.holding is not None:
            shown = [self.folder] if mirror is None else [self.folder, mirror]
            self._namespace = self._http.open_namespace(used.holding.token, shown)
        #: The URL path of ``url``.
        self._path = url_path(f"{NS}/{self._namespace}" if self._namespace else self.served)

    @property
    def port(self) -> int:
        """The port the exporter's server listens on now."""
        with self.exporter.answering():
            port = int(self._http.get_port())
        self._last_port = port or self._last_port
        if port == 0:
            raise ExporterError(
                f"the HttpServer at {self.driver!r} of exporter {self.exporter.name!r} is not running: "
                "someone stopped it during the run; start it again with its client's start()."
            )
        return port

    @property
    def url(self) -> str:
        return format_url(self._url_host, self.port) + self._path

    @property
    def label(self) -> str:
        return format_url(self._url_host, self._last_port) + self._path

    @property
    def client(self) -> Any:
        """The exporter's ``HttpServerClient``; shared with every test bound to this exporter."""
        return self._http

    @property
    def exporter_client(self) -> Any:
        return self.exporter.client

    def _log_unavailable(self) -> RequestLogUnavailable | None:
        if self._namespace is not None:
            return None
        return RequestLogUnavailable(
            f"the HttpServer driver at {self.driver!r} of exporter {self.exporter.name!r} keeps no "
            "request log; put pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config "
            "instead of jumpstarter_driver_http.driver.HttpServer to see what the device fetched."
        )

    def _requests_since(self, start: int) -> list[HttpRequest]:
        if problem := self._log_unavailable():
            raise problem
        with self.exporter.answering():
            return list(self._http.get_requests(start, self._path + "/")[1])

    def _in_flight(self) -> list[Progress]:
        if self._log_unavailable():
            return []
        with self.exporter.answering():
            return [p for p in self._http.get_in_flight() if p.path.startswith(self._path + "/")]

    def _request_count(self) -> int:
        if problem := self._log_unavailable():
            raise problem
        with self.exporter.answering():
            # Counting only: no entry is numbered that high, so none crosses the wire.
            return int(self._http.get_requests(1 << 62, self._path + "/")[0])

    def _inject_fault(self, spec: FaultSpec) -> str:
        if self._namespace is None:
            raise FaultsUnavailable(
                f"the HttpServer driver at {self.driver!r} of exporter {self.exporter.name!r} cannot "
                "inject network faults; put pytest_jumpstarter_http.driver.RecordingHttpServer in the "
                "exporter config instead of jumpstarter_driver_http.driver.HttpServer to use inject()."
            )
        with self.exporter.answering():
            return str(self._http.inject_fault(spec.as_dict(), self._namespace))

    def _clear_fault(self, fault_id: str) -> int:
        if self.exporter.gone is not None:  # its faults went with it
            return 0
        with self.exporter.answering():
            return int(self._http.clear_fault(fault_id))

    def _fault_hits(self, fault_id: str) -> int:
        with self.exporter.answering():
            return int(self._http.fault_hits(fault_id))

    #: Each look at the request log is a call to the exporter.
    _poll_interval = 0.25

    def _url_path(self) -> str:
        return self._path

    def url_for(self, name: str) -> str:
        name = check_name(name, where="url_for() name")
        if self._namespace is None and name in self._staged:
            return format_url(self._url_host, self.port) + url_path(f"{self.folder}/{name}")
        return super().url_for(name)

    def publish(self, name: str | None = None) -> None:
        """Send what is new or changed in ``root`` (or only ``name``) to this server's folder.

        What the loopback server would not serve is not sent either: links leading out of
        ``root``, and anything that is not a regular file. An entry of ``root`` that cannot be
        sent (a FIFO, a socket, a file this user cannot read, a name the exporter cannot hold)
        is left out, with one ``HttpPublishWarning`` naming all of them; ``name`` alone raises.
        """
        if name is None:
            names = sorted(path.relative_to(self.root).as_posix() for path in self.root.rglob("*"))
        else:
            names = [name]
        left_out = []
        for each in names:
            try:
                fd = open_to_send(self.root, each)
            except HttpPublishError as exc:
                if name is not None:
                    raise HttpPublishError(
                        f"{str(self.root / each)!r} cannot be sent to exporter {self.exporter.name!r}: "
                        f"{exc}; serve a regular file this user can read."
                    ) from None
                left_out.append(f"{each!r} ({exc})")
                continue
            if fd is not None:
                try:
                    self._put(fd, each, f"{self.served}/{each}")
                finally:
                    os.close(fd)
        if left_out:
            warnings.warn(
                f"not sent from {str(self.root)!r} to exporter {self.exporter.name!r}, so answering "
                f"404 there: {'; '.join(left_out)}.",
                HttpPublishWarning,
                stacklevel=2,
            )

    def _stage(self, source: Path, name: str) -> str:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._put(fd, source.name, f"{self.folder}/{name}")
        finally:
            os.close(fd)
        self._staged.add(name)
        return self.url_for(name)

    def _put(self, fd: int, label: str, target: str) -> None:
        with self.exporter.answering():
            self._store.put(fd, label, target)
        self._wrote_folder = self._wrote_folder or target.startswith(self.folder + "/")

    def stop(self) -> None:
        """End this handle's faults and namespace and remove its own folder from the exporter (unless
        ``--http-keep``); the server runs on."""
        try:
            self.clear_faults()
        finally:
            self._close_namespace()
        # An exporter that is gone holds nothing to remove, and its tests were told already.
        if self._keep or self.exporter.gone is not None or not self._wrote_folder:
            return
        try:
            with self.exporter.answering():
                self._http.storage.remove_all(self.folder + "/")
        finally:
            self._store.forget(self.folder + "/")

    def _close_namespace(self) -> None:
        if self._namespace is None or self.exporter.gone is not None:
            return
        with self.exporter.answering():
            self._http.close_namespace(self._namespace)
