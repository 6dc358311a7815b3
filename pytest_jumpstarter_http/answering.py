"""The device talks back: the server's side of ``respond()``, ``accept_uploads()`` and ``require_auth()``.

:class:`DeviceApi` holds a server's scripted answers (replies, upload folders, credentials), each
for as long as the namespace it came through (see :mod:`.namespaces`), as ``FaultRegistry``
holds faults. :class:`DeviceApiMiddleware` runs after the faults and before the files: it refuses
a request without the credentials asked for, answers a scripted reply, or stores an upload;
anything else goes on to the static route as before (issue 21).

An upload is written below a folder made for it, one component at a time with ``O_NOFOLLOW``
from a descriptor held since the folder was made, to a temporary name that is renamed into place
only once the whole body arrived within ``max_bytes``: a name never leads out of the folder
(``..``, ``%2e%2e``, a link), and a body cut short or too large leaves nothing. Runs in the
server; never imports pytest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import hashlib
import itertools
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp.http_exceptions import HttpProcessingError

from .beneath import open_folders
from .deviceapi import (
    HANDLED,
    NO_SUCH_METHOD,
    ORDERED,
    OUT_OF_ORDER,
    REPLIED,
    Asked,
    AuthSpec,
    HttpResponse,
    ReplySpec,
    UploadSpec,
)
from .records import BODY_KEPT, HttpRequest, name_problem
from .serving import ANSWERED_BY_KEY, BODY_KEY, INJECTED_KEY, SEQ_KEY, sent
from .shaping import PIECE

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler
    from aiohttp.web import Request, StreamResponse

#: What answers a reply with a handler: given the reply's id and the request as a dict, the
#: response as a dict (``HttpResponse.as_dict()``).
HandlerCall = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

__all__ = ["DeviceApi", "DeviceApiMiddleware", "OutOfOrder", "Written"]

#: What a multipart form may carry beyond ``max_bytes`` of files: its framing and other fields.
FORM_SLACK: Final = 64 << 10
#: The bytes of an upload written to disk at a time, in a thread.
WRITE_BATCH: Final = 1 << 20


class _Entry:
    """One scripted answer on a server: its spec, its hits, and an upload folder's descriptor."""

    def __init__(
        self,
        api_id: str,
        spec: ReplySpec | UploadSpec | AuthSpec,
        namespace: str | None,
        *,
        fd: int = -1,
        folder: str = "",
        handler: HandlerCall | None = None,
    ) -> None:
        self.api_id = api_id
        self.spec = spec
        #: What answers a reply made with ``respond(handler=)``: the test's function, reached
        #: in this process or on its owner's call channel.
        self.handler = handler
        #: The namespace it came through, which it ends with; None for the whole server.
        self.namespace = namespace
        self.hits = 0
        #: An upload folder, held open from when it was made: uploads are written below it.
        self.fd = fd
        #: That folder's path below the folder it was made in (an exporter's root).
        self.folder = folder

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class _Found:
    """An upload arriving: its folder's id, spec and descriptor (a copy of its own), and its name."""

    api_id: str
    spec: UploadSpec
    fd: int
    name: str


class OutOfOrder(Exception):
    """A request matched an ordered reply that is not the next step of its sequence."""

    def __init__(self, expected: ReplySpec) -> None:
        super().__init__(f"out of order: the next request expected is {expected.method} /{expected.path}")
        #: The reply whose turn it is.
        self.expected = expected


