"""The exporter backend: the HttpServer driver of a real Jumpstarter exporter, next to the device.

The server belongs to the exporter, and every connection to it drives the same driver: the
plugin starts it only when it is not running, never restarts it and never stops it. Jumpstarter
stops it when the lease ends or the ``jmp shell`` exits. Each handle serves through a folder of
its own below the exporter's root; files get there through :mod:`.uploads`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from . import locks
from .connect import CLIENT_LABEL, RECORDING_CLIENT, Connections, Exporter, ExporterError
from .faults import FaultSpec, FaultsUnavailable
from .handle import WILDCARDS, HttpServerHandle, format_url
from .names import HttpPublishError, HttpPublishWarning, url_path
from .requestlog import HttpRequest, Progress, RequestLogUnavailable
from .settings import Settings
from .uploads import TOP, Digests, Store, open_to_send

log = logging.getLogger("pytest_jumpstarter_http.exporter")


class ExporterBackend:
    """This process's side of the exporter backend: its connections, and what it sent to each server."""

    def __init__(
        self, settings: Settings, run_id: str, worker: str, progress: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.connections = Connections(settings.client, settings.jumpstarter_host, settings.timeout)
        #: This worker's folder of this run on every exporter; a test's folder is made inside it.
        self._run = f"{TOP}/runs/{run_id}/{worker}"
        self._worker = worker
        self._progress = progress
        self._digests = Digests()
        #: Every HttpServer this process used, by driver uuid: its exporter, client and store.
        self._used: dict[int, tuple[Exporter, Any, Store]] = {}
        #: What this process bound to, one line per HttpServer driver, for the run's summary.
        self.bound: list[str] = []

    def server(
        self, selector: str | None, driver: str | None, root: Path, *, owned: bool, client: Any = None
    ) -> ExporterServer:
        """A handle on the exporter's server for ``root``: a folder of the plugin's own (``owned``)
        or a mirror of the user's directory, kept on the exporter so that a re-run sends nothing new.
        """
        exporter = self.connections.get(selector, client)
        with exporter.answering():
            path, http = exporter.http(driver)
            _start_unless_running(http, self.settings.timeout)
            store = self._store(exporter, path, http)
            folder = f"{self._run}/{root.name}-{uuid.uuid4().hex[:8]}"
            mirror = None
            if not owned:
                origin = f"{socket.gethostname()}:{root.resolve()}".encode()
                mirror = f"{TOP}/roots/{hashlib.sha256(origin).hexdigest()[:16]}"
            server = ExporterServer(
                self, exporter, http, store, driver=path, root=root, folder=folder, mirror=mirror
            )
            if mirror is not None:
                server.publish()
            return server

    def _store(self, exporter: Exporter, path: str, http: Any) -> Store:
        # By client object: a test's own client (http_exporter_client) reaches the same driver
        # through objects of its own, which end with it. The entry keeps ``http`` alive, so its
        # id is never reused by another.
        key = id(http)
        if key not in self._used:
            labels = ",".join(f"{k}={v}" for k, v in sorted(exporter.labels.items())) or "none"
            line = f"exporter {exporter.name!r} (labels {labels}): HttpServer {path!r} at {http.get_url()}"
            if line not in self.bound:
                self.bound.append(line)
                log.info("%s: %s", self._worker, line)
            store = Store(http, exporter.name, self._digests, self.settings.timeout, self._progress)
            self._used[key] = (exporter, http, store)
        return self._used[key][2]

    def close(self) -> None:
        """Remove this worker's folder of the run (and the run's, once empty) unless ``--http-keep``."""
        try:
            for exporter, http, _ in self._used.values():
                if self.settings.keep or exporter.gone is not None:
                    continue
                for folder in (f"{self._run}/", f"{self._run.rsplit('/', 1)[0]}/"):
                    # Another worker's folder may still be there: a folder that is not empty stays.
                    try:
                        http.storage.delete(folder)
                    except Exception:
                        break
        finally:
            self._used.clear()
            self.connections.close()


def _start_unless_running(http: Any, timeout: float) -> None:
    """Start the server if it is not running; never restart it under someone else's downloads.

    ``start()`` on a running server restarts it on a new port, cutting every download in flight,
    so the processes of this machine that find it stopped take turns to start it.
    """
    if http.get_port() != 0:
        return
    with locks.held(f"start:{http.uuid}", timeout):
        if http.get_port() == 0:
            http.start()


class ExporterServer(HttpServerHandle):
    """The exporter's HttpServer, seen through one folder of its root."""

    backend: Literal["exporter"] = "exporter"

    def __init__(
        self,
        exporters: ExporterBackend,
        exporter: Exporter,
        http: Any,
        store: Store,
        *,
        driver: str,
        root: Path,
        folder: str,
        mirror: str | None,
    ) -> None:
        self.exporter = exporter
        #: The dotted path of the HttpServer driver on the exporter.
        self.driver = driver
        self.root: Path = root
        #: The exporter folder ``stage()`` uploads to, removed at ``stop()`` unless ``--http-keep``.
        self.folder = folder
        #: The exporter folder behind ``url``: the mirror of a user's root, else ``folder``.
        self.served = mirror or folder
        self._exporters = exporters
        self._http = http
        self._store = store
        self.host = http.get_host()
        url_host = exporters.settings.url_host
        if url_host is None and self.host in WILDCARDS:
            raise ExporterError(
                f"exporter {exporter.name!r}: its HttpServer at {driver!r} listens on {self.host!r}, which "
                "is no address a device can use; give the address the device reaches with --http-url-host."
            )
        self._url_host = url_host or self.host
        self._last_port = 0
        #: Whether anything was put in ``folder``: a handle that put nothing there removes nothing.
        self._wrote_folder = False

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
        return format_url(self._url_host, self.port) + url_path(self.served)

    @property
    def label(self) -> str:
        return format_url(self._url_host, self._last_port) + url_path(self.served)

    @property
    def client(self) -> Any:
        """The exporter's ``HttpServerClient``; shared with every test bound to this exporter."""
        return self._http

    @property
    def exporter_client(self) -> Any:
        return self.exporter.client

    def _log_unavailable(self) -> RequestLogUnavailable | None:
        if self._http.labels.get(CLIENT_LABEL) == RECORDING_CLIENT:
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
            return list(self._http.get_requests(start)[1])

    def _in_flight(self) -> list[Progress]:
        if self._log_unavailable():
            return []
        with self.exporter.answering():
            return list(self._http.get_in_flight())

    def _request_count(self) -> int:
        if problem := self._log_unavailable():
            raise problem
        with self.exporter.answering():
            return int(self._http.get_requests(1 << 62)[0])

    def _inject_fault(self, spec: FaultSpec) -> str:
        if self._http.labels.get(CLIENT_LABEL) != RECORDING_CLIENT:
            raise FaultsUnavailable(
                f"the HttpServer driver at {self.driver!r} of exporter {self.exporter.name!r} cannot "
                "inject network faults; put pytest_jumpstarter_http.driver.RecordingHttpServer in the "
                "exporter config instead of jumpstarter_driver_http.driver.HttpServer to use inject()."
            )
        with self.exporter.answering():
            return str(self._http.inject_fault(spec.as_dict()))

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
        return url_path(self.served)

    def _request_paths(self) -> tuple[str, ...]:
        return (url_path(self.served), url_path(self.folder))

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
        return format_url(self._url_host, self.port) + url_path(f"{self.folder}/{name}")

    def _put(self, fd: int, label: str, target: str) -> None:
        with self.exporter.answering():
            self._store.put(fd, label, target)
        self._wrote_folder = self._wrote_folder or target.startswith(self.folder + "/")

    def stop(self) -> None:
        """End this handle's faults and remove its own folder from the exporter (unless ``--http-keep``);
        the server runs on."""
        self.clear_faults()
        # An exporter that is gone holds nothing to remove, and its tests were told already.
        if self._exporters.settings.keep or self.exporter.gone is not None or not self._wrote_folder:
            return
        try:
            with self.exporter.answering():
                self._http.storage.remove_all(self.folder + "/")
        finally:
            self._store.forget(self.folder + "/")
