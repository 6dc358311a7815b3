"""The handle every ``http_server`` fixture yields, whatever the backend.

A backend gives its handle where it serves (the URL, publishing and staging files) and a
:class:`~pytest_jumpstarter_http.records.Recorder`: everything else (the request log, waiting
for a request, faults, replies, uploads and credentials) is written once, here, against that
interface.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, cast, overload
from urllib.parse import unquote

from .deviceapi import HANDLER_FAILED, NO_JSON, NO_SUCH_METHOD, ORDERED, OUT_OF_ORDER, by_reply
from .records import (
    NO_REQUEST,
    PROGRESS_BYTES,
    HttpRequest,
    Progress,
    RequestLogUnavailable,
    check_name,
    describe,
    normalized,
    status_matches,
    url_path,
    user_facing,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .deviceapi import HttpResponse, Reply, Upload
    from .records import Fault, Recorder
    from .tls import Tls

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def concrete_host(host: str) -> str:
    """The address a client should use for a server bound to ``host``.

    A wildcard bind answers on every interface; a URL needs one of them, so take the one
    Jumpstarter's own driver would pick (the machine's address on its default route).
    """
    if host not in WILDCARDS:
        return host
    from jumpstarter.common.ipaddr import get_ip_address

    return str(get_ip_address())


def format_url(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port`` (or ``https://``) with IPv6 literals in brackets and no trailing slash."""
    import ipaddress

    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host.split("%")[0]).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"{scheme}://{host}:{port}"