class DeviceApi:
    """The scripted answers of one server; added and cleared from any thread, used on the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._ids = itertools.count(1)
        #: Every upload stored, in arrival order, with the id of the folder that took it.
        self._uploads: list[dict[str, Any]] = []

    @property
    def idle(self) -> bool:
        """Whether nothing is scripted: most requests of most servers pass straight through."""
        return not self._entries

    def add(
        self, spec: ReplySpec | AuthSpec, namespace: str | None = None, handler: HandlerCall | None = None
    ) -> str:
        """Start answering with a reply, or asking for credentials, until ``namespace`` ends; its id.

        ``handler`` answers a reply that has one (:attr:`ReplySpec.handler_wait`): it gets the
        reply's id and the request (``HttpRequest.as_dict()``, its body in base64), and returns
        an ``HttpResponse.as_dict()``."""
        kind = "reply" if isinstance(spec, ReplySpec) else "auth"
        with self._lock:
            api_id = f"{kind}-{next(self._ids)}"
            self._entries[api_id] = _Entry(api_id, spec, namespace, handler=handler)
        return api_id

    def accept(self, spec: UploadSpec, namespace: str | None, base: Path, folder: str) -> str:
        """Store uploads below ``spec``'s prefix in a new folder below ``folder`` of ``base``; its id."""
        with self._lock:
            api_id = f"uploads-{next(self._ids)}"
        made = f"{folder}/{api_id}".lstrip("/")
        top = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = open_folders(top, made.split("/"), create=True)
        finally:
            os.close(top)
        with self._lock:
            self._entries[api_id] = _Entry(api_id, spec, namespace, fd=fd, folder=made)
        return api_id

    def clear(self, api_id: str, namespace: str | None) -> int:
        """End a scripted answer set through ``namespace``; how often it answered (0 if unknown:
        ended, never set, or another namespace's)."""
        with self._lock:
            entry = self._entries.get(api_id)
            if entry is None or entry.namespace != namespace:
                return 0
            del self._entries[api_id]
            self._uploads = [upload for upload in self._uploads if upload["api_id"] != api_id]
        entry.close()
        return entry.hits

    def clear_all(self, namespaces: set[str] | None = None) -> None:
        """End every scripted answer, or those that came through one of ``namespaces``."""
        with self._lock:
            ended = [
                (api_id, entry.namespace)
                for api_id, entry in self._entries.items()
                if namespaces is None or entry.namespace in namespaces
            ]
        for api_id, namespace in ended:
            self.clear(api_id, namespace)

    def _entry(self, api_id: str, namespace: str | None) -> _Entry:
        """The answer ``api_id`` set through ``namespace``; a ``KeyError`` once it ended (or for
        another namespace's: one run never reads or ends another's)."""
        entry = self._entries.get(api_id)
        if entry is None or entry.namespace != namespace:
            raise KeyError(f"no reply, upload folder or credential {api_id!r} on this server; it ended")
        return entry

    def hits(self, api_id: str, namespace: str | None) -> int:
        """How many requests it answered; a ``KeyError`` once it was cleared."""
        with self._lock:
            return self._entry(api_id, namespace).hits

    def uploads(self, api_id: str, namespace: str | None) -> list[dict[str, Any]]:
        """The uploads the folder ``api_id`` of ``namespace`` stored, in arrival order."""
        with self._lock:
            self._entry(api_id, namespace)
            return [dict(upload) for upload in self._uploads if upload["api_id"] == api_id]

    def read(self, api_id: str, name: str, namespace: str | None) -> bytes:
        """The content of the upload ``name`` of the folder ``api_id``, read without following a link."""
        with self._lock:
            entry = self._entries.get(api_id)
            if entry is None or entry.fd < 0 or entry.namespace != namespace:
                raise KeyError(f"no upload folder {api_id!r} on this server; it ended with its test")
            here = os.dup(entry.fd)
        *parents, last = name.split("/")
        try:
            folder = open_folders(here, parents, create=False)
        finally:
            os.close(here)
        try:
            fd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        finally:
            os.close(folder)
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def refused(self, path: str, authorization: str) -> list[str]:
        """The challenges of a request for ``path`` without the credentials asked; empty if it passes."""
        with self._lock:
            asked = [
                e.spec for e in self._entries.values() if isinstance(e.spec, AuthSpec) and e.spec.covers(path)
            ]
        if not asked or any(spec.accepts(authorization) for spec in asked):
            return []
        return [challenge for spec in asked for challenge in spec.challenges()]

    def reads_body(self, method: str, path: str) -> bool:
        """Whether a reply or an upload folder may take a ``method`` request for ``path``: the
        server reads the first part of its body, to match and to log."""
        with self._lock:
            specs = [entry.spec for entry in self._entries.values()]
        for spec in specs:
            if isinstance(spec, ReplySpec) and spec.answers(method, path):
                return True
            if isinstance(spec, UploadSpec) and method in ("PUT", "POST") and spec.name_of(path) is not None:
                return True
        return False

    def reply(self, asked: Asked) -> _Entry | None:
        """The first reply added that matches ``asked`` and has answers left, counted as hit; an
        :class:`OutOfOrder` if it is an ordered reply whose turn has not come (or has passed)."""
        with self._lock:
            for entry in self._entries.values():
                spec = entry.spec
                if not isinstance(spec, ReplySpec) or not spec.fits(asked):
                    continue
                if spec.times is None or entry.hits < spec.times:
                    if spec.ordered:
                        self._in_turn(entry)
                    entry.hits += 1
                    return entry
        return None

    def _in_turn(self, entry: _Entry) -> None:
        """Raise :class:`OutOfOrder` unless ``entry`` is the next step of its namespace's sequence:
        the first ordered reply set through it with answers left, in the order they were added."""
        turn = next(
            each
            for each in self._entries.values()
            if isinstance(each.spec, ReplySpec)
            and each.spec.ordered
            and each.namespace == entry.namespace
            and each.hits < (each.spec.times or 1)
        )
        if turn is not entry:
            raise OutOfOrder(cast(ReplySpec, turn.spec))

    def elsewise(self, method: str, path: str) -> bool:
        """Whether the replies scripted for ``path`` are all for methods other than ``method``."""
        with self._lock:
            specs = [e.spec for e in self._entries.values() if isinstance(e.spec, ReplySpec)]
        methods = {spec.method for spec in specs if spec.answers(spec.method, path)}
        return bool(methods) and not any(spec.answers(method, path) for spec in specs)

    def arriving(self, method: str, path: str) -> _Found | None:
        """The upload folder that takes a ``method`` request for ``path``, if any, counted as hit."""
        if method not in ("PUT", "POST"):
            return None
        with self._lock:
            for api_id, entry in self._entries.items():
                spec = entry.spec
                if not isinstance(spec, UploadSpec):
                    continue
                name = spec.name_of(path)
                if name is not None and entry.fd >= 0:
                    entry.hits += 1
                    return _Found(api_id, spec, os.dup(entry.fd), name)
        return None

    def stored(self, api_id: str, written: Written, method: str) -> None:
        """List an upload that arrived whole; its folder may have ended meanwhile."""
        with self._lock:
            entry = self._entries.get(api_id)
            if entry is None:
                return
            self._uploads.append(
                {
                    "api_id": api_id,
                    "name": written.name,
                    "size": written.size,
                    "sha256": written.sha256,
                    "method": method,
                    "stored": f"{entry.folder}/{written.name}",
                }
            )


