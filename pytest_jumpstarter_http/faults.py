"""Network faults on the device's downloads: slow, late, cut, stalled or refused responses.

A test asks for one with ``http_server.inject(path, ...)`` or ``@pytest.mark.http_fault(...)``;
the handle checks it into a :class:`FaultSpec` and hands it to the server's
:class:`FaultRegistry` (in this process on loopback, over Jumpstarter's wire on an exporter
running ``RecordingHttpServer``). On the server, :class:`FaultMiddleware`, the outermost
middleware, waits (``delay``) and refuses (``status``) before the static route runs; what
changes a file's body (``rate``, ``cut_after``, ``stall_after``) is a :class:`Shaper` that
``ServedFile`` hands the body to, so ranges, ETags, HEAD and 304 stay aiohttp's.

The plugin imports this module only when a test injects a fault or a server runs.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote

from .records import check_name, normalized

if TYPE_CHECKING:
    import pytest
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.typedefs import Handler
    from aiohttp.web import Request, StreamResponse

__all__ = ["Fault", "FaultMiddleware", "FaultRegistry", "FaultSpec", "FaultsUnavailable"]

#: Seconds between two looks at whether a waiting response was released or its client left.
POLL: Final = 0.05
#: Largest piece of a shaped body read and written at once.
PIECE: Final = 256 << 10
#: What a 503 fault tells the client to wait before it tries again, in seconds.
RETRY_AFTER: Final = "1"


class FaultsUnavailable(RuntimeError):
    """The server cannot inject faults (an exporter with the stock HttpServer driver)."""


#: The largest whole number Jumpstarter's wire carries exactly: its numbers travel as doubles.
MAX_WHOLE: Final = 2**53 - 1
#: The longest ``delay``, in seconds: a day, far past any device's own timeout.
MAX_DELAY: Final = 86400


@dataclass(frozen=True)
class _Range:
    """What one numeric argument of ``inject()`` may be."""

    #: What it counts, as the error message asks for it: "a whole number of bytes".
    kind: str
    low: int
    high: int
    whole: bool = True
    #: None is valid: the argument was not asked for.
    optional: bool = True


#: The numeric arguments of ``inject()``. Each is bounded so that it crosses the wire exactly and
#: the server can compute with it: past the bounds a delay overflows the event loop's clock, and
#: a rate or count overflows a float on the server (issue 17).
_RANGES: Final = {
    "delay": _Range("a number of seconds", 0, MAX_DELAY, whole=False, optional=False),
    "rate": _Range("a number of bytes per second", 1, MAX_WHOLE, whole=False),
    "cut_after": _Range("a whole number of bytes", 0, MAX_WHOLE),
    "stall_after": _Range("a whole number of bytes", 0, MAX_WHOLE),
    "status": _Range("an HTTP error status", 400, 599),
    "times": _Range("a whole number of requests", 1, MAX_WHOLE),
}


def _shown(value: object) -> str:
    """``repr(value)``, cut when it would drown the message, as ``settings`` shows option values."""
    if isinstance(value, int) and value.bit_length() > 333:  # repr refuses past 4300 digits
        power = math.floor(math.log10(abs(value)))  # a float's log: one too high just below 10**n
        return f"<a whole number of {power + (abs(value) >= 10**power)} digits>"
    text = repr(value)
    if len(text) <= 100:
        return text
    return f"{text[:48]}…{text[-48:]} ({len(text)} characters)"


def _number(name: str, value: Any) -> None:
    """Check the numeric argument ``name`` of ``inject()`` against its range; a ``ValueError`` if out."""
    rule = _RANGES[name]
    if value is None and rule.optional:
        return
    if isinstance(value, bool) or not isinstance(value, int if rule.whole else (int, float)):
        problem = "not a whole number" if rule.whole else "not a number"
    elif not rule.low <= value <= rule.high:  # Python compares int and float exactly; nan is never in
        problem = "out of range"
    else:
        return
    raise ValueError(
        f"inject(): {name}={_shown(value)} is {problem}; give {rule.kind} from {rule.low} to {rule.high}."
    )


def _fault_path(path: Any) -> str:
    """``inject()``'s ``path`` as a checked name relative to the server's URL (a glob may match several)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(
            f"inject(): path={_shown(path)} is a {type(path).__name__}, not a path; give a str or "
            "os.PathLike path relative to the server's URL."
        )
    if not path.strip("/"):
        raise ValueError(f"inject(): path={path!r} is empty; give a path relative to the server's URL.")
    return check_name(path.lstrip("/"), where="inject() path")


def _check_together(spec: FaultSpec) -> None:
    """Refuse arguments that each are valid but contradict one another."""
    if spec.cut_after is not None and spec.stall_after is not None:
        raise ValueError(
            f"inject(): cut_after={spec.cut_after!r} and stall_after={spec.stall_after!r} were both given; "
            "a response is either cut or stalled, so give one of them."
        )
    shaped = [name for name in ("rate", "cut_after", "stall_after") if getattr(spec, name) is not None]
    if spec.status is not None and shaped:
        raise ValueError(
            f"inject(): status={spec.status} answers with no file, so {shaped[0]} has nothing to "
            f"act on; give status or {shaped[0]}, not both."
        )


