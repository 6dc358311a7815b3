"""Serve the driver's static route from files opened beneath their root, never by name twice.

aiohttp's static route checks a resolved path and then opens it again by name, so a folder
swapped for a link in between serves a file from outside the root. :class:`BeneathFiles`
answers the route's GET and HEAD requests itself: it opens the name with
:func:`~pytest_jumpstarter_http.beneath.open_beneath` and sends that open file through
:class:`ServedFile`, a ``FileResponse`` pointed at ``/proc/self/fd/N``, keeping every answer of
the static route (ranges, ETag, 304, 403 for folders and special files, 404) as it was.

``ServedFile`` also counts the body bytes it hands to the socket, for the request log, and is
the one place a body shaper (``SHAPER_KEY``) replaces ``sendfile``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import stat
import sys
import threading
import time
import weakref
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

# This module is imported where aiohttp runs: its names are imported once, not per request.
from aiohttp import web
from aiohttp.web import FileResponse, RequestKey, Response, StreamResponse
from aiohttp.web_fileresponse import CONTENT_TYPES, ENCODING_EXTENSIONS, FALLBACK_CONTENT_TYPE
from aiohttp.web_urldispatcher import StaticResource

from .beneath import PROBE, EscapesRoot, OpenFolder, open_beneath
from .namespaces import Namespaces
from .offload import CHUNK, send_turn
from .records import OBJECTS, Fields, HttpRequest, Progress

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.typedefs import Handler
    from aiohttp.web import Request

__all__ = ["SHAPER_KEY", "BeneathFiles", "BodyShaper", "ServedFile"]

#: A body this small is read on the loop and sent with its headers in one write (a page-cache read).
SMALL: Final = 64 << 10
#: Bytes per read of a body sent without ``sendfile`` (over TLS, above all).
COPY_CHUNK: Final = 1 << 20
#: How an open descriptor is named for a second open that looks nothing up by name.
_FD_DIR: Final = "/proc/self/fd" if sys.platform == "linux" else "/dev/fd"
#: Errors of a name that is not there, or not a file: the next root may hold it.
_ABSENT: Final = (errno.ENOENT, errno.ENOTDIR)


class RequestLog:
    """Requests in the order they finished; appended from the server's loop, read from tests.

    Requests are numbered from 0 for the server's whole life in the order they *started*
    (:meth:`start`), which is what a test's window is counted in; past ``limit`` the oldest
    entries go. A file download is in ``in_flight()`` from its response's start until its body
    is sent or cut; its entry follows.
    """

    def __init__(self, limit: int | None = None) -> None:
        #: Each entry, with how many requests had started when it was added.
        self._entries: deque[tuple[int, HttpRequest]] = deque(maxlen=limit)
        #: How many requests started so far: the number the next one gets.
        self.started = 0
        self._lock = threading.Lock()
        self._running: dict[int, Progress] = {}
        #: Request number -> the part of its body the server read, oldest first.
        self._bodies: dict[int, bytes] = {}
        self._body_bytes = 0

    def start(self) -> int:
        """Number a request that starts now."""
        with self._lock:
            seq = self.started
            self.started += 1
            return seq

    def begin(self, progress: Progress) -> None:
        with self._lock:
            self._running[id(progress)] = progress

    def end(self, progress: Progress) -> None:
        with self._lock:
            self._running.pop(id(progress), None)

    def in_flight(self) -> list[Progress]:
        """The downloads under way now, oldest first (live objects: read, do not keep)."""
        with self._lock:
            return list(self._running.values())

    def add(self, entry: HttpRequest, body: bytes = b"") -> None:
        """Log ``entry``, and keep the part of its body the server read (the newest 16 MiB of them)."""
        with self._lock:
            self._entries.append((self.started, entry))
            if body:
                self._bodies[entry.seq] = body
                self._body_bytes += len(body)
                while self._body_bytes > BODIES_KEPT:
                    self._body_bytes -= len(self._bodies.pop(next(iter(self._bodies))))

    def body(self, seq: int, prefix: str = "") -> bytes:
        """What the server read of the body of request ``seq`` below ``prefix`` (empty: none kept)."""
        with self._lock:
            found = [
                entry for _, entry in self._entries if entry.seq == seq and entry.path.startswith(prefix)
            ]
            return self._bodies.get(seq, b"") if found else b""

    def since(self, start: int, prefix: str = "") -> list[HttpRequest]:
        """The kept entries of requests numbered ``start`` or later whose raw path starts with ``prefix``.

        Read from the newest back: an entry added before request ``start`` started, and every
        entry older than it, is of an earlier request. A test's window costs what is in it, not
        the whole log of a session server.
        """
        found = []
        with self._lock:
            for started, entry in reversed(self._entries):
                if started <= start:
                    break
                if entry.seq >= start and entry.path.startswith(prefix):
                    found.append(entry)
        found.reverse()
        return found


class BodyShaper(Protocol):
    """Sends a response body its own way (slowly, cut, ...); returns the body bytes it sent."""

    async def send(self, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int) -> int: ...


#: Request-mapping key of a :class:`BodyShaper` that sends the body instead of ``sendfile``.
SHAPER_KEY: Final = RequestKey("pytest_jumpstarter_http.shaper", BodyShaper)
#: Request-mapping key of the :class:`~pytest_jumpstarter_http.records.Progress` of a file
#: response's body, set when it starts (also ``ServedFile.progress``).
PROGRESS_KEY: Final = RequestKey("pytest_jumpstarter_http.progress", Progress)
#: Request-mapping key of the request's number in its server's log, given as it starts.
SEQ_KEY: Final = RequestKey("pytest_jumpstarter_http.seq", int)
#: Request-mapping key of the label of the fault a request hit, for the request log.
FAULT_KEY: Final = RequestKey("pytest_jumpstarter_http.fault", str)
#: Request-mapping key of the part of the body the server read (``BODY_KEPT`` bytes at most),
#: and whether the body was longer.
BODY_KEY: Final = RequestKey("pytest_jumpstarter_http.body", tuple[bytes, bool])
#: The bodies' bytes a server's request log keeps, the newest first.
BODIES_KEPT: Final = 16 << 20
#: Request-mapping key set when a fault answered the request with its own status.
INJECTED_KEY: Final = RequestKey("pytest_jumpstarter_http.injected", bool)
#: Request-mapping key of the URL path of the namespace a request reached by a port of its own,
#: which the server put before the path the device sent (see ``reach_by_port``).
REACHED_KEY: Final = RequestKey("pytest_jumpstarter_http.reached", str)
#: Request-mapping key of what a test's scripted answers did with the request (``reply``...).
ANSWERED_BY_KEY: Final = RequestKey("pytest_jumpstarter_http.deviceapi", str)


class Numbered:
    """The outermost middleware: numbers each request as it starts (see ``RequestLog.start``)."""

    __middleware_version__ = 1

    def __init__(self, log: RequestLog) -> None:
        self.log = log

    async def __call__(self, request: Request, handler: Handler) -> StreamResponse:
        request[SEQ_KEY] = self.log.start()
        return await handler(request)


class ServedFile(FileResponse):
    """A ``FileResponse`` of a file already open as ``fd``, which it closes when done.

    ``name`` is the name asked for, below ``root``. As aiohttp, which serves the resolved path,
    the Content-Type comes from the file's real name (a link's target), and a ``.gz``/``.br``
    sibling is looked for beside it, again beneath the root.
    """

    def __init__(
        self, fd: int, name: str, *, root: OpenFolder, chunk_size: int, log: RequestLog | None = None
    ) -> None:
        super().__init__(f"{_FD_DIR}/{fd}", chunk_size=chunk_size)
        self._fd = fd
        self._name = name
        self._root = root
        self._log = log
        #: Bytes sent and completion of the body, for the request log; None until prepared.
        self.progress: Progress | None = None
        self._fds = [fd]
        # Closes the descriptors even when the response is dropped unsent (the handler cancelled).
        self._release = weakref.finalize(self, _close_all, self._fds)

    def _get_file_path_stat_encoding(
        self, accept_encoding: str
    ) -> tuple[Path | None, os.stat_result, str | None]:
        relpath = _real_name(self._fd, self._root) or self._name
        opened = self._path
        self._path = Path(relpath)  # FileResponse guesses the Content-Type from it, not from N
        for extension, encoding in ENCODING_EXTENSIONS.items():
            if encoding not in accept_encoding:
                continue
            try:  # aiohttp takes a sibling only if it is a regular file, not a link
                fd = open_beneath(self._root, relpath + extension, PROBE | os.O_NOFOLLOW)
            except (OSError, ValueError):
                continue
            self._fds.append(fd)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return Path(f"{_FD_DIR}/{fd}"), st, encoding
        st = os.fstat(self._fd)
        return opened if stat.S_ISREG(st.st_mode) else None, st, None

    async def prepare(self, request: Any) -> AbstractStreamWriter | None:
        if self.prepared:  # FileResponse would look the file up and send it again
            return await StreamResponse.prepare(self, request)
        progress = self.progress = request[PROGRESS_KEY] = Progress(
            request.method, request.raw_path, str(request.remote)
        )
        if self._log is not None:
            self._log.begin(progress)
        started = asyncio.get_running_loop().time()
        try:
            writer = await self._prepare_here(request)
            progress.complete = progress.sent >= (progress.total or 0)  # HEAD, 304, 416: no body
            return writer
        except BaseException as exc:
            # aiohttp logs a response cut by ConnectionError itself; one cancelled (the server
            # stopping, or handler_cancellation) would go unrecorded. Its duration counts from
            # the response's start, the request's own start being aiohttp's private state.
            if not isinstance(exc, ConnectionError):
                _log_access(request, self, asyncio.get_running_loop().time() - started)
            raise
        finally:
            if self._log is not None:
                self._log.end(progress)
            self._release()

    async def _prepare_here(self, request: Any) -> AbstractStreamWriter | None:
        """``FileResponse.prepare`` with its file work on the loop, not in two executor hops.

        The file is already open beneath its root: what is left (a ``.gz`` sibling looked up
        with O_PATH, ``fstat``, a reopen of the open file, its close) reads no data and does not
        block, and the hops cost more than a small file's whole answer (issue 19). The answers
        are aiohttp's own: its ``_make_response`` and ``_prepare_open_file`` decide them.
        """
        from aiohttp import hdrs
        from aiohttp.web_fileresponse import _FileResponseResult

        accept_encoding = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
        try:
            result, fobj, st, encoding = self._make_response(request, accept_encoding)
        except PermissionError:
            self.set_status(web.HTTPForbidden.status_code)
            return await StreamResponse.prepare(self, request)
        except OSError:
            self.set_status(web.HTTPNotFound.status_code)
            return await StreamResponse.prepare(self, request)
        if result is _FileResponseResult.NOT_ACCEPTABLE:
            self.set_status(web.HTTPForbidden.status_code)
            return await StreamResponse.prepare(self, request)
        if result is _FileResponseResult.PRE_CONDITION_FAILED:
            return await self._precondition_failed(request)
        if result is _FileResponseResult.NOT_MODIFIED:
            return await self._not_modified(request, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)
        assert fobj is not None
        with fobj:
            return await self._prepare_open_file(request, fobj, st, encoding)

    async def _sendfile(self, request: Any, fobj: IO[Any], offset: int, count: int) -> AbstractStreamWriter:
        from aiohttp.web_fileresponse import NOSENDFILE

        progress = request[PROGRESS_KEY]
        progress.total = count
        writer = await StreamResponse.prepare(self, request)
        assert writer is not None
        shaper = request.get(SHAPER_KEY)
        if shaper is not None:
            progress.sent = await shaper.send(writer, fobj, offset, count)
            return writer
        if count <= SMALL:
            # One write, headers and body together: sendfile after the headers costs a send more.
            await writer.write(os.pread(fobj.fileno(), count, offset))
            progress.sent = count
            await StreamResponse.write_eof(self)
            return writer
        # asyncio "sends" a file over TLS by its own fallback, at a seventh of what aiohttp's writer
        # does here (bench/tlsfile.py), so a TLS body goes to the writer at once.
        plain = not (NOSENDFILE or self.compression or _encrypted(request))
        if not plain or not await self._send_chunks(request, fobj, offset, count):
            await self._copy(request, writer, fobj, offset, count)
        if progress.sent < count:
            # The file shrank under us, and the body is short of its Content-Length: end the
            # connection after it, or the client waits for the rest until it gives up.
            self.force_close()
        await StreamResponse.write_eof(self)
        return writer

    async def _send_chunks(self, request: Any, fobj: IO[Any], offset: int, count: int) -> bool:
        """``sendfile`` the body in chunks, counting them; False where the loop cannot and nothing went.

        A body of a chunk or more is copied by worker threads (:mod:`.offload`) whenever the
        transport holds nothing unsent; a smaller one, or what follows bytes still in the
        transport, by the loop's own ``sendfile``, which waits for the transport to empty first.
        """
        transport = request.transport
        sock = _socket_of(transport) if count >= CHUNK else None
        going: bool | None = True
        while going and request[PROGRESS_KEY].sent < count:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("Connection lost")
            if sock is not None and not transport.get_write_buffer_size():
                going = await self._send_turn(request, sock, fobj, offset, count)
            else:
                going = await self._send_on_loop(request, fobj, offset, count)
        return going is not None

    async def _send_turn(
        self, request: Any, sock: int, fobj: IO[Any], offset: int, count: int
    ) -> bool | None:
        """One turn of the worker threads' copying; whether to go on (False: the file shrank under
        us), None if ``sendfile`` refused the very first bytes."""
        progress = request[PROGRESS_KEY]
        try:
            sent, full = await send_turn(
                sock, fobj.fileno(), offset + progress.sent, count - progress.sent, progress
            )
        except ConnectionError:
            raise
        except OSError:
            if progress.sent:
                raise
            return None  # as the loop's sendfile: a file it cannot send goes the copying way
        return full or sent > 0

    async def _send_on_loop(self, request: Any, fobj: IO[Any], offset: int, count: int) -> bool | None:
        """One chunk by the loop's ``sendfile``; whether to go on (False: the file shrank under us),
        None if the loop cannot send files and nothing went."""
        progress = request[PROGRESS_KEY]
        transport = request.transport
        at = offset + progress.sent
        try:
            sent = await asyncio.get_running_loop().sendfile(
                transport, fobj, at, min(CHUNK, count - progress.sent)
            )
        except NotImplementedError:
            if progress.sent:
                raise
            return None
        except BaseException as exc:
            _count_partial_send(progress, fobj, at)
            if isinstance(exc, RuntimeError) and transport.is_closing():
                # asyncio's "Transport is closing": the client went away between two chunks.
                raise ConnectionResetError("Connection lost") from None
            raise
        progress.sent += sent
        return sent > 0

    async def _copy(
        self, request: Any, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int
    ) -> None:
        """aiohttp's way without ``sendfile`` (TLS, compression, AIOHTTP_NOSENDFILE), counting."""
        progress = request[PROGRESS_KEY]
        loop = asyncio.get_running_loop()
        # Larger reads than the static route's 256 KiB: each is a hop to a thread, and over TLS
        # 1 MiB reads served 1.2 to 1.5 times as fast (bench/tlsfile.py).
        size = max(self._chunk_size, COPY_CHUNK)
        chunk = await loop.run_in_executor(None, self._seek_and_read, fobj, offset, min(size, count))
        while chunk:
            await writer.write(chunk)
            progress.sent += len(chunk)
            if progress.sent >= count:
                break
            chunk = await loop.run_in_executor(None, fobj.read, min(size, count - progress.sent))
        await writer.drain()