class _Refused(Exception):
    """An upload the server does not keep: its status and why, in one sentence, and what the
    request log says of it."""

    def __init__(self, status: int, why: str, answered_by: str = "upload refused") -> None:
        super().__init__(why)
        self.status = status
        self.answered_by = answered_by


class Written:
    """One upload's body written to a temporary name beside its place, renamed there by :meth:`keep`."""

    def __init__(self, top: int, name: str) -> None:
        problem = name_problem(name)
        if problem:
            raise _Refused(400, f"upload name {name!r} is refused: {problem}")
        self.name = name
        *parents, self._last = name.split("/")
        try:
            self._folder = open_folders(top, parents, create=True)
        except OSError as exc:
            raise _Refused(409, f"upload name {name!r} cannot be stored: {exc.strerror}") from None
        self._temporary = f".upload-{secrets.token_hex(8)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self._temporary, flags, 0o644, dir_fd=self._folder)
        except BaseException:  # a full disk, a quota: the folder must not leak with each upload
            os.close(self._folder)
            raise
        self.size = 0
        self._digest = hashlib.sha256()
        #: The write in a thread, if any: the descriptor is closed only once it ended.
        self._busy: asyncio.Future[None] | None = None

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    async def take(self, chunks: AsyncIterator[bytes], budget: list[int]) -> None:
        """Write the body; a ``_Refused`` 413 once the request's bodies pass ``budget[0]`` bytes.

        The disk's work is done in a thread, a batch at a time: the loop serves every other
        download meanwhile, of every run sharing the server.
        """
        loop = asyncio.get_running_loop()
        batch: list[bytes] = []
        held = 0
        async for chunk in chunks:
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise _Refused(413, "the upload is larger than accept_uploads()'s max_bytes")
            batch.append(chunk)
            held += len(chunk)
            if held >= WRITE_BATCH:
                await self._written(loop, batch)
                batch, held = [], 0
        if batch:
            await self._written(loop, batch)

    async def _written(self, loop: asyncio.AbstractEventLoop, batch: list[bytes]) -> None:
        self._busy = loop.run_in_executor(None, self._write, batch)
        await self._busy

    def _write(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.size += len(chunk)
            self._digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]

    def keep(self) -> None:
        self._close_file()
        try:
            os.rename(self._temporary, self._last, src_dir_fd=self._folder, dst_dir_fd=self._folder)
        except OSError as exc:  # a folder of that name is there
            raise _Refused(409, f"upload name {self.name!r} cannot be stored: {exc.strerror}") from None
        finally:
            self.drop()

    def drop(self) -> None:
        """Remove the temporary file, if still there, and let go of the folder."""
        self._close_file()
        if self._folder >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._temporary, dir_fd=self._folder)
            os.close(self._folder)
            self._folder = -1

    def _close_file(self) -> None:
        """Close the file now, or once the write in flight ends (a cancelled request's may still
        run): a descriptor number closed under a write could be another file's by then."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)


async def _part_chunks(part: Any) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(PIECE):
        yield chunk


async def _chained(head: bytes, stream: Any) -> AsyncIterator[bytes]:
    """The body's first part, read already, then the rest of it."""
    if head:
        yield head
    async for chunk in stream.iter_chunked(PIECE):
        yield chunk