@user_facing
class HttpServerHandle(ABC):
    """A running HTTP server serving files to the device under test.

    Yielded by the ``http_server`` fixture and made by ``http_server_factory``; annotate with
    it: ``def test_flash(http_server: HttpServerHandle)``.
    """

    backend: Literal["loopback", "exporter"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        user_facing(cls)  # a backend's own public methods fail on a mistake in one sentence too

    def __init__(
        self,
        root: Path,
        host: str,
        *,
        recorder: Recorder,
        namespace: str | None = None,
        progress: Callable[[str], None] | None = None,
        tls: Tls | None = None,
    ) -> None:
        #: The local directory served (on an exporter: the local directory published to it).
        self.root = root
        #: The bound address (an exporter's server reports its own).
        self.host = host
        #: The server API: its request log, faults, replies, uploads and credentials.
        self._recorder = recorder
        #: The URL namespace of this handle on a shared server, which its faults end with.
        self._namespace = namespace
        #: Where ``wait_for_request`` reports a large download under way (None: silent).
        self.progress = progress
        #: Where this test's part of the request log starts: a number of requests started.
        self._request_mark = 0
        #: The faults injected and not cleared yet.
        self._faults: list[Fault] = []
        #: The replies scripted and not cleared yet.
        self._replies: list[Reply] = []
        #: The server's ids of this test's upload folders and credentials, oldest first.
        self._upload_folders: list[str] = []
        self._credentials: list[str] = []
        #: The CA certificate (PEM) a device must trust to verify this HTTPS server; None for plain HTTP.
        self.ca_cert = None if tls is None else tls.ca_cert
        #: For mutual TLS, one PEM file of a client certificate and its key (``curl --cert``); else None.
        self.client_cert = None if tls is None else tls.client_cert
        #: ``https`` for a TLS server, else ``http``: how its URLs start.
        self.scheme = "http" if tls is None else "https"
        #: What the test's handlers raised (``respond(handler=)``): each fails the test.
        self.handler_errors: list[BaseException] = []
        #: The names ``stage()`` served: staged again, they replace what it staged before.
        self._staged: set[str] = set()

    #: Seconds the server waits for a handler's answer before it answers 504 (``--http-timeout``).
    handler_wait = 30.0

    @property
    @abstractmethod
    def port(self) -> int:
        """The port the server listens on now."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The server's base URL as the device under test sees it, with no trailing slash.

        Read when used: a server restarted through its client on a new port gets a new URL.
        """

    @property
    def label(self) -> str:
        """The URL the server had last, to name it in reports: unlike ``url``, never asks the server."""
        return self.url

    @property
    @abstractmethod
    def client(self) -> Any:
        """The Jumpstarter ``HttpServerClient`` that drives this server."""

    @property
    def exporter_client(self) -> Any:
        """The exporter's root Jumpstarter client (``.flasher``, ``.power``...); None on loopback."""
        return None

    def url_for(self, name: str) -> str:
        """The percent-encoded URL of ``name`` (a path relative to the root), published first.

        A leading slash changes nothing, as everywhere a method takes a path: ``url_for("/a.raw")``
        is ``url_for("a.raw")``, and ``url_for("/")`` is the base URL with its slash, as in
        pytest-httpserver.
        """
        if isinstance(name, str) and not name.strip("/"):
            return self.url + "/"
        name = check_name(_relative(name), where="url_for() name")
        self.publish(name)
        return self.url + url_path(name)

    def stage(self, src: str | os.PathLike[str], name: str | None = None) -> str:
        """Serve a copy of the local file ``src`` as ``name`` (default: its file name); return its URL.

        The copy is the server's own: changing it never changes ``src``, and ``src`` itself is
        never moved, linked or written. On every backend, a name the root holds is refused
        (``FileExistsError``) unless this server staged it, and a file of the root is served where
        it is. A folder of a name it staged (``"d"`` after ``"d/x"``) and a name below one (``"d/x"``
        after ``"d"``) are refused too: a name is a file or a folder, never both.
        """
        source = Path(src)
        if not source.is_file():
            raise FileNotFoundError(
                f"stage(): {str(source)!r} is not a file; give the path of a file to serve."
            )
        name = check_name(_relative(name or source.name), where="stage() name")
        # A folder kept by --http-keep, as every server's storage, holds a name or folders of it.
        refuse_beside(name, self._staged, by="this server")
        in_root = self.root / name
        if _same_file(in_root, source) and in_root.resolve().is_relative_to(self.root.resolve()):
            self._serve_in_place(name)  # served where it is: on an exporter, sent if it changed
            return self.url_for(name)
        refuse_unstaged(self.root, name, self._staged)
        url = self._stage(source, name)
        self._staged.add(name)
        return url

    def _serve_in_place(self, name: str) -> None:
        """Serve the root's file ``name`` as it is now, which a test staged as itself."""
        self.publish(name)

    @abstractmethod
    def _stage(self, source: Path, name: str) -> str:
        """Serve a copy of the file ``source`` as the checked ``name``; return its URL."""

    @abstractmethod
    def publish(self, name: str | None = None) -> None:
        """Make what is new or changed in ``root`` (or just ``name``) available to the device."""

    @abstractmethod
    def _url_path(self) -> str:
        """The path part of ``url``: where this handle's requests are, on a server others may share."""

    def clear(self) -> None:
        """End this test's faults, replies, uploads and credentials, and start a new request window:
        the fixtures call it between tests."""
        self.handler_errors.clear()
        try:
            try:
                self.clear_faults()
            finally:
                self.clear_device_api()
        finally:
            with contextlib.suppress(RequestLogUnavailable):
                self._request_mark = self._recorder.requests_started()

    def _prefix(self) -> str:
        return self._url_path() + "/"

    @property
    def requests(self) -> list[HttpRequest]:
        """The requests this server answered that started during the current test, oldest first.

        Each one's ``path`` is what the device asked for below ``url``, as it sent it
        (``"/rootfs.img?v=2"``), and its ``name`` that path decoded, without the query:
        ``"rootfs.img"``, on every backend. The report shows ``url`` once, above its requests.
        """
        prefix = self._prefix()
        entries = self._recorder.get_requests(self._request_mark, prefix)[1]
        return [placed for entry in entries if (placed := self._placed(entry)) is not None]

    def _placed(self, entry: HttpRequest, body: Callable[[], bytes] | None = None) -> HttpRequest | None:
        """``entry`` as its test sees it, relative to ``url``, its body read from the server when
        asked for (or by ``body``); None for a request below another URL."""
        prefix = self._prefix()
        base = unquote(prefix)
        path = unquote(entry.path.split("?")[0])
        if not path.startswith(base):
            return None
        if body is None:
            body = functools.partial(self._recorder.get_body, entry.seq, prefix)
        return dataclasses.replace(
            entry,
            name=normalized(path.removeprefix(base)),
            path="/" + entry.path.removeprefix(prefix),
            _body=body,
        )

    def _wanted(self, where: str, path: str, status: int | str | None) -> _Wanted:
        """What the method ``where`` asks for; a bad ``status`` is a ``ValueError``."""
        __tracebackhide__ = True
        return _Wanted(where, self._url_path(), path, status)

    @overload
    def assert_requested(
        self, path: str, *, count: None = None, status: int | str | None = None
    ) -> HttpRequest: ...

    @overload
    def assert_requested(
        self, path: str, *, count: int, status: int | str | None = None
    ) -> HttpRequest | None: ...

    def assert_requested(
        self, path: str, *, count: int | None = None, status: int | str | None = None
    ) -> HttpRequest | None:
        """Assert the device requested ``path`` (relative to ``url``), answered with ``status`` if given.

        ``status`` is a status (``404``), a class (``"5xx"``) or a comma list of them (``"4xx,5xx"``),
        as in ``--http-fail-on``. ``count``: exactly that many such requests during this test
        (``count=0``: none). Returns the last matching request (None for none); the assertion
        message lists everything requested instead.
        """
        __tracebackhide__ = True
        wanted = self._wanted("assert_requested()", path, status)
        expected = None if count is None else _count("assert_requested()", count)
        entries = self.requests
        hits = [entry for entry in entries if wanted.matches(entry)]
        if expected is None and not hits:
            raise _no_request([wanted], "", entries)
        if expected is not None and len(hits) != expected:
            raise AssertionError(
                f"expected {expected} request(s) for {wanted.named}, not {len(hits)}; the server "
                f"answered:\n{describe(entries)}"
            )
        return hits[-1] if hits else None

    #: Seconds between two looks at the request log while waiting (an exporter's is a remote call).
    _poll_interval = 0.02

    def wait_for_request(
        self, path: str, *, timeout: float = 60.0, status: int | str | None = None
    ) -> HttpRequest:
        """Wait until the device has requested ``path`` (relative to ``url``) and its response has ended.

        Returns that request (its ``complete`` tells a whole download from an abandoned one). After
        ``timeout`` seconds (finite, 0 or more) it fails the test, listing what the device requested
        instead. ``status`` is as in :meth:`assert_requested`. While a download of 64 MiB or more is
        under way, a progress line shows in the terminal (not under -q).
        """
        __tracebackhide__ = True
        return self._waited(self._poll("wait_for_request()", (path,), timeout, status))[0]

    async def wait_for_request_async(
        self, path: str, *, timeout: float = 60.0, status: int | str | None = None
    ) -> HttpRequest:
        """:meth:`wait_for_request` for ``async def`` tests: waits without blocking their event loop.

        Cancelling it (``asyncio.wait_for``, Ctrl-C) ends it at once.
        """
        __tracebackhide__ = True
        poll = self._poll("wait_for_request_async()", (path,), timeout, status)
        return (await self._waited_async(poll))[0]

    def wait_for_requests(self, *paths: str, timeout: float = 60.0) -> list[HttpRequest]:
        """Wait until the device has requested each of ``paths`` and those responses have ended.

        Returns one request per path, in the order of ``paths`` (the last one of each). With no
        path, waits until every reply with ``times`` has answered them all, ordered ones included
        (the sequence is complete), and returns this test's requests. After ``timeout`` seconds
        it fails the test with what is missing, as pytest-httpserver's ``wait()`` does.
        """
        __tracebackhide__ = True
        return self._waited(self._poll("wait_for_requests()", paths, timeout))

    async def wait_for_requests_async(self, *paths: str, timeout: float = 60.0) -> list[HttpRequest]:
        """:meth:`wait_for_requests` for ``async def`` tests: waits without blocking their event loop.

        Cancelling it (``asyncio.wait_for``, Ctrl-C) ends it at once.
        """
        __tracebackhide__ = True
        return await self._waited_async(self._poll("wait_for_requests_async()", paths, timeout))

    def _poll(
        self, where: str, paths: tuple[str, ...], timeout: float, status: int | str | None = None
    ) -> _Poll:
        """What the wait ``where`` looks for: a request of each path, or, with none, the replies'
        answers; its arguments checked."""
        __tracebackhide__ = True
        wanted = [self._wanted(where, path, status) for path in paths]
        seconds = _seconds(where, timeout)
        return _Requests(self, wanted, seconds) if wanted else _Expectations(self, seconds)

    def _waited(self, poll: _Poll) -> list[HttpRequest]:
        """Look until ``poll`` has what it waits for; fail the test once its time is up."""
        __tracebackhide__ = True
        while (done := poll.once()) is None:
            poll.fail_if_late()
            time.sleep(self._poll_interval)
        return done

    async def _waited_async(self, poll: _Poll) -> list[HttpRequest]:
        """:meth:`_waited` on the test's event loop."""
        __tracebackhide__ = True
        import asyncio

        # Each look is one short read in a thread (an exporter's log is a network call) and the
        # wait between looks is the loop's: a cancelled wait leaves nothing polling behind it.
        while (done := await asyncio.to_thread(poll.once)) is None:
            poll.fail_if_late()
            await asyncio.sleep(self._poll_interval)
        return done

    def _show_progress(self, wanted: _Wanted) -> None:
        """Report the progress of a large download of ``wanted``'s path, if one is under way."""
        if self.progress is not None:
            in_flight = self._recorder.get_in_flight(self._prefix())
            downloads = [p for p in in_flight if unquote(p.path) == wanted.path]
            wanted.shown.report(self.progress, downloads, wanted.name)

    def check(self) -> None:
        """Fail unless this test's device API went as scripted, as ``--http-strict`` checks after each test.

        The assertion lists: the requests nothing expected (answered 404 or 405 because they
        matched no reply, no upload prefix and no served file; a download of a served file is
        expected), the replies whose ``times`` were not used up, the ordered replies not reached,
        and the requests out of order.
        """
        __tracebackhide__ = True
        problems = self._problems(strict=True)
        if problems:
            raise AssertionError(f"http_server.check() of {self.label}: {problems}")

    def _problems(self, *, strict: bool) -> str:
        """What :meth:`check` lists (``strict``), or only the requests out of order; empty if none.

        The report of each test asks it (``reports.check``): a request out of order fails the test
        always, everything else under ``--http-strict``.
        """
        ordered = [reply for reply in self._replies if reply.spec.ordered and reply.active]
        if not (strict or ordered):
            return ""  # nothing to ask: on an exporter, asking is a remote call
        entries = self.requests
        problems = [*self._unexpected_and_left(entries)] if strict else []
        return "\n".join([*problems, *_out_of_order(entries, ordered)])

    def _unexpected_and_left(self, entries: list[HttpRequest]) -> Iterator[str]:
        """The parts of :meth:`check`'s list besides the requests out of order, each with its title."""
        unexpected = [entry for entry in entries if _unexpected(entry)]
        if unexpected:
            yield f"requests nothing expected (404 or 405):\n{describe(unexpected)}"
        left = _not_used_up(self._replies, [reply.hits for reply in self._replies])
        for kind in (_UNUSED, _UNREACHED):
            lines = [line for each, line in left if each == kind]
            if lines:
                yield f"{kind}:\n" + "\n".join(lines)

    def inject(
        self,
        path: str | os.PathLike[str],
        *,
        delay: float = 0.0,
        rate: float | None = None,
        cut_after: int | None = None,
        stall_after: int | None = None,
        status: int | None = None,
        times: int | None = None,
    ) -> Fault:
        """Make the server misbehave on ``path`` (relative to ``url``; a glob such as ``images/*.raw``).

        Every spelling of the path the server serves as that file (``sub//a.raw``, ``sub/./a.raw``,
        ``sub/a.raw/``) gets the fault.

        - ``delay``: seconds before the response starts (0 to 86400).
        - ``rate``: bytes per second of the body (1 to 2**53 - 1).
        - ``cut_after``: close the connection after this many body bytes of each response (0 to
          2**53 - 1).
        - ``stall_after``: after this many body bytes send nothing more, until the client gives
          up or the fault ends (the connection is then closed); 0 to 2**53 - 1.
        - ``status``: answer this status (400-599) and no file; a 503 says ``Retry-After: 1``.
        - ``times``: apply to the first ``times`` matching requests only (1 to 2**53 - 1;
          default: all).

        The bounds are what Jumpstarter's wire carries exactly, where numbers travel as doubles.

        Ranges, ETags, HEAD and 304 work as without the fault; ``cut_after`` and ``stall_after``
        count the bytes of each response. The first fault injected wins when several match. The
        fault ends with the test (or with ``Fault.clear()``); the request log shows which requests
        it hit. Bad arguments raise ``ValueError``.
        """
        from .records import Fault, FaultSpec

        # FaultSpec takes an os.PathLike too, and refuses any other type in one sentence.
        spec = FaultSpec(cast(str, path), delay, rate, cut_after, stall_after, status, times)
        spec = spec.under((self._url_path(),))
        fault_id = self._recorder.inject_fault(spec.as_dict(), self._namespace)
        fault = Fault(self._recorder, fault_id, spec, self._namespace)
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """End every fault this handle injected; the fixtures call it as each test ends."""
        clear_each(self._faults, lambda fault: fault.clear())

    def _end_scripts(self) -> None:
        """As it stops: end its faults (each keeps its last hits) and forget its replies' handlers,
        which the server API outlives; its namespace's end ends the rest on the server."""
        for reply in self._replies:
            self._recorder.forget(reply.id)
        self.clear_faults()

    def respond(
        self,
        path: str | os.PathLike[str],
        *,
        status: int = 200,
        body: bytes | str | None = None,
        json: Any = NO_JSON,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        times: int | None = None,
        ordered: bool = False,
        query_string: str | Mapping[str, str | list[str]] | None = None,
        match_headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        match_json: Any = NO_JSON,
        handler: Callable[[HttpRequest], HttpResponse] | None = None,
    ) -> Reply:
        """Answer ``method`` requests for ``path`` (relative to ``url``; a glob such as
        ``api/v1/*``, whose ``*`` matches across ``/`` as ``inject()``'s does) with a reply of the
        test's own.

        - ``body`` (bytes or str) or ``json`` (any JSON value, ``None`` for ``null`` too, sent as
          ``application/json``): what it answers, up to 1 MiB (stage a larger one as a file). With
          neither, a 2xx reply to ``GET``
          serves the file at ``path`` as usual (ranges, ETags and all) with ``headers`` added, such
          as ``{"Content-Type": "application/efi"}``; any other answers an empty body.
        - ``status``: 200 to 599 (a 1xx is no final answer); a redirect is
          ``status=302, headers={"Location": url}``.
        - ``method`` is matched exactly (upper case), ``"*"`` matches any; a ``GET`` reply also
          answers ``HEAD``, bodiless.
        - ``times``: answer that many requests, then the next reply for the same path and method
          answers, and after the last one the file (or 404; 405 for a method other than ``GET`` and
          ``HEAD``, as for any request nothing scripted answers); default: every request.
        - ``ordered``: a step of this handle's sequence, in the order the steps were added; it
          answers once (or ``times``). A request a step answers before its turn, or after it,
          gets 500, logged ``[reply: out of order]``, and fails the test after it ends with the
          expected and the actual sequence.

        What the request must carry besides its method and path (all of them, when several are
        given); these are pytest-httpserver's names, with ``match_`` where this method's own
        ``headers`` and ``json`` already name what the reply sends:

        - ``query_string``: the query as a str (``"v=2&tag=a"``), compared whole as the device
          sent it, percent-decoded, its order included; or a dict of names to a value or a list
          of values (``{"v": "2"}``), matched whole, names in any order, a name's values in
          order;
        - ``match_headers``: headers that must be there with these values (names in any case);
        - ``data``: the exact body (bytes or str); ``match_json``: a body that is this JSON
          value. The server reads the first 64 KiB of a body to match it: a longer one matches
          neither.

        ``handler``: answer from Python instead, ``handler(request) -> HttpResponse``, with the
        :class:`HttpRequest` the device sent (``headers``, ``query``, ``body``). It runs in the
        test's process on every backend, in a worker thread, while the device waits
        (``--http-timeout`` at most, then a 504). If it raises, the device gets a 500 and the test
        fails with the handler's traceback.

        Replies on one path are tried in the order they were added: the first that matches and
        has ``times`` left answers. The reply ends with the test (or with ``Reply.clear()``); the
        request log marks the requests it answered ``[reply]`` (``[handler]``). Bad arguments
        raise ``ValueError`` or ``TypeError``.
        """
        from .deviceapi import Reply, ReplySpec

        if handler is not None and not callable(handler):
            raise TypeError(
                f"respond(): handler={handler!r} is not callable; give a function of the request."
            )
        # ReplySpec takes an os.PathLike too, and refuses any other type in one sentence.
        spec = ReplySpec(
            cast(str, path),
            status,
            body,
            json,
            headers,
            method,
            times,
            ordered=ordered,
            query_string=query_string,
            data=data,
            match_headers=match_headers,
            match_json=match_json,
            handler_wait=self.handler_wait if handler is not None else 0.0,
        ).under(self._url_path())
        answerer = None if handler is None else functools.partial(self._handled, handler)
        recorder = self._recorder
        ident = recorder.add_reply(spec.as_dict(), self._namespace, answerer)
        reply = Reply(recorder, ident, spec, self._namespace)
        self._replies.append(reply)
        return reply

    def _handled(
        self, handler: Callable[[HttpRequest], HttpResponse], asked: dict[str, Any]
    ) -> dict[str, Any]:
        """Run the test's ``handler`` on a request the server handed over: its answer, or a 500
        and the error kept to fail the test."""
        from .deviceapi import HttpResponse

        body = base64.b64decode(str(asked.get("body") or ""))
        request = self._placed(HttpRequest.from_dict(asked), lambda: body)
        try:
            answer = handler(cast(HttpRequest, request))
        except Exception as exc:
            self.handler_errors.append(exc)
            return HANDLER_FAILED
        if not isinstance(answer, HttpResponse):  # the user's mistake, not a frame of the plugin's
            self.handler_errors.append(
                TypeError(
                    f"respond(): the handler returned {type(answer).__name__}, not an HttpResponse; "
                    "return HttpResponse(status=..., body=... or json=..., headers=...)."
                )
            )
            return HANDLER_FAILED
        return answer.as_dict()

    def clear_replies(self) -> None:
        """End every reply this handle scripted: the files are served as before."""
        clear_each(self._replies, lambda reply: reply.clear())

    def accept_uploads(self, prefix: str = "uploads/", *, max_bytes: int = 64 << 20) -> None:
        """From now on, store the body of each PUT or POST below ``prefix`` (relative to ``url``); answer 201.

        A ``multipart/form-data`` POST stores each part that has a file name as ``<name>/<file
        name>``: ``curl -F log=@boot.log URL/uploads/run1`` stores ``run1/boot.log``. A body over
        ``max_bytes`` gets 413 and nothing is kept, nor is a body cut short. Uploads go to a folder
        of the plugin's own (below pytest's basetemp, or the run's folder on an exporter), never
        into the served root; a name that would lead out of it (``..``, a link) gets 400. They
        are in :attr:`uploads` until the test ends.
        """
        from .deviceapi import UploadSpec

        spec = UploadSpec(prefix, max_bytes).under(self._url_path())
        self._upload_folders.append(self._recorder.accept_uploads(spec.as_dict(), self._namespace))

    @property
    def uploads(self) -> list[Upload]:
        """What the device uploaded during this test, in arrival order (see :meth:`accept_uploads`)."""
        from .deviceapi import Upload

        recorder = self._recorder
        return [
            Upload.from_entry(recorder, entry, self._namespace)
            for api_id in self._upload_folders
            for entry in recorder.get_uploads(api_id, self._namespace)
        ]

    def require_auth(
        self, user: str | None = None, password: str | None = None, *, token: str | None = None
    ) -> None:
        """From now on, every request to this server (below ``url``) needs HTTP Basic credentials
        ``user`` and ``password``, or ``Authorization: Bearer <token>``; others get 401 with
        ``WWW-Authenticate``. It ends with the test."""
        from .deviceapi import AuthSpec

        spec = AuthSpec(user, password, token).under(self._url_path())
        self._credentials.append(self._recorder.require_auth(spec.as_dict(), self._namespace))

    def clear_device_api(self) -> None:
        """End every reply, upload folder and credential of this handle; the fixtures call it as
        each test ends."""
        recorder = self._recorder
        try:
            self.clear_replies()
        finally:
            ids, self._upload_folders, self._credentials = self._upload_folders + self._credentials, [], []
            clear_each(ids, lambda ident: recorder.end(ident, self._namespace))

    @abstractmethod
    def stop(self, *, failed: bool = False) -> None:
        """Stop the server (if this handle started it) and remove what it created, unless
        ``--http-keep`` keeps it (``failed``: the test that used it failed)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.label} root={self.root}>"


def _relative(name: str) -> str:
    """``name`` without a leading slash: a path is relative to the server's URL either way."""
    return name.lstrip("/") if isinstance(name, str) else name


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_unstaged(folder: Path, name: str, staged: Collection[str]) -> None:
    """A ``FileExistsError`` if ``folder / name``, where ``name`` would be staged, holds anything
    but what was staged as ``name`` (in ``staged``), or a folder of ``name`` there is a file: the
    plugin never replaces what it did not create, and a name is a file or a folder, never both."""
    path = folder / name
    if name not in staged and os.path.lexists(path):
        raise FileExistsError(
            f"stage(): {str(path)!r} already exists and the plugin did not create it; "
            "stage under another name."
        )
    for parent in path.parents:
        if parent == folder:
            return
        if os.path.lexists(parent) and not parent.is_dir():  # a file that refuse_beside did not stage
            raise FileExistsError(
                f"stage(): {str(parent)!r} is a file the plugin did not create, so {name!r} cannot "
                "be below it; stage under another name."
            )


def refuse_beside(name: str, staged: Iterable[str], *, by: str) -> None:
    """A ``FileExistsError`` if ``name`` is a folder of a name in ``staged`` (which ``by`` staged),
    or one of them a folder of ``name``: no folder holds a file and a folder of one name."""
    for other in staged:
        if other.startswith(name + "/"):
            raise FileExistsError(
                f"stage(): {name!r} is a folder of {other!r}, which {by} staged; stage under another name."
            )
        if name.startswith(other + "/"):
            raise FileExistsError(
                f"stage(): {other!r}, which {by} staged, is a file, so {name!r} cannot be below it; "
                "stage under another name."
            )


def clear_each(items: list[Any], clear: Callable[[Any], object]) -> None:
    """Clear every item (emptying ``items``), then raise the first failure."""
    first: BaseException | None = None
    while items:
        try:
            clear(items.pop(0))
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


class _Shown:
    """Progress lines of a download a test waits for: one every two seconds, with its rate, and a
    last one when it ended, so that the last line shown is the download's real state."""

    def __init__(self) -> None:
        self._last = 0.0
        self._sent = 0
        self._began = 0.0

    def report(self, say: Callable[[str], None], downloads: list[Progress], name: str) -> None:
        now = time.monotonic()
        big = [p for p in downloads if (p.total or 0) >= PROGRESS_BYTES]
        if not big or now - self._last < 2.0:
            return
        download = big[-1]
        rate = (download.sent - self._sent) / (now - self._last) if self._last else 0.0
        self._began = self._began or now
        self._last, self._sent = now, download.sent
        mib, total = download.sent / (1 << 20), (download.total or 1) / (1 << 20)
        say(
            f"jumpstarter-http: {download.remote} is downloading {name}: {mib:.1f} of "
            f"{total:.1f} MiB ({100 * mib / total:.0f} %)"
            + (f", {rate / (1 << 20):.0f} MiB/s" if rate else "")
        )

    def ended(self, say: Callable[[str], None] | None, hit: HttpRequest) -> None:
        """The last line, if progress was shown: the whole download, or where it was cut."""
        if say is None or not self._began:
            return
        mib = hit.bytes_sent / (1 << 20)
        how = "downloaded" if hit.complete else "stopped downloading"
        say(
            f"jumpstarter-http: {hit.remote} {how} {hit.name} ({hit.status}): {mib:.1f} MiB in "
            f"{hit.duration:.1f} s"
        )


class _Wanted:
    """The request a test asks about, its arguments checked: the URL path and the statuses."""

    def __init__(self, where: str, base: str, path: str, status: int | str | None) -> None:
        __tracebackhide__ = True
        #: The name asked for, relative to the handle's URL, as ``HttpRequest.name`` spells it.
        self.name = normalized(path)
        self.codes = None if status is None else _statuses(where, status)
        #: Its decoded URL path.
        self.path = f"{base}/{self.name}"
        #: How a failure names the request: relative to the handle's URL, which the report shows.
        self.named = f"/{self.name}" + (f" answered {status}" if status is not None else "")
        self.shown = _Shown()

    def matches(self, entry: HttpRequest) -> bool:
        if entry.name != self.name or entry.method == NO_REQUEST:  # a refused handshake asked for nothing
            return False
        return self.codes is None or status_matches(entry.status, self.codes)


def _no_request(wanted: list[_Wanted], within: str, entries: list[HttpRequest]) -> AssertionError:
    """The failure of a test whose device never made the requests ``wanted``, listing what it made."""
    named = ", ".join(each.named for each in wanted)
    return AssertionError(f"no request for {named}{within}; the server answered:\n{describe(entries)}")


class _Poll(ABC):
    """What a wait looks for, one look at a time, until its deadline."""

    def __init__(self, handle: HttpServerHandle, timeout: float) -> None:
        self.handle = handle
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        #: This test's requests, as the last look saw them.
        self.entries: list[HttpRequest] = []

    @abstractmethod
    def once(self) -> list[HttpRequest] | None:
        """One look: what the wait returns, or None while it still waits."""

    @abstractmethod
    def missing(self) -> AssertionError:
        """The failure of a wait that ran out of time: what is missing, and what the server answered."""

    def fail_if_late(self) -> None:
        """Fail the test once the deadline has passed."""
        __tracebackhide__ = True
        if time.monotonic() >= self.deadline:
            raise self.missing()


class _Requests(_Poll):
    """Waiting for a request of each path ``wanted``: the last one of each, in their order."""

    def __init__(self, handle: HttpServerHandle, wanted: list[_Wanted], timeout: float) -> None:
        super().__init__(handle, timeout)
        self.wanted = wanted

    def _waiting(self) -> list[_Wanted]:
        return [each for each in self.wanted if not any(each.matches(entry) for entry in self.entries)]

    def once(self) -> list[HttpRequest] | None:
        self.entries = self.handle.requests
        waiting = self._waiting()
        if waiting:  # while one is missing, a large download of it shows its progress
            self.handle._show_progress(waiting[0])
            return None
        hits = [[entry for entry in self.entries if each.matches(entry)][-1] for each in self.wanted]
        for each, hit in zip(self.wanted, hits, strict=True):
            each.shown.ended(self.handle.progress, hit)
        return hits

    def missing(self) -> AssertionError:
        return _no_request(self._waiting(), f" within {self.timeout:g} s", self.entries)


class _Expectations(_Poll):
    """Waiting for every reply with ``times`` to answer them all, and for those answers to be logged."""

    def __init__(self, handle: HttpServerHandle, timeout: float) -> None:
        super().__init__(handle, timeout)
        self.left: list[str] = []

    def once(self) -> list[HttpRequest] | None:
        replies = self.handle._replies
        # Hits count as a request starts and the log has it as it ends: read the hits first.
        hits = [reply.hits for reply in replies]
        self.entries = self.handle.requests
        self.left = [line for _, line in _not_used_up(replies, hits)]
        logged = sum(by_reply(entry.answered_by) for entry in self.entries)
        return None if self.left or logged < sum(hits) else self.entries

    def missing(self) -> AssertionError:
        left = "; ".join(self.left) or "their last answers were not logged yet"
        return AssertionError(
            f"the replies were not used up within {self.timeout:g} s: {left}; the server "
            f"answered:\n{describe(self.entries)}"
        )


def _unexpected(entry: HttpRequest) -> bool:
    """Whether the server answered ``entry`` as it answers what nothing scripted or served matches."""
    usual = entry.answered_by is None or entry.answered_by == NO_SUCH_METHOD
    return usual and not entry.injected and entry.status in (404, 405)


def _out_of_order(entries: list[HttpRequest], ordered: list[Reply]) -> list[str]:
    """The requests out of order among ``entries``, with the sequence of the ``ordered`` replies
    and the one the requests made; empty if none was out of order."""
    out_of_order = [entry for entry in entries if entry.answered_by == OUT_OF_ORDER]
    if not out_of_order:
        return []
    expected = ", ".join(_step(reply) for reply in ordered)
    actual = ", ".join(_answered(entry) for entry in entries if entry.answered_by in (ORDERED, OUT_OF_ORDER))
    return [
        f"requests out of order, answered 500:\n{describe(out_of_order)}\n"
        f"the ordered replies expected: {expected}\nthe requests they got: {actual}"
    ]


def _step(reply: Reply) -> str:
    """``GET /a``, or ``GET /a x2``: a reply as a step of a sequence."""
    times = reply.spec.times or 1
    return f"{reply.spec.method} /{reply.spec.path}" + (f" x{times}" if times > 1 else "")


def _answered(entry: HttpRequest) -> str:
    """``GET /a``, or ``GET /b (out of order)``: a request in the sequence it was answered in."""
    return f"{entry.method} /{entry.name}" + (" (out of order)" if entry.answered_by == OUT_OF_ORDER else "")


_UNUSED = "replies whose times were not used up"
_UNREACHED = "ordered replies not reached"


def _not_used_up(replies: list[Reply], hits: list[int]) -> list[tuple[str, str]]:
    """The active replies with ``times`` left (``hits``: how often each answered so far): the kind
    of each, and a line that says how far it got."""
    return [
        (
            _UNREACHED if reply.spec.ordered else _UNUSED,
            f"{_step(reply)} ({reply.spec.status}) answered {count} of {reply.spec.times}",
        )
        for reply, count in zip(replies, hits, strict=True)
        if reply.active and reply.spec.times and count < reply.spec.times
    ]


def _count(where: str, count: object) -> int:
    """``count`` as a number of requests, 0 or more."""
    __tracebackhide__ = True
    if type(count) is int and count >= 0:
        return count
    raise _refused(where, "count", count, "not a number of requests; give a whole number, 0 or more")


def _statuses(where: str, status: object) -> tuple[str, ...]:
    """``status`` as ``--http-fail-on`` reads it: ``404``, ``"5xx"``, ``"4xx,5xx"``."""
    __tracebackhide__ = True
    from .records import parse_statuses

    # A bool is an int to Python, and str() spells a huge int only slowly or not at all.
    whole = type(status) is int and 100 <= status <= 599
    if whole or isinstance(status, str):
        with contextlib.suppress(ValueError):
            return parse_statuses(str(status))
    raise _refused(
        where,
        "status",
        status,
        "not a status; give one such as 404 or 5xx, or a comma list of them such as '4xx,5xx'",
    )


def _seconds(where: str, timeout: object) -> float:
    """``timeout`` as a finite number of seconds, 0 or more (``nan`` or ``inf`` would wait for ever)."""
    __tracebackhide__ = True
    import sys

    if (
        isinstance(timeout, (int, float))
        and not isinstance(timeout, bool)
        and 0 <= timeout <= sys.float_info.max
    ):
        return float(timeout)
    raise _refused(
        where, "timeout", timeout, "not a time to wait; give a finite number of seconds, 0 or more"
    )


def _refused(where: str, name: str, value: object, problem: str) -> ValueError:
    """The one-sentence error of a bad argument ``name`` of the method ``where``."""
    from .records import shown

    return ValueError(f"{where}: {name}={shown(value)} is {problem}.")
