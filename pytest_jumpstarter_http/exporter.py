"""The exporter backend: the HttpServer driver of a real Jumpstarter exporter, next to the device.

The server belongs to the exporter, and every connection to it drives the same driver: the
plugin starts it only when it is not running, never restarts it and never stops it. Jumpstarter
stops it when the lease ends or the ``jmp shell`` exits.

Everything this process puts on a server is below a folder of its own there, which it owns
(:class:`OwnerStream`) for as long as it is connected: on a ``RecordingHttpServer`` the server
removes it, and ends the process's namespaces and faults, when that connection ends (see
:mod:`.namespaces`). Each handle serves through a namespace of its own; files get there through
:mod:`.store`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from . import locks
from .connect import CLIENT_LABEL, RECORDING_CLIENT, Connection, Connections, ExporterError, unavailable
from .handle import WILDCARDS, HttpServerHandle, clear_each, format_url, refuse_beside
from .records import (
    API_VERSION,
    NS,
    RUNS,
    FaultsUnavailable,
    HttpPublishError,
    HttpPublishWarning,
    RequestLogUnavailable,
    TlsSpec,
    check_name,
    plugin_version,
    url_path,
)
from .store import Digests, Store, open_to_send
from .values import Keep, TlsMode

if TYPE_CHECKING:
    from .records import Recorder
    from .tls import Authority, Tls

log = logging.getLogger("pytest_jumpstarter_http.exporter")

#: The stock driver's folder of one checked copy per content staged, in each process's folder.
SPARES = ".spares"


class ExporterBackend:
    """This process's side of the exporter backend: its connections, and what it holds on each server."""

    def __init__(
        self,
        *,
        client_config: str | None,
        jumpstarter_host: str | None,
        timeout: float,
        keep: Keep,
        url_host: str | None,
        run_id: str,
        worker: str,
        authority: Authority,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.connections = Connections(client_config, jumpstarter_host, timeout)
        self._authority = authority
        self._timeout = timeout
        self._keep = keep
        self._url_host = url_host
        self._run_id = run_id
        self._worker = worker
        self._progress = progress
        self._digests = Digests()
        #: Every HttpServer this process used, by client object.
        self._used: dict[int, Used] = {}
        #: What this process bound to, one line per HttpServer driver, for the run's summary.
        self._bound: list[str] = []
        #: The servers it used whose storage removes what a Jumpstarter session wrote when it ends.
        self._removing: list[str] = []
        #: How many folders --http-keep kept on each server, by where, once it let go of them.
        self._kept: dict[str, int] = {}

    def server(
        self,
        root: Path,
        *,
        owned: bool,
        selector: str | None = None,
        driver_path: str | None = None,
        exporter_client: Any = None,
        tls: TlsMode = "off",
    ) -> ExporterServer:
        """A handle on the exporter's server for ``root``: a folder of the plugin's own (``owned``)
        or a user's directory, mirrored once per process into this process's folder on the exporter.
        Every handle is a namespace of its own on the exporter's one server.

        The exporter is the one of ``exporter_client`` (a client the test holds), else the
        ``jmp shell`` one, else one leased by ``selector``; ``driver`` is its HttpServer's path.
        Unless ``tls`` is off it serves HTTPS, with a certificate of this run's CA for its URL's host.
        """
        connection = self.connections.get(selector, exporter_client)
        with connection.answering():
            path, http = connection.http(driver_path)
            used = self._use(connection, path, http)
            mirror = None if owned else used.mirror(root)
            kind = ExporterServer if used.owner is not None else StockServer
            server = kind(
                used,
                driver_path=path,
                root=root,
                mirror=mirror,
                keep=self._keep,
                url_host=self._url_host,
                progress=self._progress,
                certify=functools.partial(self._authority.tls, tls),
                lab_ca=self._authority.lab_ca,
            )
            if not owned:
                server.publish()
            return server

    def summary(self) -> list[str]:
        """One line per HttpServer this process used: its exporter, and where it listens."""
        return list(self._bound)

    def removing(self) -> list[str]:
        """The HttpServers this process used that said their storage removes, when the Jumpstarter
        session ends, what it wrote (``remove_created_on_close``); the stock driver cannot say."""
        return list(self._removing)

    def kept(self) -> dict[str, int]:
        """How many handle folders ``--http-keep`` kept on each server, by the folder they are in
        and its exporter; known once ``close()`` let go of the servers."""
        return dict(self._kept)

    def _use(self, connection: Connection, path: str, http: Any) -> Used:
        # By client object: a test's own client (http_exporter_client) reaches the same driver
        # through objects of its own, which end with it. The entry keeps ``http`` alive, so its
        # id is never reused by another.
        key = id(http)
        if key not in self._used:
            recording = http.labels.get(CLIENT_LABEL) == RECORDING_CLIENT
            if recording and _speaks_our_api(connection, path, http):
                where = f"exporter {connection.name!r} (HttpServer {path!r})"
                if where not in self._removing:
                    self._removing.append(where)
            port = _start_unless_running(http, recording, self._timeout)
            host = http.get_host()
            line = f"{connection.describe()}: HttpServer {path!r} at {format_url(str(host), port)}"
            if line not in self._bound:
                self._bound.append(line)
                log.info("%s: %s", self._worker, line)
            folder = f"{RUNS}/{self._run_id}-{self._worker}-{uuid.uuid4().hex[:8]}"
            # With --http-keep=failed the server keeps the folder: a failed test's part of it stays.
            owner = None
            if recording:
                with _asking(connection, path, "own()"):
                    owner = OwnerStream(http, folder, self._keep != "none", self._timeout)
            store = Store(
                http,
                connection.name,
                self._digests,
                self._timeout,
                self._progress,
                # The server removes an owner's folder, partial files and all, when it ends; the stock
                # driver cannot, so its partials go where the next run of this machine sweeps them.
                parts=f"{folder}/.parts" if owner is not None else None,
                spares=f"{folder}/{SPARES}" if owner is None else None,
            )
            self._used[key] = Used(connection, http, path, store, folder, owner, host)
        return self._used[key]

    def close(self, *, failed: bool = False) -> None:
        """Let go of every server: a RecordingHttpServer then removes this process's folder itself
        (unless ``--http-keep`` keeps it; ``failed``: a test of the run failed); the stock driver's
        is removed from here."""
        keep = self._keep == "all" or (failed and self._keep == "failed")
        try:
            for used in self._used.values():
                if used.kept:
                    where = f"exporter {used.connection.name!r} (HttpServer {used.driver_path!r})"
                    self._kept[f"{used.folder} on {where}"] = used.kept
                used.close(keep=keep)
        finally:
            self._used.clear()
            self.connections.close()


class Spare(NamedTuple):
    """A namespace opened for the next handle: its token, its folder, and the mirror it shows."""

    namespace: str
    folder: str
    mirror: str | None


def _shown(folder: str, mirror: str | None) -> list[str]:
    """The folders a handle's namespace shows: its own, over the mirror of a user's root."""
    return [folder] if mirror is None else [folder, mirror]


@dataclass
class Used:
    """One HttpServer as this process uses it: its connection, client, store and folder there."""

    connection: Connection
    http: Any
    #: The dotted path of the HttpServer driver on the exporter.
    driver_path: str
    store: Store
    #: This process's folder below the exporter's root; everything it puts there is inside.
    folder: str
    #: This process as an owner of a RecordingHttpServer, which owns ``folder`` for it; None on
    #: the stock driver.
    owner: OwnerStream | None
    #: The address the server binds, from its config: asked once, not per handle.
    host: str
    #: The exporter folder mirroring each user's directory served.
    mirrors: dict[Path, str] = field(default_factory=dict)
    #: The HTTPS site the server added for each certificate this process asked for: its port, and
    #: the lab's CA (PEM) if the driver serves a lab certificate of its own instead.
    tls_sites: dict[TlsSpec, tuple[int, str | None]] = field(default_factory=dict)
    #: The names the stock driver's live handles staged into each mirror, and the handle of each:
    #: the handles of one root share its mirror, and a name in it is one file.
    in_mirrors: dict[str, dict[str, object]] = field(default_factory=dict)
    #: How many handles' folders (``h-*``) in ``folder`` --http-keep kept.
    kept: int = 0
    #: The namespace the last handle's stop opened for the next handle to take.
    spare: Spare | None = None

    def new_folder(self) -> str:
        """A new handle's folder, in this process's: ``stage()`` and ``publish()`` send there."""
        return f"{self.folder}/h-{uuid.uuid4().hex[:8]}"

    def take_spare(self, mirror: str | None) -> Spare | None:
        """The spare namespace, for a handle that shows ``mirror`` (None: a folder of the plugin's
        own) as the spare does; None if there is none of that shape, or if it ended with its owner
        (the exporter went, say): opening a namespace then says why."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.mirror != mirror:
            self.spare = spare  # it stays for a handle of its shape, and ends with the owner
            return None
        return spare if self.owner is not None and self.owner.alive else None

    def drop_spare(self) -> None:
        """End the spare namespace, if there is one: an HTTPS site of the owner logs each handshake
        it refuses in every namespace of the owner, which a spare must not collect before its test."""
        spare, self.spare = self.spare, None
        if spare is not None:
            with self.connection.answering():
                self.http.close_namespace(spare.namespace)

    def serve_tls(self, owner: OwnerStream, spec: TlsSpec) -> tuple[int, str | None]:
        """Where the server serves HTTPS with ``spec`` for this process, added on first use; it closes
        when this process's call channel ends, never touching the plain server others share."""
        if spec not in self.tls_sites:
            self.drop_spare()
            with self.connection.answering(), _asking(self.connection, self.driver_path, "serve_tls()"):
                self.tls_sites[spec] = self.http.serve_tls(owner.id, spec.as_dict())
        return self.tls_sites[spec]

    def mirror(self, root: Path) -> str:
        """This process's mirror of ``root`` on the exporter, shared by its handles of that root."""
        if root not in self.mirrors:
            self.mirrors[root] = f"{self.folder}/mirror-{uuid.uuid4().hex[:8]}"
        return self.mirrors[root]

    def close(self, *, keep: bool) -> None:
        """Let go of the server, and of this process's folder there unless ``keep``."""
        if self.owner is not None and (keep or not self.owner.keeps):
            if keep:
                self.store.drop_parts()
            self.owner.close()  # the server removes the folder unless it was told to keep it
            return
        if self.connection.gone is None:
            if not keep:
                self._remove_folder()
            else:  # the stock driver's spares are the process's, not a failed test's: none kept
                with contextlib.suppress(Exception):
                    self.http.storage.remove_all(f"{self.folder}/{SPARES}/")
        if self.owner is not None:
            self.owner.close()

    def _remove_folder(self) -> None:
        # The stock driver cannot see this process end, nor does a RecordingHttpServer told to
        # keep the folder for failed tests: remove it while it can.
        with contextlib.suppress(Exception):
            self.http.storage.remove_all(self.folder + "/")
        with contextlib.suppress(Exception):
            self.http.storage.delete(f"{RUNS}/")  # only once empty: another run's folder keeps it


@contextlib.contextmanager
def _asking(connection: Connection, driver_path: str, call: str) -> Iterator[None]:
    """Turn a RecordingHttpServer call that fails into one ``ExporterError`` naming the call.

    Jumpstarter reports a driver's exception as a ``DriverError`` with the server's traceback; the
    likeliest cause is an exporter on another version of this plugin (no such call, or another
    signature), else its config (a lab certificate file that is not there).
    """
    try:
        yield
    except ExporterError:
        raise
    except concurrent.futures.TimeoutError:
        raise ExporterError(
            f"exporter {connection.name!r}: {call} of the HttpServer at {driver_path!r} did not answer "
            "within --http-timeout; is the exporter overloaded or stuck?"
        ) from None
    except Exception as exc:
        if unavailable(exc) is not None:  # the exporter went away: Connection.answering() says so
            raise
        raise ExporterError(
            f"exporter {connection.name!r}: {call} of the HttpServer at {driver_path!r} failed ({exc}); "
            "run the same version of pytest-jumpstarter-http on the exporter as here, and check its "
            "driver config."
        ) from None


def _speaks_our_api(connection: Connection, driver_path: str, http: Any) -> bool | None:
    """An ``ExporterError`` naming both versions, and the side to upgrade, unless the exporter's
    RecordingHttpServer speaks this process's server API; whether its storage removes what a
    session wrote when the session ends (None: a server too old to say)."""
    ours = plugin_version()
    removes: bool | None = None
    try:
        api, theirs, removes = http.api()
    except Exception as exc:
        if unavailable(exc) is not None:
            raise
        api, theirs = 1, "older than this check"  # from before api(): no such call
    if api == API_VERSION:
        return removes
    side = "the exporter" if api < API_VERSION else "this machine"
    raise ExporterError(
        f"exporter {connection.name!r}: its RecordingHttpServer at {driver_path!r} runs "
        f"pytest-jumpstarter-http {theirs} (server API {api}) and this machine {ours} "
        f"(server API {API_VERSION}); upgrade pytest-jumpstarter-http on {side}."
    )


class OwnerStream:
    """This process as an owner of a RecordingHttpServer, on its client's call channel (``own``).

    The server ends everything the owner set (namespaces, faults, its folder) when the channel
    ends, which Jumpstarter sees however this process ends: a clean exit, a SIGKILL, a lost lease.
    Through it the server asks for the names a device wanted of a namespace that lacks them: the
    handle of that namespace (in :attr:`senders`) sends each one it has, in a worker thread.
    """

    def __init__(self, http: Any, folder: str, keep: bool, timeout: float) -> None:
        #: Whether the server keeps the folder when the stream ends.
        self.keeps = keep
        #: Namespace token -> the function that sends a name of it, True if it had that name.
        self.senders: dict[str, Callable[[str], bool]] = {}
        self._http = http
        #: The owner's id on the server, which this process's namespaces name.
        self.id = http.own(folder, keep, self._wanted, timeout)

    def _wanted(self, want: dict[str, Any]) -> None:
        """Send the name a device asked of one of this process's namespaces, and answer; or answer
        a request with the test's handler."""
        if "call" in want:
            self._http.answer_handed(want)
            return
        namespace, name = str(want["namespace"]), str(want["name"])
        send = self.senders.get(namespace)
        sent = False
        try:
            sent = send is not None and send(name)
        except Exception:
            log.warning(
                "could not send %r of namespace %s that a device asked for", name, namespace, exc_info=True
            )
        finally:
            with contextlib.suppress(Exception):  # the exporter may be gone meanwhile
                self._http.answer(namespace, name, sent)

    @property
    def alive(self) -> bool:
        """Whether the owner lives: its call channel has not ended (as far as this process saw)."""
        return bool(self._http.calling())

    def close(self) -> None:
        """End the owner: its call channel."""
        self._http.close_calls()


def _start_unless_running(http: Any, recording: bool, timeout: float) -> int:
    """Start the server if it is not running, never restarting it under someone else's downloads;
    its port.

    ``start()`` on a running server restarts it on a new port, cutting every download in flight.
    A RecordingHttpServer decides on the exporter, for every connection at once, in one call; with
    the stock driver, the processes of this machine that find it stopped take turns to start it.
    """
    if recording:
        return int(http.start_unless_running())
    port = int(http.get_port())
    if port != 0:
        return port
    with locks.held(f"start:{http.uuid}", timeout):
        if http.get_port() == 0:
            http.start()
        return int(http.get_port())


class ExporterServer(HttpServerHandle):
    """The exporter's RecordingHttpServer, seen through a URL namespace of this handle's own.

    The handle's URL is a namespace that shows its own folder (what ``stage()`` sends) over the
    mirror of a user's directory, so its request log and faults are its alone even where another
    handle serves the same files.
    """

    backend: Literal["exporter"] = "exporter"

    def __init__(
        self,
        used: Used,
        *,
        driver_path: str,
        root: Path,
        mirror: str | None,
        keep: Keep,
        url_host: str | None,
        progress: Callable[[str], None] | None = None,
        certify: Callable[[str], Tls | None] = lambda host: None,
        lab_ca: Callable[[str], Path] = Path,
    ) -> None:
        connection, http = used.connection, used.http
        host = used.host
        tls = _certified(used, driver_path, host, url_host, certify)
        spare = used.take_spare(mirror)
        #: The exporter folder ``stage()`` sends to, removed at ``stop()`` unless ``--http-keep``.
        self.folder = spare.folder if spare else used.new_folder()
        #: The exporter folder ``publish()`` sends ``root`` to: the mirror of a user's root, else ``folder``.
        self.served = mirror or self.folder
        self._mirror = mirror
        namespace = self._namespace_of(used, driver_path, spare)
        super().__init__(
            root,
            host,
            recorder=self._recorder_of(used, driver_path),
            namespace=namespace,
            progress=progress,
            tls=tls,
        )
        #: The connection to the exporter whose server this is.
        self.connection = connection
        #: The dotted path of the HttpServer driver on the exporter.
        self.driver_path = driver_path
        self._owner = used.owner
        self._used = used
        #: The names staged by reference, and their contents: copied into ``folder`` if it is kept.
        self._linked: dict[str, str] = {}
        self._keep = keep
        self._http = http
        self._store = used.store
        self.handler_wait = used.store.timeout
        self._url_host = url_host or self.host
        self._last_port = 0
        #: Whether anything was put in ``folder``: a handle that put nothing there removes nothing.
        self._wrote_folder = False
        #: The URL path of ``url``.
        self._path = url_path(f"{NS}/{namespace}" if namespace else self.served)
        #: The port of this process's HTTPS site on the server (0: plain HTTP).
        self._tls_port = 0 if tls is None else self._serve_tls(used, tls, lab_ca)

    def _namespace_of(self, used: Used, driver_path: str, spare: Spare | None) -> str | None:
        """The handle's own URL namespace on the server, showing its folder over its mirror (the
        ``spare`` the last handle's stop opened, else a new one); a name it lacks is asked of this
        process, which sends it from ``root`` if it is there now (no ``publish()`` needed), for
        ``--http-timeout`` at most."""
        owner = used.owner
        assert owner is not None  # a RecordingHttpServer's: StockServer has none
        if spare is not None:
            namespace = spare.namespace
        else:
            with _asking(used.connection, driver_path, "open_namespace()"):
                shown = _shown(self.folder, self._mirror)
                namespace = str(used.http.open_namespace(owner.id, shown, used.store.timeout))
        owner.senders[namespace] = self._send_wanted
        return namespace

    def _send_wanted(self, name: str) -> bool:
        """Serve ``name`` of ``root``, which a device asked for, by reference; whether it is there."""
        try:
            fd = open_to_send(self.root, check_name(name, where="name"))
        except (ValueError, HttpPublishError):
            return False
        if fd is None:
            return False
        try:
            self._stage_open(fd, name, name)
        finally:
            os.close(fd)
        return True

    def _serve_in_place(self, name: str) -> None:
        if name in self._linked:  # a device asked for it: its link, not the mirror, serves the name
            self._send_wanted(name)
        else:
            self.publish(name)

    def _recorder_of(self, used: Used, driver_path: str) -> Recorder:
        return cast("Recorder", _Answering(used.http, used.connection))

    def _serve_tls(self, used: Used, tls: Tls, lab_ca: Callable[[str], Path]) -> int:
        """The port of this process's HTTPS site on the server, added on first use."""
        assert used.owner is not None  # _certified refused TLS of the stock driver
        try:
            port, ca_pem = used.serve_tls(used.owner, tls.spec)
        except BaseException:
            self._close_namespace(renew=False)
            raise
        if ca_pem is not None:  # the lab's own certificate, configured on the exporter
            self.ca_cert = lab_ca(ca_pem)
        return port

    @property
    def port(self) -> int:
        """The port the exporter's server listens on now."""
        with self.connection.answering():
            port = int(self._http.get_port())
        self._last_port = port or self._last_port
        if port == 0:
            raise ExporterError(
                f"the HttpServer at {self.driver_path!r} of exporter {self.connection.name!r} is not "
                "running: someone stopped it during the run; start it again with its client's start()."
            )
        return self._tls_port or port

    @property
    def url(self) -> str:
        return self._url_at(self.port)

    def _url_at(self, port: int) -> str:
        return format_url(self._url_host, self._tls_port or port, self.scheme) + self._path

    @property
    def label(self) -> str:
        return format_url(self._url_host, self._tls_port or self._last_port, self.scheme) + self._path

    @property
    def client(self) -> Any:
        """The exporter's ``HttpServerClient``; shared with every test bound to this exporter."""
        return self._http

    @property
    def exporter_client(self) -> Any:
        return self.connection.client

    #: Each look at the request log is a call to the exporter.
    _poll_interval = 0.25

    def _url_path(self) -> str:
        return self._path

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
                        f"{str(self.root / each)!r} cannot be sent to exporter {self.connection.name!r}: "
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
                f"not sent from {str(self.root)!r} to exporter {self.connection.name!r}, so answering "
                f"404 there: {'; '.join(left_out)}.",
                HttpPublishWarning,
                stacklevel=2,
            )

    def _stage(self, source: Path, name: str) -> str:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            port = self._stage_open(fd, source.name, name)
        finally:
            os.close(fd)
        return self._url_at(port) + url_path(name) if port else self.url_for(name)

    def _stage_open(self, fd: int, label: str, name: str) -> int:
        """Serve the open file as ``name`` by reference: its namespace points the name at the
        content's object, sent once and verified once by this process; nothing is copied. The
        server's port, as the link was made (0: unknown)."""
        with self.connection.answering():
            digest = self._store.sent(fd, label)
            with _asking(self.connection, self.driver_path, "link()"):
                port = int(self._http.link(self._namespace, name, digest))
        self._linked[name] = digest
        self._last_port = port or self._last_port
        return port

    def _put(self, fd: int, label: str, target: str, *, spare: bool = False) -> None:
        with self.connection.answering():
            self._store.put(fd, label, target, spare=spare)
        self._wrote_folder = self._wrote_folder or target.startswith(self.folder + "/")

    def stop(self, *, failed: bool = False) -> None:
        """End this handle's faults and namespace and remove its own folder from the exporter (unless
        ``--http-keep`` keeps it); the server runs on."""
        try:
            self._end_scripts()
        finally:
            self._close_namespace()
        # An exporter that is gone holds nothing to remove, and its tests were told already.
        keep = self._keep == "all" or (failed and self._keep == "failed")
        if self.connection.gone is not None:
            return
        if keep:
            self._used.kept += self._holds_anything()
            self._keep_what_it_linked()
            return
        self._remove_what_it_wrote()

    def _holds_anything(self) -> bool:
        """Whether the handle's folder holds anything, or will once its names are kept."""
        return self._wrote_folder or bool(self._linked)

    def _keep_what_it_linked(self) -> None:
        """A copy of each name staged by reference into the handle's folder, which ``--http-keep``
        keeps: the namespace that named them ends with the handle."""
        linked, self._linked = self._linked, {}
        with self.connection.answering():
            for name, digest in sorted(linked.items()):
                self._store.put_object(digest, f"{self.folder}/{name}")

    def _remove_what_it_wrote(self) -> None:
        if not self._wrote_folder:
            return
        try:
            with self.connection.answering():
                self._http.storage.remove_all(self.folder + "/")
        finally:
            self._store.forget(self.folder + "/")

    def _close_namespace(self, *, renew: bool = True) -> None:
        """End the handle's namespace; in the same call, unless the process holds one already or
        has an HTTPS site (:meth:`Used.drop_spare`), open the next handle's (``renew``): a test
        costs one round trip fewer. That spare is a new namespace, with a folder of its own, that
        no one knows of until a handle takes it."""
        owner, used = self._owner, self._used
        if self._namespace is None or owner is None or self.connection.gone is not None:
            return
        owner.senders.pop(self._namespace, None)
        with self.connection.answering():
            if not renew or used.spare is not None or used.tls_sites:
                self._http.close_namespace(self._namespace)
                return
            folder = used.new_folder()
            shown = _shown(folder, self._mirror)
            token = self._http.renew_namespace(self._namespace, owner.id, shown, used.store.timeout)
            used.spare = Spare(str(token), folder, self._mirror)