def _is_form(request: Request) -> bool:
    return request.method == "POST" and request.content_type == "multipart/form-data"


async def _receive(request: Request, found: _Found, head: bytes) -> list[Written]:
    """Write the request's body (or each file part of a multipart POST) below the upload folder.

    ``max_bytes`` bounds what is stored: a multipart form may be larger by its framing and other
    fields, up to ``FORM_SLACK`` bytes, which are read and dropped.
    """
    form = _is_form(request)
    length = request.content_length
    if length is not None and length > found.spec.max_bytes + (FORM_SLACK if form else 0):
        raise _Refused(413, "the upload is larger than accept_uploads()'s max_bytes")
    budget = [found.spec.max_bytes]
    written: list[Written] = []
    try:
        if form:
            await _receive_parts(request, found, budget, written)
        else:
            written.append(Written(found.fd, found.name))
            await written[-1].take(_chained(head, request.content), budget)
        for each in written:
            each.keep()
    except ConnectionResetError:  # the device's doing, not the server failing (issue 26)
        why = "the device closed the connection before the end of its upload"
        raise _Refused(400, why, "upload cut short") from None
    except HttpProcessingError:  # a NUL or a line break in a part's headers
        raise _Refused(400, "the upload is a multipart form whose part headers are malformed") from None
    finally:
        for each in written:
            each.drop()
    return written


async def _receive_parts(request: Request, found: _Found, budget: list[int], written: list[Written]) -> None:
    """Each part with a file name becomes the upload ``<name>/<file name>``; other fields are dropped."""
    reader = await request.multipart()
    slack = [FORM_SLACK]
    while (part := await reader.next()) is not None:
        filename = getattr(part, "filename", None)
        if not filename:
            async for chunk in _part_chunks(part):  # a field: read, counted, dropped
                slack[0] -= len(chunk)
                if slack[0] < 0:
                    raise _Refused(413, "the upload's form fields are larger than the 64 KiB allowed")
            continue
        if "/" in filename:
            raise _Refused(400, f"upload file name {filename!r} is refused: it has a '/'")
        written.append(Written(found.fd, f"{found.name}/{filename}".lstrip("/")))
        await written[-1].take(_part_chunks(part), budget)


class DeviceApiMiddleware:
    """After the faults, before the files: credentials, then scripted replies and uploads."""

    __middleware_version__ = 1

    def __init__(self, device_api: DeviceApi) -> None:
        self.device_api = device_api

    async def __call__(self, request: Request, handler: Handler) -> StreamResponse:
        api = self.device_api
        if api.idle:
            return await handler(request)
        challenges = api.refused(request.path, request.headers.get("Authorization", ""))
        if challenges:
            return _unauthorized(request, challenges)
        return await _answer_device(request, handler, api)


async def _answer_device(request: Request, handler: Handler, api: DeviceApi) -> StreamResponse:
    """A reply, an upload, both (the reply answers once the body is stored), or the files."""
    method, path = request.method, request.path
    found = api.arriving(method, path)
    head = await _first_part(request, api, found)
    if not isinstance(head, bytes):  # the device went away
        return head
    asked = Asked(method, path, request.query_string, request.headers, head[:BODY_KEPT])
    try:
        reply = api.reply(asked if len(head) <= BODY_KEPT else dataclasses.replace(asked, body=None))
    except OutOfOrder as out:
        return _out_of_order(request, out)
    if found is not None:
        stored = await _store(request, api, found, head)
        if reply is None or stored.status != 201:
            return stored
    if reply is not None:
        return await _answer(request, handler, reply)
    if api.elsewise(method, path):  # a reply's path asked with another method
        from aiohttp import web

        request[ANSWERED_BY_KEY] = NO_SUCH_METHOD
        # What the server answers any method it has nothing for: a static server's 405 (issue 26).
        return web.Response(status=405, headers={"Allow": "GET, HEAD"})
    return await handler(request)