@dataclass(frozen=True)
class FaultSpec:
    """One checked fault: what it matches (decoded URL path globs) and what it does."""

    #: ``fnmatch`` patterns of the decoded URL path, one per URL prefix of the handle.
    patterns: tuple[str, ...]
    #: The path as the test gave it, relative to the handle's URL.
    path: str
    delay: float = 0.0
    rate: float | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    status: int | None = None
    times: int | None = None

    @classmethod
    def make(
        cls, path: str | os.PathLike[str], options: dict[str, Any], prefixes: tuple[str, ...] = ("",)
    ) -> FaultSpec:
        """Check the arguments of ``inject()`` (``options``: all but ``path``); a bad one is a ``ValueError``.

        ``prefixes`` are the percent-encoded URL paths the handle's files are served under.
        """
        # Python checks the keywords (they are the fields), then each value is checked once, here.
        given = cls((), _fault_path(path), **options)
        for name in _RANGES:
            _number(name, getattr(given, name))
        _check_together(given)
        patterns = tuple(glob.escape(unquote(prefix).rstrip("/")) + "/" + given.path for prefix in prefixes)
        return replace(given, patterns=patterns, delay=float(given.delay))

    @property
    def shapes(self) -> bool:
        """Whether it changes how a file's body is sent."""
        return self.rate is not None or self.cut_after is not None or self.stall_after is not None

    def matches(self, path: str) -> bool:
        """Whether it applies to a request for the decoded URL ``path``, however it is spelled.

        aiohttp's static route serves ``/sub//a.raw``, ``/sub/./a.raw``, ``/sub/x/../a.raw`` and
        ``/sub/a.raw/`` as ``/sub/a.raw``, so a fault matches the path they all resolve to (issue 17).
        """
        resolved = "/" + normalized(path)
        return any(fnmatchcase(resolved, pattern) for pattern in self.patterns)

    def label(self) -> str:
        """``cut_after=1024, times=1``: what the request log shows for a request it hit."""
        effects = {
            "delay": self.delay or None,
            "rate": self.rate,
            "cut_after": self.cut_after,
            "stall_after": self.stall_after,
            "status": self.status,
            "times": self.times,
        }
        shown = [f"{name}={_plain(value)}" for name, value in effects.items() if value is not None]
        return ", ".join(shown) or "no effect"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patterns"] = list(self.patterns)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Rebuild a spec sent over Jumpstarter's wire, where numbers arrive as floats."""

        def whole(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        rate = data.get("rate")
        return cls(
            patterns=tuple(str(pattern) for pattern in data["patterns"]),
            path=str(data["path"]),
            delay=float(data.get("delay") or 0.0),
            rate=None if rate is None else float(rate),
            cut_after=whole("cut_after"),
            stall_after=whole("stall_after"),
            status=whole("status"),
            times=whole("times"),
        )


def _plain(value: float) -> str:
    """``3`` for 3.0, ``0.5`` for 0.5: numbers as a user would write them."""
    return str(int(value)) if float(value).is_integer() else repr(value)


class _Entry:
    """A fault on one server: its spec, its hits, and whether it was cleared."""

    def __init__(self, spec: FaultSpec, namespace: str | None) -> None:
        self.spec = spec
        #: The namespace it was injected through, which it ends with; None for the whole server.
        self.namespace = namespace
        self.hits = 0
        #: Set once: waiting responses poll it and end.
        self.cleared = threading.Event()


class FaultRegistry:
    """The faults of one server; added and cleared from any thread, matched on the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._ids = itertools.count(1)

    def add(self, spec: FaultSpec, namespace: str | None = None) -> str:
        """Start applying ``spec`` to the requests that match it, until ``namespace`` ends; return its id."""
        with self._lock:
            fault_id = f"fault-{next(self._ids)}"
            self._entries[fault_id] = _Entry(spec, namespace)
        return fault_id

    def clear(self, fault_id: str) -> int:
        """Stop applying the fault and release the responses it holds; return its hits (0 if unknown)."""
        with self._lock:
            entry = self._entries.pop(fault_id, None)
        if entry is None:
            return 0
        entry.cleared.set()
        return entry.hits

    def clear_all(self, namespaces: set[str] | None = None) -> None:
        """Clear every fault, or those injected through one of ``namespaces``."""
        with self._lock:
            ended = [
                fault_id
                for fault_id, entry in self._entries.items()
                if namespaces is None or entry.namespace in namespaces
            ]
            entries = [self._entries.pop(fault_id) for fault_id in ended]
        for entry in entries:
            entry.cleared.set()

    def hits(self, fault_id: str) -> int:
        """How many requests the fault applied to; a ``KeyError`` once it was cleared."""
        with self._lock:
            entry = self._entries.get(fault_id)
            if entry is None:
                raise KeyError(f"no fault {fault_id!r} on this server; it was cleared or never injected")
            return entry.hits

    def list(self) -> list[dict[str, Any]]:
        """The faults applying now, oldest first: their id, hits and spec."""
        with self._lock:
            return [
                {"id": fault_id, "hits": entry.hits, **entry.spec.as_dict()}
                for fault_id, entry in self._entries.items()
            ]

    def match(self, path: str) -> _Entry | None:
        """The oldest fault applying to a request for the decoded ``path``, counted as hit."""
        with self._lock:
            for entry in self._entries.values():
                spec = entry.spec
                if (spec.times is None or entry.hits < spec.times) and spec.matches(path):
                    entry.hits += 1
                    return entry
        return None


async def _hold(entry: _Entry, request: Any, seconds: float) -> None:
    """Wait ``seconds`` (forever for ``inf``), less if the fault is cleared or the client leaves."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while not entry.cleared.is_set():
        transport = request.transport
        left = until - loop.time()
        if left <= 0 or transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(POLL, left))