class BeneathFiles:
    """The middleware: answers GET/HEAD of the static route from ``root``.

    A name in a namespace of ``namespaces`` is looked for in the folders the namespace shows,
    first holder wins. Each folder is opened once, on first use, and closed by :meth:`close`
    (added to the app's ``on_cleanup`` by its maker, or called directly).
    """

    __middleware_version__ = 1

    def __init__(
        self, root: Path, *, log: RequestLog | None = None, namespaces: Namespaces | None = None
    ) -> None:
        self.root = root
        self.log = log
        self.namespaces = namespaces
        self._held: dict[Path, OpenFolder] = {}
        self._lock = threading.Lock()

    async def __call__(self, request: Request, handler: Handler) -> StreamResponse:
        route = request.match_info.route
        resource = route.resource
        if request.method not in ("GET", "HEAD") or not isinstance(resource, StaticResource):
            return await handler(request)
        name = request.match_info["filename"]
        if name.startswith("/"):  # absolute, as the static route sees it: //host/share would be a UNC path
            raise web.HTTPNotFound()
        found = await self._found(name)
        if isinstance(found, web.StreamResponse):
            return found
        fd, name, root = found
        return self._answer(request, fd, name, root, resource._chunk_size)

    async def _found(self, name: str) -> tuple[int, str, OpenFolder] | web.StreamResponse:
        """``name`` opened (O_PATH), with the name it was found as (a folder URL's index.html);
        or the answer for a name that cannot be served."""
        if not name or name.endswith("/"):  # a folder URL: its index.html, as nginx serves it
            index = await self._index(name)
            if index is not None:
                return index
        try:
            # On the loop, not in an executor: an O_PATH lookup reads no data, and the thread hop
            # cost about 0.3 ms of a small file's 2.5 ms GET here.
            fd, root = await self._open(name)
        except PermissionError:
            raise web.HTTPForbidden() from None  # a folder on the way may not be searched
        except (EscapesRoot, ValueError):
            raise web.HTTPNotFound() from None
        except OSError as exc:
            if exc.errno not in _ABSENT:  # ENAMETOOLONG, ELOOP: no such file to serve either
                raise web.HTTPNotFound() from None
            # What the static route answers for a missing file: FileResponse's bodiless 404.
            return web.StreamResponse(status=web.HTTPNotFound.status_code)
        return fd, name, root

    async def _index(self, folder: str) -> tuple[int, str, OpenFolder] | None:
        """The ``index.html`` of the folder URL ``folder`` (ending in ``/``, or the root's ``""``),
        opened, with its name; None if it has none (a name that is no folder: a file's other spelling)."""
        name = f"{folder}index.html"
        try:
            fd, root = await self._open(name)
        except (OSError, ValueError):
            return None
        return fd, name, root

    def _answer(
        self, request: Request, fd: int, name: str, root: OpenFolder, chunk_size: int
    ) -> StreamResponse:
        """The answer for the opened ``fd``: a folder asked without its slash is redirected to the
        URL with it (its index.html is then served, if it has one), any other folder is 403; else
        the file's."""
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            path, _, query = request.raw_path.partition("?")
            # As the device asked: a namespace reached by its own port has no prefix in its URLs.
            path = path.removeprefix(request.get(REACHED_KEY, ""))
            if name and not path.endswith("/"):
                # "/sub/." is "/sub/"; "//sub" is "/sub/", not a URL of the host "sub".
                target = "/" + posixpath.normpath(path).lstrip("/")
                target += "" if target.endswith("/") else "/"
                raise web.HTTPMovedPermanently(target + ("?" + query if query else ""))
            raise web.HTTPForbidden()  # show_index=False
        if _plain(request, st):
            small = _small_answer(fd, name, root, st)
            if small is not None:
                return small
        return ServedFile(fd, name, root=root, chunk_size=chunk_size, log=self.log)

    async def _open(self, name: str) -> tuple[int, OpenFolder]:
        """The name opened (O_PATH); one a namespace lacks is asked of its owner first, once."""
        try:
            return self._lookup(name)
        except OSError as exc:
            if exc.errno not in _ABSENT or self.namespaces is None or not await self.namespaces.ask(name):
                raise
        return self._lookup(name)

    def _places(self, name: str) -> list[tuple[Path, str]]:
        """Where the URL name may be: the root, or a namespace's places."""
        shown = self.namespaces.resolve(name) if self.namespaces is not None else None
        return [(self.root, name)] if shown is None else shown

    def _lookup(self, name: str) -> tuple[int, OpenFolder]:
        """The name opened (O_PATH) in the first place that holds it."""
        absent: OSError | None = None
        for path, place in self._places(name):
            try:
                root = self._root(path)
                return open_beneath(root, place, PROBE), root
            except OSError as exc:
                if exc.errno not in _ABSENT:
                    raise
                absent = absent or exc
        raise absent or FileNotFoundError(errno.ENOENT, "no root to serve from", name)

    def _root(self, path: Path) -> OpenFolder:
        with self._lock:
            root = self._held.get(path)
            if root is None:
                root = self._held[path] = OpenFolder(path)
            return root

    def close(self) -> None:
        """Close the folders held open; the next request opens them again."""
        with self._lock:
            held, self._held = self._held, {}
        for root in held.values():
            root.close()

    async def on_cleanup(self, app: object) -> None:
        """For ``app.on_cleanup``: close the folders when the server stops."""
        self.close()