async def _first_part(request: Request, api: DeviceApi, found: _Found | None) -> bytes | StreamResponse:
    """The body's first part, if a reply or an upload folder may take the request (a multipart
    upload is read part by part instead); the answer if the device went away meanwhile."""
    form = found is not None and _is_form(request)
    if not request.body_exists or form or not api.reads_body(request.method, request.path):
        return b""
    try:
        return await _head(request)
    except ConnectionResetError:  # the device's doing, as in _receive
        cut = "upload cut short" if found else "body cut short"
        why = "the device closed the connection before the end of its body"
        return _refused(request, _Refused(400, why, cut))


async def _head(request: Request) -> bytes:
    """The body's first ``BODY_KEPT`` bytes, and one more if there are more; logged with the request."""
    head = bytearray()
    while len(head) <= BODY_KEPT:
        chunk = await request.content.read(BODY_KEPT + 1 - len(head))
        if not chunk:
            break
        head += chunk
    request[BODY_KEY] = (bytes(head[:BODY_KEPT]), len(head) > BODY_KEPT)
    return bytes(head)


def _unauthorized(request: Request, challenges: list[str]) -> StreamResponse:
    from aiohttp import web
    from multidict import CIMultiDict

    request[ANSWERED_BY_KEY] = "auth"
    request[INJECTED_KEY] = True
    return web.Response(status=401, headers=CIMultiDict(("WWW-Authenticate", c) for c in challenges))


def _out_of_order(request: Request, out: OutOfOrder) -> StreamResponse:
    """A 500, which the test did not ask for: logged as a server error, so that it shows."""
    from aiohttp import web

    request[ANSWERED_BY_KEY] = OUT_OF_ORDER
    return web.Response(status=500, text=f"{out}\n")


async def _answer(request: Request, handler: Handler, entry: _Entry) -> StreamResponse:
    """The reply: the file with its headers, its own status, headers and body (none for HEAD),
    or what its handler answers."""
    from aiohttp import web

    spec = entry.spec
    assert isinstance(spec, ReplySpec)
    request[ANSWERED_BY_KEY] = ORDERED if spec.ordered else REPLIED
    if spec.serves_file:
        response = await handler(request)
        response.headers.update(spec.headers or {})
        return response
    request[INJECTED_KEY] = True  # the test asked for this status: --http-fail-on skips it
    if entry.handler is None:
        return web.Response(status=spec.status, body=spec.payload, headers=spec.headers)
    request[ANSWERED_BY_KEY] = HANDLED
    try:
        asked = entry.handler(entry.api_id, _asked_of(request))
        answer = HttpResponse.from_dict(await asyncio.wait_for(asked, spec.handler_wait))
    except TimeoutError:
        request[ANSWERED_BY_KEY] = f"{HANDLED}: no answer in time"
        return web.Response(status=504, text="the test's handler did not answer in time\n")
    except Exception as exc:  # its owner failed it, with the handler's traceback, in the test
        request[ANSWERED_BY_KEY] = f"{HANDLED}: {type(exc).__name__}"
        return web.Response(status=500, text="the test's handler failed\n")
    return web.Response(status=answer.status, body=answer.payload, headers=answer.headers)


def _asked_of(request: Request) -> dict[str, Any]:
    """The request as a handler gets it: ``HttpRequest.as_dict()``, with its body in base64."""
    asked = HttpRequest(
        **sent(request), time=time.time(), status=0, bytes_sent=0, duration=0.0, seq=request.get(SEQ_KEY, -1)
    )
    return {**asked.as_dict(), "body": base64.b64encode(request.get(BODY_KEY, (b"",))[0]).decode()}


def _refused(request: Request, refused: _Refused) -> StreamResponse:
    from aiohttp import web

    request[ANSWERED_BY_KEY] = refused.answered_by
    request[INJECTED_KEY] = True
    response = web.Response(status=refused.status, text=f"{refused}\n")
    if refused.status == 413:
        response.force_close()  # the rest of the body is not read
    return response


async def _store(request: Request, api: DeviceApi, found: _Found, head: bytes) -> StreamResponse:
    from aiohttp import web

    try:
        written = await _receive(request, found, head)
    except _Refused as refused:
        return _refused(request, refused)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        request[ANSWERED_BY_KEY] = "upload refused"
        return web.Response(status=507, text="the server's disk is full\n")
    finally:
        os.close(found.fd)
    for each in written:
        api.stored(found.api_id, each, request.method)
    request[ANSWERED_BY_KEY] = "upload"
    return web.Response(status=201)