class FaultMiddleware:
    """The outermost middleware: applies the first matching fault to each request."""

    __middleware_version__ = 1

    def __init__(self, registry: FaultRegistry) -> None:
        self.registry = registry

    async def __call__(self, request: Request, handler: Handler) -> StreamResponse:
        entry = self.registry.match(request.path)
        if entry is None:
            return await handler(request)
        from aiohttp import web

        from .serving import FAULT_KEY, INJECTED_KEY, SHAPER_KEY

        spec = entry.spec
        request[FAULT_KEY] = spec.label()
        if spec.delay:
            await _hold(entry, request, spec.delay)
        if spec.status is not None:
            headers = {"Retry-After": RETRY_AFTER} if spec.status == 503 else None
            request[INJECTED_KEY] = True
            return web.Response(status=spec.status, headers=headers)
        if spec.shapes:
            request[SHAPER_KEY] = Shaper(request, entry)
        return await handler(request)


class Shaper:
    """Sends one file body slowly (``rate``), then cuts it (``cut_after``) or holds it (``stall_after``)."""

    def __init__(self, request: Any, entry: _Entry) -> None:
        self._request = request
        self._entry = entry

    async def send(self, writer: AbstractStreamWriter, fobj: Any, offset: int, count: int) -> int:
        from .serving import PROGRESS_KEY

        spec = self._entry.spec
        progress = self._request[PROGRESS_KEY]
        end = min([count, *(n for n in (spec.cut_after, spec.stall_after) if n is not None)])
        piece = PIECE if spec.rate is None else max(1024, min(PIECE, int(spec.rate / 20)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        fd = fobj.fileno()
        while progress.sent < end:
            data = await loop.run_in_executor(
                None, os.pread, fd, min(piece, end - progress.sent), offset + progress.sent
            )
            if not data:  # the file shrank under us
                break
            await writer.write(data)
            progress.sent += len(data)
            if spec.rate is not None:
                await writer.drain()
                ahead = started + progress.sent / spec.rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if progress.sent >= count:
            return int(progress.sent)
        await writer.drain()
        if spec.stall_after is not None:
            await _hold(self._entry, self._request, math.inf)
        # The connection ends with the body short of its Content-Length: the client sees it cut.
        transport = self._request.transport
        if transport is not None:
            transport.close()
        raise ConnectionResetError(f"fault: the body was cut after {progress.sent} of {count} bytes")


class FaultBackend(Protocol):
    """What a :class:`Fault` needs of the handle that injected it."""

    def _clear_fault(self, fault_id: str) -> int: ...

    def _fault_hits(self, fault_id: str) -> int: ...


class Fault:
    """A fault injected by ``http_server.inject()``: how often it hit, and how to end it early.

    It ends by itself with the test that injected it.
    """

    def __init__(self, owner: FaultBackend, fault_id: str, spec: FaultSpec) -> None:
        self._owner = owner
        #: The server's id of the fault.
        self.id = fault_id
        self.spec = spec
        self._final_hits: int | None = None

    @property
    def path(self) -> str:
        """The path (or glob) it matches, relative to the server's URL."""
        return self.spec.path

    @property
    def active(self) -> bool:
        """Whether it still applies (not cleared)."""
        return self._final_hits is None

    @property
    def hits(self) -> int:
        """How many requests it applied to so far (on an exporter, read from the exporter)."""
        if self._final_hits is not None:
            return self._final_hits
        return self._owner._fault_hits(self.id)

    def clear(self) -> None:
        """Stop applying it; stalled and delayed responses it holds end now (a stalled one is cut)."""
        if self._final_hits is None:
            self._final_hits = self._owner._clear_fault(self.id)

    def __repr__(self) -> str:
        state = "active" if self.active else "cleared"
        return f"<Fault {self.path!r} {self.spec.label()} {state}>"


@contextmanager
def marked_faults(node: pytest.Item, server: Any) -> Iterator[None]:
    """Inject the ``http_fault`` markers of ``node`` into ``server``; clear its faults at the end."""
    import pytest

    from .markers import fault_markers

    try:
        for kwargs in fault_markers(node):
            try:
                server.inject(**kwargs)
                continue
            except (ValueError, FaultsUnavailable) as exc:
                problem = str(exc)
            pytest.fail(f"@pytest.mark.http_fault: {problem}", pytrace=False)
        yield
    finally:
        server.clear_faults()