def _encrypted(request: Any) -> bool:
    """Whether the request came over TLS (an HTTPS site of :mod:`.tlssites`)."""
    transport = request.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _socket_of(transport: Any) -> int | None:
    """The descriptor of a plain transport's socket, for :mod:`.offload`; None if it has none."""
    sock = None if transport is None else transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


def _count_partial_send(progress: Progress, fobj: IO[Any], at: int) -> None:
    """Count what a failed ``sendfile`` sent: asyncio leaves the file's offset after it."""
    with suppress(OSError, ValueError):
        progress.sent += max(0, os.lseek(fobj.fileno(), 0, os.SEEK_CUR) - at)


def _plain(request: Request, st: os.stat_result) -> bool:
    """Whether ``FileResponse`` would answer the request with the whole small regular file and no
    more: a GET with no range, no condition and no wish for a compressed sibling, not shaped."""
    if request.method != "GET" or not stat.S_ISREG(st.st_mode) or st.st_size > SMALL:
        return False
    headers = request.headers
    if any(header in headers for header in _CONDITIONAL) or request.get(SHAPER_KEY) is not None:
        return False
    accepted = headers.get("Accept-Encoding", "").lower()
    return not any(encoding in accepted for encoding in ENCODING_EXTENSIONS.values())


#: Request headers after which a file's answer depends on more than the file.
_CONDITIONAL: Final = (
    "Range",
    "If-Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
)


