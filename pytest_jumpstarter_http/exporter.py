"""The exporter backend: the HttpServer driver of a real Jumpstarter exporter, next to the device.

One connection per exporter per process (the ``jmp shell`` one, or a lease), shared by every
test bound to it. Files reach the exporter through the driver's storage, deduplicated by sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from . import eventloop
from .coordination import SharedServer
from .handle import WILDCARDS, HttpServerHandle, RequestLogUnavailable, format_url
from .names import check_name, url_path
from .requestlog import HttpRequest
from .settings import Settings

log = logging.getLogger("pytest_jumpstarter_http.exporter")

JUMPSTARTER_HOST = "JUMPSTARTER_HOST"
JMP_LEASE = "JMP_LEASE"
JMP_EXPORTER_LABELS = "JMP_EXPORTER_LABELS"
CLIENT_LABEL = "jumpstarter.dev/client"
HTTP_CLIENT = "jumpstarter_driver_http.client.HttpServerClient"
#: The client of this package's drop-in driver, which also keeps a request log.
RECORDING_CLIENT = "pytest_jumpstarter_http.driver.RecordingHttpServerClient"
HTTP_CLIENTS = (HTTP_CLIENT, RECORDING_CLIENT)
#: Uploads this large get a progress line in the terminal.
PROGRESS_BYTES = 64 << 20
#: Everything the plugin uploads lives below this folder of the exporter's served root.
TOP = "pytest-jumpstarter-http"


class ExporterUnavailable(RuntimeError):
    """No exporter can be reached from this run; tests that only prefer one are skipped."""


class ExporterError(RuntimeError):
    """The exporter was reached, but cannot serve as asked."""


def labels_match(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a Jumpstarter label selector (``board=rpi4,!busy``...)."""
    from jumpstarter.client.selectors import parse_label_selector

    match_labels, expressions = parse_label_selector(selector)
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for key, op, values in expressions:
        present = key in labels
        ok = {
            "in": present and labels.get(key) in values,
            "notin": not present or labels.get(key) not in values,
            "!=": labels.get(key) != values[0] if values else True,
            "exists": present,
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


def _env_labels() -> dict[str, str]:
    pairs = (pair.split("=", 1) for pair in os.environ.get(JMP_EXPORTER_LABELS, "").split(",") if "=" in pair)
    return {key: value for key, value in pairs if key}


@dataclass
class Exporter:
    """One connection to an exporter: its client tree, and how to let go of it."""

    name: str
    labels: dict[str, str]
    root: Any
    stack: ExitStack
    #: Where the connection goes (``JUMPSTARTER_HOST``, or the leased exporter's name).
    where: str = ""
    #: The HttpServer drivers this process uses, by uuid, to leave at the end.
    joined: dict[str, tuple[SharedServer, Any]] = field(default_factory=dict)
    #: Why the exporter stopped answering, once it has; nothing more is asked of it then.
    gone: str | None = None

    def http(self, path: str | None) -> tuple[str, Any]:
        """The HttpServer driver client at dotted ``path``, or the only one there is."""
        found: dict[str, tuple[str, Any]] = {}
        everything: list[str] = []
        for where, client in _walk(self.root):
            everything.append(f"{where} ({client.labels.get(CLIENT_LABEL, type(client).__name__)})")
            if client.labels.get(CLIENT_LABEL) not in HTTP_CLIENTS:
                continue
            if path is not None and where == path:
                return where, _usable(where, client)
            # A ``ref:`` shows one driver under two paths: the first one is its home.
            found.setdefault(str(client.uuid), (where, client))
        if path is not None:
            paths = ", ".join(where for where, _ in found.values()) or "none"
            raise ExporterError(
                f"exporter {self.name!r} has no HttpServer driver at {path!r} (--http-driver or the "
                f"http_exporter marker's driver=); its HttpServer drivers: {paths}."
            )
        if not found:
            raise ExporterError(
                f"exporter {self.name!r} has no jumpstarter_driver_http.driver.HttpServer driver; "
                f"add one to its config. Its drivers: {', '.join(everything) or 'none'}."
            )
        if len(found) > 1:
            paths = ", ".join(where for where, _ in found.values())
            raise ExporterError(
                f"exporter {self.name!r} has several HttpServer drivers ({paths}); "
                "choose one with --http-driver PATH or @pytest.mark.http_exporter(driver=PATH)."
            )
        where, client = next(iter(found.values()))
        return where, _usable(where, client)

    def ensure_running(self, http: Any) -> None:
        """Start the server unless it runs (with the other processes that use it): never restart it."""
        key = str(http.uuid)
        if key not in self.joined:
            shared = SharedServer(self.where or self.name, key)
            shared.join(http)
            self.joined[key] = (shared, http)
        elif http.get_port() == 0:
            raise ExporterError(
                f"the HttpServer of exporter {self.name!r} was stopped by someone else during the run; "
                "stop it only where you started it."
            )

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Turn "the exporter no longer answers" into one clear ``ExporterError``.

        Jumpstarter reports a killed or unplugged exporter as a ``DriverError`` of whichever call
        came next, with a page of gRPC detail; every later call would fail the same way.
        """
        if self.gone is not None:
            raise ExporterError(self.gone)
        try:
            yield
        except Exception as exc:
            details = _unavailable(exc)
            if details is None:
                raise
            where = "" if self.where in self.name else f" ({self.where})"
            self.gone = (
                f"exporter {self.name!r}{where} stopped answering during the run ({details}); "
                "is it still running?"
            )
            raise ExporterError(self.gone) from None

    def close(self) -> None:
        try:
            for shared, http in self.joined.values():
                # A server on an exporter that is gone is stopped already: only leave it.
                shared.leave(http if self.gone is None else None)
        finally:
            self.joined.clear()
            self.stack.close()


def _unavailable(exc: BaseException) -> str | None:
    """The gRPC details of ``exc`` if it means the exporter does not answer, else None."""
    import grpc

    rpc = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    if isinstance(rpc, grpc.aio.AioRpcError) and rpc.code() == grpc.StatusCode.UNAVAILABLE:
        return str(rpc.details())
    return None


def _walk(client: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, child in client.children.items():
        where = f"{prefix}.{name}" if prefix else name
        yield where, child
        yield from _walk(child, where)


def _usable(where: str, client: Any) -> Any:
    from jumpstarter.client.base import StubDriverClient

    if isinstance(client, StubDriverClient):
        raise ExporterError(
            f"the HttpServer driver at {where!r} is not usable here: its client is not installed or "
            "not allowed (install jumpstarter-driver-http, or allow it with JMP_DRIVERS_ALLOW)."
        )
    return client


async def _probe(host: str, timeout: float) -> None:
    """Fail fast, with the address, when JUMPSTARTER_HOST does not answer.

    A listener that accepts but never speaks gRPC would otherwise hold the connect for 20 s, and
    grpc-aio turns an anyio timeout into a bare CancelledError, so probe on a channel of our own.
    """
    import asyncio

    import grpc
    from jumpstarter.client.client import _is_tcp_address
    from jumpstarter.common.grpc import ssl_channel_credentials
    from jumpstarter.config.tls import TLSConfigV1Alpha1

    insecure = "1" in (os.environ.get("JMP_GRPC_INSECURE"), os.environ.get("JUMPSTARTER_GRPC_INSECURE"))
    if not _is_tcp_address(host):
        if not Path(host).exists():
            raise ExporterError(f"JUMPSTARTER_HOST={host!r}: no such socket; is the jmp shell still running?")
        channel = grpc.aio.secure_channel(
            f"unix://{host}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        )
    elif insecure:
        channel = grpc.aio.insecure_channel(host)
    else:
        channel = grpc.aio.secure_channel(host, await ssl_channel_credentials(host, TLSConfigV1Alpha1()))

    async def ready() -> None:
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise ExporterError(f"JUMPSTARTER_HOST={host!r} does not answer: nothing listens there.")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async with channel:
        try:
            await asyncio.wait_for(ready(), timeout)
        except TimeoutError:
            raise ExporterError(
                f"JUMPSTARTER_HOST={host!r} accepted a connection but did not answer within {timeout:g} s "
                "(--http-timeout)."
            ) from None


def open_shell(timeout: float) -> Exporter:
    """Connect to the exporter of the surrounding ``jmp shell`` (``JUMPSTARTER_HOST``)."""
    from jumpstarter.utils.env import env_async

    host = os.environ[JUMPSTARTER_HOST]
    portal = eventloop.portal()
    portal.call(_probe, host, timeout)
    stack = ExitStack()
    try:
        root = stack.enter_context(portal.wrap_async_context_manager(env_async(portal, stack)))
    except BaseException as exc:
        stack.close()
        raise ExporterError(f"JUMPSTARTER_HOST={host!r}: cannot open a Jumpstarter session: {exc}") from exc
    name = os.environ.get("JMP_EXPORTER") or f"jmp shell at {host}"
    return Exporter(name=name, labels=_env_labels(), root=root, stack=stack, where=host)


def _current_client() -> str:
    """The client config ``jmp config client use`` chose, as ``jmp shell`` would take it."""
    from jumpstarter.config.user import UserConfigV1Alpha1

    try:
        current = UserConfigV1Alpha1.load().config.current_client
    except Exception:  # no user config yet, or one this version cannot read
        current = None
    return current.alias if current is not None else "default"


def open_lease(client_name: str | None, selector: str, timeout: float) -> Exporter:
    """Lease an exporter matching ``selector`` through a client config; released on close."""
    from jumpstarter.config.client import ClientConfigV1Alpha1

    alias = client_name or _current_client()
    try:
        config = ClientConfigV1Alpha1.load(alias)
    except FileNotFoundError as exc:
        raise ExporterUnavailable(
            f"no Jumpstarter client config {alias!r} (--http-client) to lease an exporter matching "
            f"{selector!r}: {exc} Create one with `jmp config client create`, or run inside `jmp shell`."
        ) from None
    # An inherited JMP_LEASE is reused, never released (the lease belongs to whoever made it);
    # asking again by selector would make the client create a second lease it then never releases.
    reused = os.environ.get(JMP_LEASE) or None
    portal = eventloop.portal()
    stack = ExitStack()
    try:
        lease = stack.enter_context(
            portal.wrap_async_context_manager(
                config.lease_async(
                    None if reused else selector,
                    None,
                    reused,
                    timedelta(hours=4),
                    portal,
                    acquisition_timeout=timedelta(seconds=timeout),
                )
            )
        )
        root = stack.enter_context(portal.wrap_async_context_manager(lease.connect_async(stack)))
    except BaseException as exc:
        stack.close()
        raise ExporterError(
            f"cannot lease an exporter matching {selector!r} with client config {alias!r} within "
            f"{timeout:g} s (--http-timeout): {exc}"
        ) from exc
    labels = dict(getattr(lease, "exporter_labels", None) or {})
    name = lease.exporter_name or "leased exporter"
    exporter = Exporter(name=name, labels=labels, root=root, stack=stack, where=f"lease:{name}")
    if reused and labels and not labels_match(selector, labels):
        exporter.close()
        raise ExporterUnavailable(
            f"JMP_LEASE={reused!r} holds exporter {exporter.name!r} whose labels do not match {selector!r}."
        )
    return exporter


class Exporters:
    """The exporters this process talks to, and what it has uploaded to them."""

    def __init__(
        self,
        settings: Settings,
        basetemp: Path,
        run_id: str,
        worker: str,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        #: Writes a line to the terminal, where pytest shows it (None under -q).
        self.progress = progress
        self.basetemp = basetemp
        self.run_id = run_id
        self.worker = worker
        self._exporters: dict[str | None, Exporter] = {}
        #: What this process bound to, one line per HttpServer driver, for the run's summary.
        self.bound: dict[str, str] = {}
        #: Why an exporter could not be reached: asked once, not again by every test.
        self._failures: dict[str | None, ExporterUnavailable | ExporterError] = {}
        self._digests: dict[tuple[str, int, int], str] = {}
        #: What this process knows each remote file holds: target -> sha256.
        self.remote: dict[tuple[int, str], str] = {}

    def connect(self, selector: str | None) -> Exporter:
        in_shell = bool(os.environ.get(JUMPSTARTER_HOST))
        key = None if in_shell else selector
        if key in self._failures:
            raise self._failures[key]
        if key not in self._exporters:
            try:
                self._exporters[key] = self._open(in_shell, selector)
            except (ExporterUnavailable, ExporterError) as exc:
                self._failures[key] = exc
                raise
        exporter = self._exporters[key]
        if (
            in_shell
            and selector
            and os.environ.get(JMP_EXPORTER_LABELS)
            and not labels_match(selector, exporter.labels)
        ):
            raise ExporterUnavailable(
                f"the jmp shell exporter {exporter.name!r} (labels {os.environ[JMP_EXPORTER_LABELS]}) "
                f"does not match selector {selector!r}."
            )
        return exporter

    def _open(self, in_shell: bool, selector: str | None) -> Exporter:
        if in_shell:
            return open_shell(self.settings.timeout)
        if selector:
            return open_lease(self.settings.client, selector, self.settings.timeout)
        raise ExporterUnavailable(
            "no Jumpstarter exporter: run pytest inside `jmp shell`, or give --http-selector LABELS "
            "(or @pytest.mark.http_exporter(selector=...)) to lease one."
        )

    def server(self, selector: str | None, driver: str | None, root: Path) -> ExporterServer:
        exporter = self.connect(selector)
        with exporter.answering():
            return self._server(exporter, driver, root)

    def _server(self, exporter: Exporter, driver: str | None, root: Path) -> ExporterServer:
        path, http = exporter.http(driver)
        exporter.ensure_running(http)
        if str(http.uuid) not in self.bound:
            labels = ",".join(f"{key}={value}" for key, value in sorted(exporter.labels.items())) or "none"
            self.bound[str(http.uuid)] = line = (
                f"exporter {exporter.name!r} (labels {labels}): HttpServer {path!r} at {http.get_url()}"
            )
            log.info("%s: %s", self.worker, line)
        scratch = f"{TOP}/runs/{self.run_id}/{self.worker}/{root.name}-{uuid.uuid4().hex[:8]}"
        if root.is_relative_to(self.basetemp):
            return ExporterServer(self, exporter, http, path=path, root=root, prefix=scratch, scratch=scratch)
        # A user's root is mirrored once per exporter and kept, so that re-running a suite re-sends
        # nothing that is unchanged; what tests stage goes to a folder of their own.
        where = f"{socket.gethostname()}:{root.resolve()}".encode()
        mirror = f"{TOP}/roots/{hashlib.sha256(where).hexdigest()[:16]}"
        server = ExporterServer(self, exporter, http, path=path, root=root, prefix=mirror, scratch=scratch)
        server.publish()
        return server

    def digest(self, path: Path) -> str:
        """The sha256 of a local file, computed once per (path, size, mtime)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            sha = hashlib.sha256()
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):
                    sha.update(chunk)
            self._digests[key] = sha.hexdigest()
        return self._digests[key]

    def close(self) -> None:
        exporters, self._exporters = list(self._exporters.values()), {}
        for exporter in exporters:
            if not self.settings.keep and exporter.gone is None:
                self._remove_own_folder(exporter)
            exporter.close()

    def _remove_own_folder(self, exporter: Exporter) -> None:
        """Remove this worker's (now empty) folder of the run, and the run's once it is empty too."""
        for _, http in exporter.joined.values():
            for folder in (f"{TOP}/runs/{self.run_id}/{self.worker}/", f"{TOP}/runs/{self.run_id}/"):
                # Another worker's folder may still be there: a folder that is not empty stays.
                with contextlib.suppress(Exception):
                    http.storage.delete(folder)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """The Jumpstarter client draws a rich progress bar per transfer unless TERM is dumb."""
    saved = os.environ.get("TERM")
    os.environ["TERM"] = "dumb"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TERM"]
        else:
            os.environ["TERM"] = saved