class StockServer(ExporterServer):
    """Jumpstarter's stock HttpServer driver on an exporter: it serves files and nothing else.

    It has no namespaces: the URL is the folder the handle serves (the process's mirror of a
    user's directory, or the handle's own folder), and ``stage()`` sends to that same folder, so
    ``url_for(name)`` is ``url + "/" + name`` for every name. Files written into ``root`` after
    the handle started need ``publish()``. The process's live handles of one root share its
    mirror: a name one of them staged there is refused to the others until it stops. Everything
    a RecordingHttpServer adds (the request log, faults, replies, uploads, credentials, HTTPS) is
    refused in one sentence.
    """

    def __init__(self, used: Used, *, mirror: str | None, **kwargs: Any) -> None:
        super().__init__(used, mirror=mirror, **kwargs)
        #: The names ``stage()`` sent into a user's mirror, which ``stop()`` removes from it.
        self._in_mirror: set[str] = set()
        #: Every name the process's live handles staged into ``served``, and the handle of each.
        self._mirror_names = used.in_mirrors.setdefault(self.served, {}) if mirror else {}
        # No namespace to open: one call, so that an exporter gone is its test's error at once.
        with self.connection.answering():
            self._last_port = int(self._http.get_port())

    def _namespace_of(self, used: Used, driver_path: str, spare: Spare | None) -> None:
        return None

    def _recorder_of(self, used: Used, driver_path: str) -> Recorder:
        return cast(
            "Recorder",
            _Refusing(f"the HttpServer driver at {driver_path!r} of exporter {used.connection.name!r}"),
        )

    def _stage_open(self, fd: int, label: str, name: str) -> int:
        """Copy the open file into the folder the URL names: the process's mirror of a user's root,
        or the handle's own. The server's port is not known from that (0)."""
        self._claim(name)
        try:
            self._put(fd, label, f"{self.served}/{name}", spare=True)
        except BaseException:
            if name not in self._in_mirror:
                del self._mirror_names[name]
            raise
        self._in_mirror.add(name)
        return 0

    def _claim(self, name: str) -> None:
        """Hold ``name`` in ``served`` for this handle; a ``FileExistsError`` if another live handle
        of the process holds it, or a folder of it or a name below it, there: it would replace
        that handle's file, or delete it as it stops."""
        others = [other for other, handle in self._mirror_names.items() if handle is not self]
        if name in others:
            raise FileExistsError(
                f"stage(): {name!r} is staged by another live handle of this process in its mirror of "
                f"{str(self.root)!r} on exporter {self.connection.name!r}, which serves it until that "
                "handle stops; stage under another name."
            )
        refuse_beside(name, others, by="another live handle of this process on the same root")
        self._mirror_names[name] = self

    def _holds_anything(self) -> bool:
        return self._wrote_folder or (self.served != self.folder and bool(self._in_mirror))

    def _keep_what_it_linked(self) -> None:
        """Each name staged into a user's mirror, moved into the handle's folder, which
        ``--http-keep`` keeps: the mirror serves the next tests, which did not stage it."""
        self._clear_staged(
            lambda name: self._http.storage.rename(f"{self.served}/{name}", f"{self.folder}/{name}")
        )

    def _remove_what_it_wrote(self) -> None:
        try:
            super()._remove_what_it_wrote()
        finally:
            self._clear_staged(lambda name: self._http.storage.delete(f"{self.served}/{name}"))

    def _clear_staged(self, clear: Callable[[str], object]) -> None:
        """``clear`` each name ``stage()`` sent into a user's mirror and forget it: every name, then
        the first failure is raised."""
        names, self._in_mirror = self._in_mirror, set()
        for name in names:
            del self._mirror_names[name]  # free for the process's other handles of the root
        staged = sorted(names) if self.served != self.folder else []

        def each(name: str) -> None:
            try:
                with self.connection.answering():
                    clear(name)
            finally:
                self._store.forget(f"{self.served}/{name}")

        try:
            clear_each(list(staged), each)  # which empties the list it is given
        finally:
            self._remove_folders_made(staged)

    def _remove_folders_made(self, staged: list[str]) -> None:
        """Remove each folder of the mirror that staging ``staged`` made, deepest first, once empty:
        a folder of ``root`` is the user's, mirrored, and stays; one that holds anything stays."""
        parents = {parent for name in staged for parent in PurePosixPath(name).parents}
        made = [folder for folder in parents if folder.name and not (self.root / folder).is_dir()]
        for folder in sorted(made, key=lambda folder: len(folder.parts), reverse=True):
            # Not empty, or the exporter went: it stays.
            with contextlib.suppress(Exception), self.connection.answering():
                self._http.storage.delete(f"{self.served}/{folder}/")