def _small_answer(fd: int, name: str, root: OpenFolder, st: os.stat_result) -> Response | None:
    """``FileResponse``'s answer to a :func:`_plain` request, without its machinery: the file read in
    one go on the loop (a page-cache read), the same headers. About a third of a small file's GET
    was ``FileResponse``'s own work (issue 19). None if the file cannot be read: ``ServedFile``
    then answers as ``FileResponse`` does (403, 404).

    Closes ``fd`` when it answers.
    """
    try:
        data = os.open(f"{_FD_DIR}/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        body = os.pread(data, st.st_size, 0)
    finally:
        os.close(data)
    # As FileResponse: the type of the file's real name (a link's target), the name asked else.
    real = _real_name(fd, root) or name
    os.close(fd)
    response = Response(body=body, content_type=CONTENT_TYPES.guess_type(real)[0] or FALLBACK_CONTENT_TYPE)
    response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
    response.last_modified = st.st_mtime
    response.headers["Accept-Ranges"] = "bytes"
    return response


def _close_all(fds: list[int]) -> None:
    while fds:
        with suppress(OSError):
            os.close(fds.pop())


def _real_name(fd: int, root: OpenFolder) -> str | None:
    """Where the open file is now, relative to the root; None when that is unknown."""
    if sys.platform != "linux":
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    prefix = root.real.rstrip("/") + "/"
    if not real.startswith(prefix) or real.endswith(" (deleted)") or real.startswith(prefix + OBJECTS + "/"):
        return None  # an object served by reference is typed by the name it is served as
    return real[len(prefix) :]


def _log_access(request: Any, response: Any, duration: float) -> None:
    protocol = request.protocol
    logger = getattr(protocol, "access_logger", None)
    if logger is not None and logger.enabled:
        logger.log(request, response, duration)


def access_logger_class(log: RequestLog) -> type:
    """An aiohttp access logger that records into ``log``: it sees each response once it is sent."""
    from aiohttp.abc import AbstractAccessLogger

    class Recorder(AbstractAccessLogger):
        def log(self, request: Any, response: Any, duration: float) -> None:
            log.add(record(request, response, duration, log), request.get(BODY_KEY, (b"",))[0])

        @property
        def enabled(self) -> bool:
            return True

    return Recorder


def record(request: Any, response: Any, duration: float, log: RequestLog) -> HttpRequest:
    seq = request.get(SEQ_KEY)
    progress = getattr(response, "progress", None)  # serving.ServedFile's, once prepared
    return HttpRequest(
        **sent(request),
        time=time.time() - duration,
        status=response.status,
        # With sendfile the writer never sees the file's bytes, so its counters hold only the
        # headers: a served file counts what it sent; for any other, the length it declared.
        bytes_sent=progress.sent if progress else response.content_length or 0,
        duration=duration,
        complete=progress.complete if progress else True,
        fault=request.get(FAULT_KEY),
        injected=bool(request.get(INJECTED_KEY, False)),
        answered_by=request.get(ANSWERED_BY_KEY),
        # A request aiohttp refused before any middleware ran is numbered as it ends.
        seq=log.start() if seq is None else seq,
    )


def sent(request: Any) -> dict[str, Any]:
    """What the device sent, as ``HttpRequest`` fields: the log's entry, and what a handler gets."""
    body = request.get(BODY_KEY, (b"", False))
    return {
        "remote": str(request.remote),
        "method": request.method,
        "path": request.raw_path,
        "range": request.headers.get("Range"),
        "headers": Fields(((name, text(value)) for name, value in request.headers.items()), any_case=True),
        "body_size": len(body[0]),
        "body_cut": body[1],
    }


def text(value: str) -> str:
    """A header's value as text any wire carries: bytes that were no UTF-8 become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def reach_by_port(runner: Any, namespaces: dict[int, str]) -> None:
    """Let a port reach a namespace: a request that arrives on a port of ``namespaces`` (port ->
    the namespace's URL path, read at each request) is the request of that path followed by the
    path the device sent, before anything else sees it. Faults, replies, the files and the log
    then answer it as they answer the same request through the namespace's prefix."""
    from yarl import URL

    server = runner.server
    make = server.request_factory

    def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
        transport = protocol.transport
        sockname = None if transport is None else transport.get_extra_info("sockname")
        reached = namespaces.get(sockname[1]) if sockname else None
        if reached is not None:
            url = message.url.relative() if message.url.absolute else message.url
            url = URL.build(path=reached + url.raw_path, query_string=url.raw_query_string, encoded=True)
            message = message._replace(path=str(url), url=url)
        request = make(message, payload, protocol, writer, task)
        if reached is not None:
            request[REACHED_KEY] = reached
        return request

    server.request_factory = request_factory


def install(runner: Any, log: RequestLog) -> None:
    """Record every request a started aiohttp ``AppRunner`` answers from now on.

    The driver builds its AppRunner inside ``start()`` with aiohttp's default access log; each
    new connection's handler takes its access logger from the server's keyword arguments, and no
    connection is accepted before the coroutine that started the server yields.
    """
    runner.server._kwargs["access_log_class"] = access_logger_class(log)