class ExporterServer(HttpServerHandle):
    """The exporter's HttpServer, seen through one folder of its root (``prefix``)."""

    backend: Literal["exporter"] = "exporter"

    def __init__(
        self,
        exporters: Exporters,
        exporter: Exporter,
        http: Any,
        *,
        path: str,
        root: Path,
        prefix: str,
        scratch: str,
    ) -> None:
        self._exporters = exporters
        self.exporter = exporter
        self.driver_path = path
        self.root: Path = root
        #: The exporter folder behind ``url``; ``root`` is published there.
        self.prefix = prefix
        #: The exporter folder ``stage()`` uploads to, removed at ``stop()`` unless ``--http-keep``.
        self.scratch = scratch
        self._http = http
        self._id = id(http)
        self.host = http.get_host()
        self.port = http.get_port()
        url_host = exporters.settings.url_host
        if url_host is None and self.host in WILDCARDS:
            raise ExporterError(
                f"exporter {exporter.name!r}: its HttpServer at {path!r} listens on {self.host!r}, which is "
                "no address a device can use; give the address the device reaches with --http-url-host."
            )
        self._base = format_url(url_host or self.host, self.port)
        self.url = self._base + url_path(prefix)

    @property
    def client(self) -> Any:
        """The exporter's ``HttpServerClient``; shared with every test bound to this exporter."""
        return self._http

    @property
    def exporter_client(self) -> Any:
        """The root client of the whole exporter, to reach its other drivers (``.flasher``, ``.power``...)."""
        return self.exporter.root

    def _recording(self) -> bool:
        if self._http.labels.get(CLIENT_LABEL) == RECORDING_CLIENT:
            return True
        raise RequestLogUnavailable(
            f"the HttpServer driver at {self.driver_path!r} of exporter {self.exporter.name!r} keeps no "
            "request log; put pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config "
            "instead of jumpstarter_driver_http.driver.HttpServer to see what the device fetched."
        )

    def _requests_since(self, start: int) -> list[HttpRequest]:
        self._recording()
        with self.exporter.answering():
            return list(self._http.get_requests(start)[1])

    def _request_count(self) -> int:
        self._recording()
        with self.exporter.answering():
            return int(self._http.get_requests(1 << 62)[0])

    def _request_paths(self) -> tuple[str, ...]:
        return (urlsplit(self.url).path, url_path(self.scratch))

    def publish(self, name: str | None = None) -> None:
        """Upload what is new or changed in ``root`` (or only ``name``) to this server's folder."""
        files = (
            [self.root / check_name(name, where="publish() name")]
            if name is not None
            else sorted(self.root.rglob("*"))
        )
        with self.exporter.answering():
            for path in files:
                if path.is_file():
                    self._upload(path, path.relative_to(self.root).as_posix())

    def stage(self, src: str | os.PathLike[str], name: str | None = None) -> str:
        """Upload the local file ``src`` as ``name`` (default: its file name); return its URL.

        Skipped when the exporter already holds the same bytes there (compared by sha256).
        """
        source = Path(src)
        if not source.is_file():
            raise FileNotFoundError(
                f"stage(): {str(source)!r} is not a file; give the path of a file to serve."
            )
        name = check_name(name or source.name, where="stage() name")
        with self.exporter.answering():
            self._upload(source, name, self.scratch)
        return self._base + url_path(f"{self.scratch}/{name}")

    def _upload(self, source: Path, name: str, folder: str | None = None) -> None:
        target = f"{folder or self.prefix}/{name}"
        digest = self._exporters.digest(source)
        known = self._exporters.remote
        storage = self._http.storage
        key = (self._id, target)
        if known.get(key) == digest:
            return
        if storage.exists(target) and storage.hash(target, "sha256") == digest:
            known[key] = digest
            return
        # Upload beside the target, then rename: a reader (or another worker uploading the same
        # file) never sees a half-written one; same-name uploads through the storage interleave.
        partial = f"{target}.part-{uuid.uuid4().hex[:12]}"
        size = source.stat().st_size
        say = self._exporters.progress if size >= PROGRESS_BYTES else None
        mib = size / (1 << 20)
        if say:
            say(f"jumpstarter-http: staging {source.name} ({mib:.1f} MiB) to {self.exporter.name} ...")
        began = time.monotonic()
        with _quiet_progress():
            storage.write_from_path(partial, str(source))
        storage.rename(partial, target)
        if say:
            took = max(time.monotonic() - began, 1e-6)
            say(f"jumpstarter-http: staged {source.name} in {took:.1f} s ({mib / took:.0f} MiB/s)")
        known[key] = digest
        log.info("staged %s as %s on %s", source, target, self.exporter.name)

    def stop(self) -> None:
        """Remove this server's own folder from the exporter (unless ``--http-keep``); the server runs on."""
        # An exporter that is gone holds nothing to remove, and its tests were told already.
        if self._exporters.settings.keep or self.exporter.gone is not None:
            return
        folder = self.scratch + "/"
        known = self._exporters.remote
        stale = [key for key in known if key[1].startswith(folder)]
        try:
            if stale or self.prefix == self.scratch:
                with self.exporter.answering():
                    self._http.storage.remove_all(folder)
        finally:
            for key in stale:
                del known[key]
