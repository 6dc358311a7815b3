"""Jumpstarter's HttpServer driver, plus what the plugin needs of it on both backends.

:class:`RecordingHttpServer` keeps a log of the requests it answered and serves only what is
beneath its root, even while a folder in it is swapped for a link (see :mod:`.serving`). It
injects faults (:mod:`.shaping`), scripted replies, uploads and credentials (:mod:`.answering`)
and HTTPS sites (:mod:`.tlssites`), each for one owner's namespace (:mod:`.namespaces`). The
loopback backend runs it in the test's process; lab admins put it in an exporter config instead
of the stock driver::

    export:
      http:
        type: pytest_jumpstarter_http.driver.RecordingHttpServer
        config: {root_dir: /home/lab/jumpstarter-http, host: 203.0.113.1, port: 8080}

and the test reports of pytest-jumpstarter-http then show what the device fetched. The pytest
plugin imports this module only when it starts a loopback server or builds a client of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, field
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread
from jumpstarter.driver import export, exportstream
from jumpstarter.driver.decorators import MARKER_DRIVERCALL, MARKER_MAGIC
from jumpstarter.streams.common import create_memory_stream
from jumpstarter_driver_http.driver import HttpServer
from pydantic import TypeAdapter
from pydantic.dataclasses import dataclass

from .answering import DeviceApi, DeviceApiMiddleware, Written
from .beneath import open_beneath
from .channel import Codec, kind_of
from .deviceapi import AuthSpec, ReplySpec, UploadSpec
from .namespaces import NamespaceError, Namespaces
from .records import API_VERSION, NS, OBJECTS, FaultSpec, TlsSpec, check_name, plugin_version
from .serving import BeneathFiles, Numbered, RequestLog, install, reach_by_port
from .shaping import FaultMiddleware, FaultRegistry
from .tlssites import Sites, lab_certificate, port_range, refused_handshake, server_context

log = logging.getLogger("pytest_jumpstarter_http.driver")

#: Requests kept; the oldest go first.
MAX_REQUESTS = 10_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: The calls of one call channel the server runs at once; the next wait, and the channel with them.
MAX_CALLS = 64
#: Results cross the call channel as they cross a unary call (Jumpstarter's ``encode_value``).
_AS_JSON = TypeAdapter(Any)


@dataclass(kw_only=True, config={"arbitrary_types_allowed": True})
class RecordingHttpServer(HttpServer):
    """HttpServer that records every request it answers and never serves outside its root."""

    #: Seconds a stopping server waits for downloads in flight (aiohttp's default is 60).
    shutdown_grace: float | None = None
    #: A lab's own HTTPS certificate, files on the exporter: its chain (PEM, leaf first, valid for
    #: the host devices reach), its key (default: in the chain file), and the CA that signed it,
    #: which tests hand to the device. Unset, each run serves a certificate of its own test CA.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    #: The ports the runs' HTTPS sites may take, ``8443`` or ``8443-8463``, for a firewall that
    #: opens only those: each process of a run takes one (one more for mutual TLS) for as long as
    #: it holds the server. Unset: any free port.
    tls_ports: str | None = None
    request_log: RequestLog = field(init=False, default_factory=lambda: RequestLog(MAX_REQUESTS))
    #: The network faults tests injected (see :mod:`.shaping`).
    faults: FaultRegistry = field(init=False, default_factory=FaultRegistry)
    #: The scripted replies, upload folders and credentials tests asked for (see :mod:`.answering`).
    device_api: DeviceApi = field(init=False, default_factory=DeviceApi)
    #: The runs that own a folder on this server (its owners), and their handles' URL namespaces
    #: (see :mod:`.namespaces`).
    namespaces: Namespaces = field(init=False)
    #: The sites of the app beside its own: an HTTPS one per owner that asked, keyed ``owner:ID``,
    #: and a loopback namespace's own, keyed by its token (see :mod:`.tlssites`).
    sites: Sites = field(init=False, default_factory=Sites)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.namespaces = Namespaces(self.root_dir)
        #: Port -> the URL path of the namespace a site of its own serves there (the loopback's).
        self._reached: dict[int, str] = {}
        #: Where HTTPS sites go: the configured ports, or any free one (0).
        self._tls_ports: range | int = 0 if self.tls_ports is None else port_range(self.tls_ports)
        self._starting = asyncio.Lock()
        root = Path(self.root_dir)
        self._files = files = BeneathFiles(root, log=self.request_log, namespaces=self.namespaces)
        # Outermost: a request is numbered as it starts, before a fault holds it.
        self.app.middlewares.append(Numbered(self.request_log))
        # Then a delay or a refusal, before the static route looks at anything.
        self.app.middlewares.append(FaultMiddleware(self.faults))
        # Then what a test scripted: credentials, replies, uploads; the rest goes on to the files.
        self.app.middlewares.append(DeviceApiMiddleware(self.device_api))
        self.app.middlewares.append(files)
        self.app.on_cleanup.append(files.on_cleanup)

    @classmethod
    def client(cls) -> str:
        return "pytest_jumpstarter_http.client.RecordingHttpServerClient"

    @export
    async def start(self) -> None:
        # The driver's start() cleans up a running runner first, its sites with it.
        self._forget_sites()
        try:
            await super().start()
        except BaseException:
            # The driver keeps a runner that failed to bind; clean it up or its next start warns.
            if self.runner is not None:
                await self.runner.cleanup()
                self.runner = None
            raise
        if self.shutdown_grace is not None and self.runner is not None:
            # Private, but the only way to bound aiohttp's graceful shutdown of a runner built
            # by the driver; tests/test_private_apis.py fails loudly if it moves.
            self.runner._shutdown_timeout = self.shutdown_grace
        install(self.runner, self.request_log)
        reach_by_port(self.runner, self._reached)

    @export
    def api(self) -> dict[str, Any]:
        """The server API's version and the plugin's, which a client checks before any other call,
        and whether its storage removes what a Jumpstarter session wrote when the session ends
        (``remove_created_on_close``), which ``--http-keep`` cannot keep then."""
        removes = bool(getattr(self.children.get("storage"), "remove_created_on_close", False))
        return {"api": API_VERSION, "version": plugin_version(), "remove_created_on_close": removes}

    @exportstream
    @asynccontextmanager
    async def channel(self) -> AsyncIterator[Any]:
        """This server's calls for one client on one stream (:mod:`.channel`), each answered as its
        unary call would be, concurrently; and the client's owners, which it makes one with ``own``.
        An owner ends with the stream, however the client's connection ends."""
        mine, theirs = create_memory_stream()
        serving = asyncio.ensure_future(_Served(self, mine).run())
        try:
            yield theirs
        finally:
            serving.cancel()
            await mine.aclose()

    async def exported(self, name: str, args: list[Any]) -> Any:
        """Call the exported method ``name`` as Jumpstarter's ``DriverCall`` does."""
        method = getattr(self, name, None)
        if getattr(method, MARKER_DRIVERCALL, None) != MARKER_MAGIC:
            raise NotImplementedError(f"method {name} not found on driver")
        assert method is not None
        if asyncio.iscoroutinefunction(method):
            return await method(*args)
        return await to_thread.run_sync(method, *args)

    @export
    async def start_unless_running(self) -> int:
        """Start the server unless it runs; its port. Never restarts it under someone's downloads."""
        async with self._starting:  # one start for the callers of every connection
            if self.get_port() == 0:
                await self.start()
            return int(self.get_port())

    @export
    async def stop(self) -> None:
        # A stalled response would hold the graceful shutdown for its whole grace period.
        self.faults.clear_all()
        self.device_api.clear_all()
        try:
            await super().stop()
        finally:
            self._forget_sites()

    def _forget_sites(self) -> None:
        """Forget the sites of a runner that closed them."""
        self.sites.forget_all()
        self._reached.clear()

    async def serve_namespace(self, token: str, port: int, tls: TlsSpec | None = None) -> int:
        """Serve the namespace ``token`` at the root of a site of its own, on ``port`` (0: any free
        one), over HTTPS with ``tls``; the port. It closes when the namespace ends
        (:meth:`end_namespace`). For the loopback backend, whose URLs have no prefix; never over
        the wire, where the port is the exporter's to give."""
        if self.runner is None:
            raise RuntimeError("serve_namespace(): the HTTP server is not running; start it first.")
        url = f"/{NS}/{token}"
        context = None
        if tls is not None:  # a refused handshake names no path: log it at the namespace's URL
            context = server_context(tls, lambda words: self._log_refused([url + "/"], words))
        bound = await self.sites.add(token, self.runner, self.host, port, context)
        self._reached[bound] = url
        return bound

    def port_of(self, token: str) -> int:
        """The port of the namespace's own site that opened last and still listens (0: none)."""
        live = self.sites.ports(token)
        return live[-1] if live else 0

    async def end_namespace(self, token: str) -> None:
        """End the namespace ``token`` (:meth:`close_namespace`) and its own sites: each of their
        connections ends after its request, a download in flight given ``shutdown_grace``."""
        self.close_namespace(token)  # first: its faults release the responses they stall
        ports = await self.sites.close(token)
        runner = self.runner
        if runner is not None and ports:
            await asyncio.sleep(0)  # as the runner's cleanup: requests accepted so far start first
            await self._end_connections(runner.server, ports)
        for port in ports:
            if self._reached.get(port) == f"/{NS}/{token}":  # the port may be another's already
                del self._reached[port]
        self._files.close()  # the folders it showed: the next request opens what it needs again

    async def _end_connections(self, server: Any, ports: set[int]) -> None:
        """End the connections that came in on ``ports``, each after its request."""
        ended = [each for each in server.connections if _local_port(each) in ports]
        for each in ended:
            each.close()
        await asyncio.gather(*(each.shutdown(self.shutdown_grace) for each in ended))

    async def own(self, folder: str, keep: bool = False) -> AsyncIterator[str | dict[str, Any]]:
        """Own ``folder`` (below ``pytest-jumpstarter-http/runs/``) for as long as this is iterated:
        a run's call channel does (``own``), the loopback's process does itself.

        Yields the owner's id once, then each name a device asked of a namespace of the owner
        that lacks it (``{"namespace": ..., "name": ...}``), which the owner sends and answers
        with :meth:`answer`, and each request a handler of the owner's answers (``{"namespace",
        "call", "reply", "request"}``), which it answers with :meth:`answer_call`. When it ends
        (the run's connection ended, however), the owner's namespaces and their faults end, and
        its folder is removed unless ``keep``.
        """
        owner = self.namespaces.add_owner(str(folder), keep=bool(keep))
        try:
            yield owner.id
            while True:  # until Jumpstarter cancels the stream
                yield await owner.wants.get()
        finally:
            ended = set(self.namespaces.end_owner(owner))
            self.faults.clear_all(ended)
            self.device_api.clear_all(ended)
            # In a thread, unawaited: a run's images take a while to remove, and every download of
            # every other run is answered on this loop meanwhile.
            asyncio.get_running_loop().run_in_executor(None, self.namespaces.remove_folder, owner)
            await self.sites.close(_owner_key(owner.id))

    @export
    async def serve_tls(self, owner: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Serve this server over HTTPS too, with ``spec`` (a ``TlsSpec`` as a dict) or the lab's
        certificate files, on a port of its own, for as long as ``owner`` holds the server. Returns
        ``port`` and ``ca_pem``, the lab's CA (None: ``spec``'s CA). The plain server is never touched."""
        self.namespaces.owner(str(owner))  # a NamespaceError for an owner that ended
        files = (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        tls, ca_pem = lab_certificate(TlsSpec.from_dict(spec), *files)
        if self.runner is None:
            raise RuntimeError("serve_tls(): the HTTP server is not running; start it first.")
        context = server_context(tls, functools.partial(self._refused, str(owner)))
        key = _owner_key(str(owner))
        port = await self.sites.add(key, self.runner, self.host, self._tls_ports, context)
        try:
            self.namespaces.owner(str(owner))  # it may have ended while its site started
        except NamespaceError:
            await self.sites.close(key)
            raise
        return {"port": port, "ca_pem": ca_pem}

    def _refused(self, owner: str, words: str) -> None:
        """Log a handshake an HTTPS site of ``owner`` refused, which names no URL: in each namespace
        the owner ``owner`` has open (its site serves them all)."""
        self._log_refused([f"/{NS}/{token}/" for token in self.namespaces.open_of(owner)], words)

    def _log_refused(self, paths: list[str], words: str) -> None:
        seq = self.request_log.start()
        for path in paths:
            self.request_log.add(refused_handshake(path, words, seq))

    @export
    def open_namespace(self, owner: str, folders: list[str], asks: float = 0.0) -> str:
        """A new URL namespace of ``owner`` showing its ``folders``, below ``pytest-jumpstarter-http/ns/``.

        ``asks``: a name it lacks is asked of the owner, whose local folder it serves, and the
        request waits that many seconds at most for it (0: never asked, a 404 at once).
        """
        return self.namespaces.open(str(owner), [str(folder) for folder in folders], float(asks))

    @export
    def answer(self, namespace: str, name: str, sent: bool) -> None:
        """The owner of ``namespace`` sent the name a device asked for (``link``), or has none."""
        self.namespaces.settle(str(namespace), str(name), bool(sent))

    @export
    async def push(self, digest: str, src: Any) -> bool:
        """Receive a local file the caller streams as the object ``digest``, hashed as it arrives
        (nothing is read twice) and written in a thread; it becomes ``objects/<digest>`` only if
        it is that content. Whether it was: a file changed while it was sent is not."""
        digest = _sha256(digest)
        top = os.open(self.root_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            written = Written(top, f"{OBJECTS}/{digest}")
        finally:
            os.close(top)
        try:
            async with self.resource(src) as chunks:
                await written.take(chunks, [1 << 62])
            if written.sha256 != digest:
                return False
            written.keep()
            return True
        finally:
            written.drop()

    @export
    async def holds(self, digest: str) -> bool:
        """Whether the object ``digest`` is here and still that content, hashed in a thread: one
        call where the storage's would be two (``exists``, ``hash``)."""
        path = f"{OBJECTS}/{_sha256(digest)}"
        return await to_thread.run_sync(_hashes_to, self.root_dir, path, digest)

    @export
    def link(self, namespace: str, name: str, digest: str) -> int:
        """Serve the object ``digest`` (which the caller sent, and verified once) as ``name`` in
        ``namespace``, by reference: a repeated stage() of one content copies nothing. The
        server's port (0: stopped), so that the caller makes the name's URL with no other call."""
        name = check_name(str(name), where="link() name")
        self.namespaces.link(str(namespace), name, f"{OBJECTS}/{_sha256(digest)}")
        return int(self.get_port())

    @export
    def close_namespace(self, namespace: str) -> None:
        """End a namespace and the faults injected through it."""
        self.namespaces.close(str(namespace))
        self.faults.clear_all({str(namespace)})
        self.device_api.clear_all({str(namespace)})

    @export
    def renew_namespace(self, namespace: str, owner: str, folders: list[str], asks: float = 0.0) -> str:
        """End ``namespace`` (:meth:`close_namespace`), then open a new one of ``owner``
        (:meth:`open_namespace`): a handle's teardown readies the next handle's namespace, so that
        a test costs one round trip fewer."""
        self.close_namespace(namespace)
        return str(self.open_namespace(owner, folders, asks))

    def _scoped(self, namespace: str | None, places: Sequence[str]) -> str:
        """The namespace a call over the wire acts in: open, and every one of ``places`` (URL paths,
        or globs of them) below its URL; one run never acts on another's requests."""
        token = str(namespace)
        if namespace is None or not self.namespaces.alive(token):
            raise NamespaceError(f"no namespace {namespace!r} on this server; it ended or never was")
        url = f"/{NS}/{token}"
        outside = [place for place in places if place != url and not place.startswith(url + "/")]
        if outside or not places:
            raise NamespaceError(f"{(outside or ['nothing'])[0]!r} is not below the namespace's URL {url!r}")
        return token

    def _while_open(self, token: str, made: str) -> str:
        """``made`` (an id), ended at once if its namespace ended while it was being made."""
        if not self.namespaces.alive(token):
            self._registry(made).clear(made, token)
            raise NamespaceError(f"no namespace {token!r} on this server; it ended while it was set")
        return made

    @export
    def get_requests(self, start: int, prefix: str = "") -> tuple[int, list[dict[str, Any]]]:
        """How many requests started so far, and those numbered ``start`` or later whose raw path
        starts with ``prefix``, a namespace's URL path: one run never reads another's."""
        _within_a_namespace(str(prefix))
        started = self.request_log.started  # numbers cross Jumpstarter's wire as floats
        entries = self.request_log.since(int(start), str(prefix))
        return started, [entry.as_dict() for entry in entries]

    @export
    def get_in_flight(self, prefix: str) -> list[dict[str, Any]]:
        """The downloads under way now below ``prefix``, a namespace's URL path: method, path,
        client, bytes sent and total."""
        _within_a_namespace(str(prefix))
        in_flight = self.request_log.in_flight()
        return [asdict(progress) for progress in in_flight if progress.path.startswith(str(prefix))]

    @export
    def inject_fault(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Apply a fault (a ``FaultSpec`` as a dict) to the requests it matches, below the URL of
        ``namespace`` only, until it ends; return its id."""
        fault = FaultSpec.from_dict(spec)
        token = self._scoped(namespace, fault.patterns)
        return self._while_open(token, self.faults.add(fault, token))

    @export
    def add_reply(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Answer with a reply (a ``ReplySpec`` as a dict) until it or ``namespace`` ends; its id."""
        reply = ReplySpec.from_dict(spec)
        token = self._scoped(namespace, [reply.target])
        handler = functools.partial(self.namespaces.call, token) if reply.handler_wait else None
        return self._while_open(token, self.device_api.add(reply, token, handler))

    @export
    def answer_call(self, namespace: str, call: str, answer: dict[str, Any]) -> None:
        """The owner of ``namespace`` answered a request its handler was handed (``own``) with
        ``answer``, an ``HttpResponse`` as a dict."""
        self.namespaces.settle(str(namespace), f"call:{call}", dict(answer))

    @export
    def get_body(self, seq: int, prefix: str) -> str:
        """What the server read of the body of request ``seq`` below ``prefix``, a namespace's URL
        path, in base64 (empty: none kept)."""
        _within_a_namespace(str(prefix))
        return base64.b64encode(self.request_log.body(int(seq), str(prefix))).decode()

    @export
    def require_auth(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Refuse requests below the spec's path without its credentials (an ``AuthSpec`` as a
        dict); its id."""
        auth = AuthSpec.from_dict(spec)
        token = self._scoped(namespace, [auth.target])
        return self._while_open(token, self.device_api.add(auth, token))

    @export
    def accept_uploads(self, spec: dict[str, Any], namespace: str) -> str:
        """Store uploads below the spec's prefix (an ``UploadSpec`` as a dict) in a folder of the
        namespace's owner, until it or ``namespace`` ends; its id."""
        upload = UploadSpec.from_dict(spec)
        token = self._scoped(namespace, [upload.target])
        folder = self.namespaces.folder_of(token)
        api_id = self.device_api.accept(upload, token, Path(self.root_dir), f"{folder}/uploads")
        return self._while_open(token, api_id)

    def _registry(self, ident: str) -> FaultRegistry | DeviceApi:
        return self.faults if ident.startswith("fault-") else self.device_api

    @export
    def end(self, ident: str, namespace: str | None = None) -> int:
        """End a fault, reply, upload folder or credential set through ``namespace``; how often it
        acted (0 if it ended already). Another namespace's is none of the caller's: 0, and it goes on."""
        return self._registry(str(ident)).clear(str(ident), _token(namespace))

    @export
    def hits(self, ident: str, namespace: str | None = None) -> int:
        """How many requests a fault, reply, upload folder or credential set through ``namespace``
        acted on so far; a ``KeyError`` once it ended, or for another namespace's."""
        return self._registry(str(ident)).hits(str(ident), _token(namespace))

    @export
    def get_uploads(self, api_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The uploads an upload folder of ``namespace`` stored, in arrival order; ``stored`` is each
        one's path below the root, for the driver's storage to read."""
        return self.device_api.uploads(str(api_id), _token(namespace))

    @export
    def requests_started(self) -> int:
        """How many requests started so far: where a new request window starts."""
        return self.request_log.started


def _sha256(digest: str) -> str:
    if not _SHA256.fullmatch(str(digest)):
        raise ValueError(f"{str(digest)[:80]!r} is no sha256; give 64 lowercase hex digits")
    return str(digest)


class _Served:
    """One client's call channel on the server (:mod:`.channel`): a task per call, at most
    :data:`MAX_CALLS` at once, whose reply goes back when it is done, and one per owner it made;
    they all end with the stream."""

    def __init__(self, server: RecordingHttpServer, stream: Any) -> None:
        self._server = server
        self._stream = stream
        self._codec = Codec()
        self._sending = asyncio.Lock()
        self._tasks: set[asyncio.Future[None]] = set()
        self._calls = asyncio.Semaphore(MAX_CALLS)

    async def run(self) -> None:
        try:
            async for chunk in self._stream:
                for call, name, args in self._codec.decode(chunk):
                    await self._calls.acquire()  # the loop serves everyone else meanwhile
                    self._start(self._answer(int(call), str(name), list(args))).add_done_callback(
                        lambda _: self._calls.release()
                    )
        except Exception:  # a line it cannot read: the client sees the channel end, and goes on without
            log.warning("a client's call channel sent what it cannot read; it ends", exc_info=True)
            await self._stream.aclose()
        finally:  # the owner's task with the others: the owner ends with its stream
            for task in list(self._tasks):
                task.cancel()

    def _start(self, coroutine: Any) -> asyncio.Future[None]:
        task: asyncio.Future[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(self, call: int, name: str, args: list[Any]) -> None:
        try:
            if name == "own":
                result = await self._own(*args)
            else:
                result = _AS_JSON.dump_python(await self._server.exported(name, args), mode="json")
            line = Codec.line([call, result])  # an answer too long fails alone, as a unary one does
        except Exception as exc:
            line = Codec.line([call, None, kind_of(exc), str(exc)])
        await self._send(line)

    async def _own(self, folder: str, keep: bool) -> str:
        """Make the client an owner (``own``) for as long as the channel lasts; its id. What the
        server asks of the owner goes to the client as ``[0, owner, request]``."""
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._start(self._serve_owner(str(folder), bool(keep), ready))
        return await ready

    async def _serve_owner(self, folder: str, keep: bool, ready: asyncio.Future[str]) -> None:
        try:
            async for item in self._server.own(folder, keep):
                if not ready.done():
                    ready.set_result(str(item))
                else:
                    await self._send(Codec.line([0, ready.result(), item]))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def _send(self, line: bytes) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the client left
            async with self._sending:  # the lines of one zlib stream go in the order they were made
                for chunk in self._codec.chunks(line):
                    await self._stream.send(chunk)


def _hashes_to(root: str, path: str, digest: str) -> bool:
    """Whether the regular file ``path`` below ``root`` has the sha256 ``digest``."""
    try:  # O_NONBLOCK: a FIFO planted there is opened, and refused, without waiting for a writer
        fd = open_beneath(root, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder or a FIFO planted there
            return False
        with os.fdopen(fd, "rb", closefd=False) as file:
            return hashlib.file_digest(file, "sha256").hexdigest() == digest
    finally:
        os.close(fd)


def _local_port(connection: Any) -> int | None:
    """The port a connection came in on; None for one that closed (a TLS one no longer knows)."""
    transport = connection.transport
    sockname = None if transport is None else transport.get_extra_info("sockname")
    return None if not sockname else int(sockname[1])


def _owner_key(owner: str) -> str:
    """The key of an owner's HTTPS site among the server's sites (a namespace's is its token)."""
    return f"owner:{owner}"


def _token(namespace: str | None) -> str | None:
    return None if namespace is None else str(namespace)


def _within_a_namespace(path: str) -> str:
    """``path`` if it is below the URL of a namespace; a ``NamespaceError`` otherwise."""
    if not path.startswith(f"/{NS}/") or path.count("/") < 4:
        raise NamespaceError(f"{path!r} is below no namespace's URL; give one below /{NS}/TOKEN/")
    return path
