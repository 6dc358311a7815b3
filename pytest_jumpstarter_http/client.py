"""The test process's client of :class:`~pytest_jumpstarter_http.driver.RecordingHttpServer`,
and how a local file is streamed to a driver, this one's or a stock driver's storage.

Jumpstarter builds it from the driver's ``client()`` path wherever a test talks to the driver:
over gRPC on an exporter. Reading a request log does not import the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, closing
from io import BytesIO
from typing import TYPE_CHECKING, Any

from anyio import BrokenResourceError
from anyio.abc import ObjectStream
from jumpstarter.client import DriverClient
from jumpstarter.client.core import DriverError, DriverInvalidArgument, DriverMethodNotImplemented
from jumpstarter.common.resources import ResourceMetadata
from jumpstarter.common.streams import ResourceStreamRequest, StreamRequestMetadata
from jumpstarter.streams.common import forward_stream
from jumpstarter.streams.metadata import MetadataStream, MetadataStreamAttributes
from jumpstarter.streams.router import RouterStream
from jumpstarter_driver_http.client import HttpServerClient
from jumpstarter_driver_opendal.adapter import AsyncFileStream
from opendal import AsyncOperator

from .channel import Codec
from .deviceapi import HANDLER_FAILED
from .records import HttpRequest, Progress

if TYPE_CHECKING:
    from jumpstarter_driver_opendal.client import OpendalClient

    from .records import Answerer, Recorder


class ServerApi:
    """The server API of :class:`RecordingHttpServer` as a handle calls it, written once over
    ``call(method, *args)``: Jumpstarter's call over gRPC on an exporter, the driver's own method
    in the loopback's process. Numbers and specs cross as the wire carries them."""

    if TYPE_CHECKING:  # each place has its own

        def call(self, method: str, *args: Any) -> Any: ...

        def read_upload(self, entry: dict[str, Any], namespace: str | None = None) -> bytes:
            """The content of an upload of :meth:`get_uploads`."""

    @property
    def handlers(self) -> dict[str, Answerer]:
        """Reply id -> the test's handler that answers it (``respond(handler=)``)."""
        return self.__dict__.setdefault("_handlers", {})  # type: ignore[no-any-return]

    def get_requests(self, start: int = 0, prefix: str = "") -> tuple[int, list[HttpRequest]]:
        started, entries = self.call("get_requests", start, prefix)
        return int(started), [HttpRequest.from_dict(entry) for entry in entries]

    def inject_fault(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        return str(self.call("inject_fault", spec, namespace))

    def api(self) -> tuple[int, str, bool | None]:
        """The server API's version, the exporter's pytest-jumpstarter-http version, and whether its
        storage removes what a session wrote when the session ends (None: a server too old to say)."""
        answer = self.call("api")
        removes = answer.get("remove_created_on_close")
        return int(answer["api"]), str(answer["version"]), None if removes is None else bool(removes)

    def start_unless_running(self) -> int:
        return int(self.call("start_unless_running"))

    def open_namespace(self, owner: str, folders: list[str], asks: float = 0.0) -> str:
        return str(self.call("open_namespace", owner, folders, asks))

    def answer(self, namespace: str, name: str, sent: bool) -> None:
        self.call("answer", namespace, name, sent)

    def link(self, namespace: str, name: str, digest: str) -> int:
        return int(self.call("link", namespace, name, digest) or 0)  # an older server of API 3: None

    def close_namespace(self, namespace: str) -> None:
        self.call("close_namespace", namespace)

    def renew_namespace(self, namespace: str, owner: str, folders: list[str], asks: float = 0.0) -> str:
        return str(self.call("renew_namespace", namespace, owner, folders, asks))

    def serve_tls(self, owner: str, spec: dict[str, Any]) -> tuple[int, str | None]:
        """The port of the owner's HTTPS site, and the lab's CA (PEM) if the driver serves its own."""
        answer = self.call("serve_tls", owner, spec)
        ca_pem = answer.get("ca_pem")
        return int(answer["port"]), None if ca_pem is None else str(ca_pem)

    def add_reply(
        self, spec: dict[str, Any], namespace: str | None = None, handler: Answerer | None = None
    ) -> str:
        api_id = str(self.call("add_reply", spec, namespace))
        if handler is not None:  # the server hands it requests on the call channel
            self.handlers[api_id] = handler
        return api_id

    def answer_call(self, namespace: str, call: str, answer: dict[str, Any]) -> None:
        self.call("answer_call", namespace, call, answer)

    def answer_handed(self, want: dict[str, Any]) -> None:
        """Answer a request the server handed this process (``own``) for a reply's handler."""
        handler = self.handlers.get(str(want["reply"]))
        answer = HANDLER_FAILED if handler is None else handler(dict(want["request"]))
        with contextlib.suppress(Exception):  # the server may be gone meanwhile
            self.answer_call(str(want["namespace"]), str(want["call"]), answer)

    def get_body(self, seq: int, prefix: str) -> bytes:
        return base64.b64decode(str(self.call("get_body", seq, prefix)))

    def require_auth(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        return str(self.call("require_auth", spec, namespace))

    def accept_uploads(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        return str(self.call("accept_uploads", spec, namespace))

    def end(self, ident: str, namespace: str | None = None) -> int:
        self.forget(ident)  # a reply's handler ends with it
        return int(self.call("end", ident, namespace))

    def forget(self, ident: str) -> None:
        self.handlers.pop(ident, None)

    def hits(self, ident: str, namespace: str | None = None) -> int:
        return int(self.call("hits", ident, namespace))

    def get_uploads(self, api_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            {**entry, "size": int(entry["size"])}  # numbers cross Jumpstarter's wire as floats
            for entry in self.call("get_uploads", api_id, namespace)
        ]

    def requests_started(self) -> int:
        return int(self.call("requests_started"))

    def get_in_flight(self, prefix: str = "") -> list[Progress]:
        return [
            Progress(**{**entry, "sent": int(entry["sent"]), "total": _int_or_none(entry["total"])})
            for entry in self.call("get_in_flight", prefix)
        ]


class RecordingHttpServerClient(ServerApi, HttpServerClient):
    """Client of :class:`RecordingHttpServer`: an ``HttpServerClient`` that reads its request log,
    injects network faults and scripts replies, uploads and credentials."""

    async def call_async(self, method: str, *args: Any) -> Any:
        """Call ``method`` on this client's call channel (:mod:`.channel`), opened on first use; as
        a unary call on a server without one (an older version), or once the channel ended."""
        calls = await self._calls()
        if calls.ended is None:
            try:
                return await calls.call(method, args)
            except NeverOpened:
                pass
        return await super().call_async(method, *args)

    def own(self, folder: str, keep: bool, wanted: Callable[[dict[str, Any]], None], timeout: float) -> str:
        """Own ``folder`` on the server for as long as the call channel lasts (``own``); the owner's
        id. ``wanted`` is called in a worker thread with each request the server makes of the owner."""
        return str(self.portal.call(self._own, folder, keep, wanted, timeout))

    async def _own(
        self, folder: str, keep: bool, wanted: Callable[[dict[str, Any]], None], timeout: float
    ) -> str:
        calls = await self._calls()
        try:
            owner = str(await asyncio.wait_for(calls.call("own", [folder, keep]), timeout))
        except BaseException:
            await calls.close()  # an owner it made all the same ends with it
            raise
        calls.wanted[owner] = wanted
        return owner

    async def _calls(self) -> Calls:
        opening = self.__dict__.setdefault("_opening", asyncio.Lock())
        async with opening:  # one channel per client
            if "_channel" not in self.__dict__:
                self.__dict__["_channel"] = await Calls.open(self)
        return self.__dict__["_channel"]  # type: ignore[no-any-return]

    def calling(self) -> bool:
        """Whether this client's call channel runs (then so does the owner it made)."""
        calls = self.__dict__.get("_channel")
        return calls is not None and calls.ended is None

    def close_calls(self) -> None:
        """End this client's call channel, and the owner it made, if it has them."""
        calls = self.__dict__.get("_channel")
        if calls is not None and calls.ended is None:
            self.portal.call(calls.close)

    def holds(self, digest: str) -> bool:
        """Whether the exporter holds the object ``digest``, checked by its content."""
        return bool(self.call("holds", digest))

    def push(self, digest: str, fd: int) -> bool:
        """Send the open local file ``fd`` as the object ``digest``; whether the exporter got that content."""
        with file_resource(self, fd) as handle:
            return bool(self.call("push", digest, handle))

    def read_upload(self, entry: dict[str, Any], namespace: str | None = None) -> bytes:
        """Read through the driver's storage: an upload may be larger than one call carries."""
        return read_bytes(self.storage, str(entry["stored"]))


#: What a client raises for each kind of server exception (``channel.KINDS``), as for a unary call.
_KINDS = (DriverMethodNotImplemented, DriverInvalidArgument, DriverError, DriverError)


class NeverOpened(DriverError):
    """The server has no call channel (an older version), so no call sent on it was made."""


class Calls:
    """A client's end of its call channel (:mod:`.channel`), on the client's portal loop: a task
    reads the replies and hands each to the call waiting for it, and each request of the server
    to its owner to :attr:`wanted`, in a worker thread."""

    def __init__(self, client: DriverClient) -> None:
        self._client = client
        self._codec = Codec()
        self._sending = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._stream: ObjectStream[bytes] | None = None
        self._reading: asyncio.Future[None] | None = None
        #: Why the channel ended, or None while it runs; its client then calls as unary calls.
        self.ended: BaseException | None = None
        #: The sends under way, each a task of its own.
        self._sends: set[asyncio.Future[None]] = set()
        #: What handles the server's requests to each owner the channel made, by the owner's id.
        self.wanted: dict[str, Callable[[dict[str, Any]], None]] = {}

    @classmethod
    async def open(cls, client: DriverClient) -> Calls:
        calls = cls(client)
        streaming: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        calls._reading = asyncio.ensure_future(calls._read(streaming))
        with contextlib.suppress(Exception):  # then it has ended, and says why
            await streaming
        return calls

    async def call(self, method: str, args: tuple[Any, ...] | list[Any]) -> Any:
        ident = next(self._ids)
        try:
            line = Codec.line([ident, method, list(args)])
        except ValueError as exc:  # too long for the channel, as for a unary call: this call fails alone
            raise DriverError(f"{method}(): {exc}") from None
        self._waiting[ident] = answered = asyncio.get_running_loop().create_future()
        # A task of its own, shielded: a caller cancelled half-way through a send would leave the
        # zlib stream corrupt. Its failure is the caller's, or nobody's if the caller left.
        sending = asyncio.ensure_future(self._send(line))
        self._sends.add(sending)
        sending.add_done_callback(_settled)
        sending.add_done_callback(self._sends.discard)
        try:
            await asyncio.shield(sending)
            return await answered
        finally:
            self._waiting.pop(ident, None)
            _settled(answered)

    async def _send(self, line: bytes) -> None:
        async with self._sending:  # the lines of one zlib stream go in the order they were made
            if self.ended is not None:
                raise _ended(self.ended)
            assert self._stream is not None
            try:
                for chunk in self._codec.chunks(line):
                    await self._stream.send(chunk)
            except Exception as exc:  # the stream ended under it: the reader learns why
                if self._reading is not None:
                    await asyncio.wait({self._reading}, timeout=1.0)
                self._end(exc)
                raise _ended(self.ended or exc)  # noqa: B904 - its cause is the gRPC error, if any

    async def _read(self, streaming: asyncio.Future[None]) -> None:
        try:
            async with self._client.stream_async("channel") as stream:
                self._stream = stream
                streaming.set_result(None)
                async for chunk in stream:
                    for message in self._codec.decode(chunk):
                        self._take(message)
            self._end(EOFError("the exporter ended the call channel"))
        except BaseException as exc:
            if not streaming.done():
                streaming.set_exception(exc)
            self._end(exc)
            if not isinstance(exc, Exception):
                raise

    def _take(self, message: list[Any]) -> None:
        if message[0] == 0:
            self._from_server(message)
            return
        answered = self._waiting.get(int(message[0]))
        if answered is None or answered.done():
            return
        if len(message) == 2:
            answered.set_result(message[1])
        else:
            answered.set_exception(_KINDS[int(message[2])](str(message[3])))

    def _from_server(self, message: list[Any]) -> None:
        """A request of the server to an owner: ``[0, owner, request]``."""
        wanted = self.wanted.get(str(message[1]))
        if wanted is not None:  # a blocking send: not on the portal's loop, which its calls use
            asyncio.get_running_loop().run_in_executor(None, wanted, message[2])

    def _end(self, why: BaseException) -> None:
        self.ended = self.ended or why
        for answered in self._waiting.values():
            if not answered.done():
                answered.set_exception(_ended(why))

    async def close(self) -> None:
        self._end(EOFError("the call channel was closed"))
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(BaseException):
                await self._reading


def _settled(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of ``future``, if it has one, as seen: a call that left owes none."""
    if future.done() and not future.cancelled():
        future.exception()


def _ended(why: BaseException) -> DriverError:
    """The error of a call the channel cannot answer, from the gRPC error under ``why`` if there is
    one (so that :func:`~.connect.unavailable` sees an exporter that went away): a
    :class:`NeverOpened` if the server has no channel."""
    import grpc

    cause = why.__cause__ if isinstance(why, BrokenResourceError) else why
    missing = isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.NOT_FOUND
    error = (NeverOpened if missing else DriverError)(f"the call channel ended ({why!r})")
    error.__cause__ = cause
    return error


def write_from_fd(storage: OpendalClient, path: str, fd: int) -> None:
    """``storage.write_from_path(path, ...)`` of the open local file ``fd``, without a progress bar."""
    with closing(storage.open(path, "wb")) as remote, file_resource(storage, fd) as handle:
        storage.call("file_write", remote.fd, handle)


def read_bytes(storage: OpendalClient, path: str) -> bytes:
    """``storage.read_bytes(path)``, without a progress bar."""
    from jumpstarter_driver_opendal.client import BytesIOStream

    into = BytesIO()
    portal = storage.portal
    sink = portal.wrap_async_context_manager(_resource(storage, BytesIOStream(buf=into)))
    with closing(storage.open(path, "rb")) as remote, sink as handle:
        storage.call("file_read", remote.fd, handle)
    return into.getvalue()


def file_resource(client: DriverClient, fd: int) -> AbstractContextManager[Any]:
    """A handle through which a call to ``client``'s driver reads the open local file ``fd``:
    Jumpstarter's ``OpendalAdapter`` on it, without a progress bar."""
    return client.portal.wrap_async_context_manager(_file_resource(client, fd))


@asynccontextmanager
async def _file_resource(client: DriverClient, fd: int) -> AsyncIterator[Any]:
    # The file as it is open, whatever its name is now.
    file = await AsyncOperator("fs", root="/").open(f"/proc/self/fd/{fd}", "rb")
    async with _resource(client, AsyncFileStream(file=file)) as handle:
        yield handle


@asynccontextmanager
async def _resource(client: DriverClient, stream: ObjectStream[bytes]) -> AsyncIterator[Any]:
    """``client.resource_async(stream)`` without the ``ProgressStream`` it wraps ``stream`` in.

    That rich progress bar draws on the test's output, and only a TERM of "dumb" turns it off:
    setting TERM would change it under every thread of the process (xdist's, the test's own).
    """
    request = StreamRequestMetadata.model_construct(request=ResourceStreamRequest(uuid=client.uuid))
    context = client.stub.Stream(metadata=request.model_dump(mode="json", round_trip=True).items())
    metadata = dict(list(await context.initial_metadata()))
    async with MetadataStream(stream=RouterStream(context=context), metadata=metadata) as remote:
        resource = ResourceMetadata.model_validate(remote.extra(MetadataStreamAttributes.metadata)).resource
        # Sent as it is: resource_async compresses only for a content_encoding, which no caller gives.
        async with forward_stream(stream, remote):
            yield resource.model_dump(mode="json")


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)  # numbers cross Jumpstarter's wire as floats


if TYPE_CHECKING:

    def _is_the_server_api(client: ServerApi) -> Recorder:
        """mypy checks the client's calls against the one server API a handle uses."""
        return client
