"""Network faults on the wire: the server's side of ``http_server.inject()``.

:class:`FaultRegistry` holds a server's faults, each for as long as the namespace it came
through (see :mod:`.namespaces`). :class:`FaultMiddleware`, outermost but for the request
numbering, waits (``delay``) and refuses (``status``) before the static route runs; what changes
a file's body (``rate``, ``cut_after``, ``stall_after``) is a :class:`Shaper` that ``ServedFile``
hands the body to, so ranges, ETags, HEAD and 304 stay aiohttp's. Runs in the server; never
imports pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Final

from .records import FaultSpec
from .serving import FAULT_KEY, INJECTED_KEY, PROGRESS_KEY, SHAPER_KEY

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.typedefs import Handler
    from aiohttp.web import Request, StreamResponse

__all__ = ["FaultMiddleware", "FaultRegistry", "Shaper"]

#: Seconds between two looks at whether a waiting response was released or its client left.
POLL: Final = 0.05
#: Largest piece of a shaped body, or of an upload, read and written at once.
PIECE: Final = 256 << 10
#: What a 503 fault tells the client to wait before it tries again, in seconds.
RETRY_AFTER: Final = "1"


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

    def clear(self, fault_id: str, namespace: str | None) -> int:
        """Stop applying the fault injected through ``namespace`` and release the responses it
        holds; return its hits (0 if unknown: ended, never injected, or another namespace's)."""
        with self._lock:
            entry = self._entries.get(fault_id)
            if entry is None or entry.namespace != namespace:
                return 0
            del self._entries[fault_id]
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

    def hits(self, fault_id: str, namespace: str | None) -> int:
        """How many requests the fault injected through ``namespace`` applied to; a ``KeyError``
        once it was cleared (or for another namespace's)."""
        with self._lock:
            entry = self._entries.get(fault_id)
            if entry is None or entry.namespace != namespace:
                raise KeyError(f"no fault {fault_id!r} on this server; it was cleared or never injected")
            return entry.hits

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
    """After the numbering, before all else: applies the first matching fault to each request."""

    __middleware_version__ = 1

    def __init__(self, registry: FaultRegistry) -> None:
        self.registry = registry

    async def __call__(self, request: Request, handler: Handler) -> StreamResponse:
        entry = self.registry.match(request.path)
        if entry is None:
            return await handler(request)
        from aiohttp import web

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
        spec = self._entry.spec
        progress = self._request[PROGRESS_KEY]
        end = min([count, *(n for n in (spec.cut_after, spec.stall_after) if n is not None)])
        await self._copy(writer, fobj.fileno(), offset, end)
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

    async def _copy(self, writer: AbstractStreamWriter, fd: int, offset: int, end: int) -> None:
        """Send the body up to ``end``, at ``rate`` if the fault has one; stop early if the file shrank."""
        rate = self._entry.spec.rate
        progress = self._request[PROGRESS_KEY]
        piece = PIECE if rate is None else max(1024, min(PIECE, int(rate / 20)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while progress.sent < end:
            size = min(piece, end - progress.sent)
            data = await loop.run_in_executor(None, os.pread, fd, size, offset + progress.sent)
            if not data:  # the file shrank under us
                return
            await writer.write(data)
            progress.sent += len(data)
            if rate is not None:
                await writer.drain()
                await asyncio.sleep(max(0.0, started + progress.sent / rate - loop.time()))