def _certified(
    used: Used, driver_path: str, host: str, url_host: str | None, certify: Callable[[str], Tls | None]
) -> Tls | None:
    """The certificate of a server whose URLs name ``url_host`` or its ``host`` (None: plain HTTP);
    an ``ExporterError`` for a host no device can use, or TLS asked of the stock driver."""
    name = used.connection.name
    if url_host is None and host in WILDCARDS:
        raise ExporterError(
            f"exporter {name!r}: its HttpServer at {driver_path!r} listens on {host!r}, which is no "
            "address a device can use; give the address the device reaches with --http-url-host."
        )
    tls = certify(url_host or host)
    if tls is not None and used.owner is None:
        raise ExporterError(
            f"exporter {name!r}: the HttpServer driver at {driver_path!r} serves plain HTTP only; "
            f"{_RECORDING} to serve HTTPS."
        )
    return tls


#: What a server without a request log (the stock driver on an exporter) should be instead.
_RECORDING = (
    "put pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config instead of "
    "jumpstarter_driver_http.driver.HttpServer"
)


class _Refusing:
    """The server API of the stock driver, which has none: each call raises the one sentence
    of what it cannot do, and what to use instead."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from .deviceapi import DeviceApiUnavailable

        what = self._what
        if name in ("add_reply", "accept_uploads", "require_auth"):
            method = {"add_reply": "respond"}.get(name, name)
            problem: Exception = DeviceApiUnavailable(
                f"{what} cannot script replies, uploads or credentials; {_RECORDING} to use {method}()."
            )
        elif name == "inject_fault":
            problem = FaultsUnavailable(f"{what} cannot inject network faults; {_RECORDING} to use inject().")
        else:
            problem = RequestLogUnavailable(
                f"{what} keeps no request log; {_RECORDING} to see what the device fetched."
            )

        def refused(*args: Any) -> Any:
            raise problem

        return refused


class _Answering:
    """The server API of an exporter's RecordingHttpServer, wrapped once: each call of its client
    turns "the exporter stopped answering" into one clear error. Ending what a handle set is done
    once the exporter is gone: it went with the exporter."""

    def __init__(self, http: Any, connection: Connection) -> None:
        self._http = http
        self._connection = connection

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self._http, name)
        if name == "forget":  # a reply's handler lives in this process: no exporter to ask
            return call  # type: ignore[no-any-return]

        def answered(*args: Any) -> Any:
            if name == "end" and self._connection.gone is not None:
                return 0
            with self._connection.answering():
                return call(*args)

        return answered
