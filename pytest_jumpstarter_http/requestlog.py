"""What the device actually fetched: every request a server answered, per test."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


class RequestLogUnavailable(RuntimeError):
    """The server keeps no request log (an exporter with the stock HttpServer driver)."""


@dataclass(frozen=True)
class HttpRequest:
    """One request a server answered."""

    time: float
    client: str
    method: str
    path: str
    range: str | None
    status: int
    bytes_sent: int
    duration: float
    #: False when the body was cut short: the client went away, or the server stopped.
    complete: bool = True
    #: The fault ``http_server.inject()`` applied to it (``cut_after=1024, times=1``), if any.
    fault: str | None = None
    #: Whether ``status`` was the fault's answer rather than the server's (``--http-fail-on`` skips it).
    injected: bool = False
    #: The server's number of the request, in the order requests started: a request belongs to
    #: the test during which it started, even if it ends in a later one.
    seq: int = -1
    #: ``path`` relative to the base URL of the handle that read it (``"rootfs.img"``), decoded;
    #: empty in an entry no handle has read.
    name: str = ""

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time % 1 * 1000):03d}"
        range_ = f" [{self.range}]" if self.range else ""
        return (
            f"{stamp} {self.client} {self.method} {self.path}{range_} -> {self.status}, "
            f"{self.bytes_sent} bytes in {self.duration * 1000:.1f} ms"
            + ("" if self.complete else " (cut short)")
            + (f" [fault: {self.fault}]" if self.fault else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpRequest:
        """Rebuild an entry sent over Jumpstarter's wire, where numbers arrive as floats."""
        return cls(
            time=float(data["time"]),
            client=str(data["client"]),
            method=str(data["method"]),
            path=str(data["path"]),
            range=data.get("range"),
            status=int(data["status"]),
            bytes_sent=int(data["bytes_sent"]),
            duration=float(data["duration"]),
            complete=bool(data.get("complete", True)),
            fault=None if data.get("fault") is None else str(data["fault"]),
            injected=bool(data.get("injected", False)),
            seq=int(data.get("seq", -1)),
        )


@dataclass
class Progress:
    """A file response's body: ``sent`` grows on the server's loop, anyone may read it.

    ``total`` is the body's length, None until the headers are out; ``complete`` turns True
    once the whole body went out.
    """

    method: str
    path: str
    client: str
    sent: int = 0
    total: int | None = None
    complete: bool = False


class RequestLog:
    """Requests in the order they finished; appended from the server's loop, read from tests.

    Requests are numbered from 0 for the server's whole life in the order they *started*
    (:meth:`start`), which is what a test's window is counted in; past ``limit`` the oldest
    entries go. A file download is in ``in_flight()`` from its response's start until its body
    is sent or cut; its entry follows.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._entries: deque[HttpRequest] = deque(maxlen=limit)
        #: How many requests started so far: the number the next one gets.
        self.started = 0
        self._lock = threading.Lock()
        self._running: dict[int, Progress] = {}

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

    def add(self, entry: HttpRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def since(self, start: int, prefix: str = "") -> list[HttpRequest]:
        """The kept entries of requests numbered ``start`` or later whose raw path starts with ``prefix``."""
        with self._lock:
            entries = list(self._entries)
        return [entry for entry in entries if entry.seq >= start and entry.path.startswith(prefix)]


def access_logger_class(log: RequestLog) -> type:
    """An aiohttp access logger that records into ``log``: it sees each response once it is sent."""
    from aiohttp.abc import AbstractAccessLogger

    class Recorder(AbstractAccessLogger):
        def log(self, request: Any, response: Any, duration: float) -> None:
            log.add(record(request, response, duration, log))

        @property
        def enabled(self) -> bool:
            return True

    return Recorder


def record(request: Any, response: Any, duration: float, log: RequestLog) -> HttpRequest:
    from .faults import INJECTED_KEY, fault_of
    from .serving import SEQ_KEY

    seq = request.get(SEQ_KEY)
    progress = getattr(response, "progress", None)  # serving.ServedFile's, once prepared
    return HttpRequest(
        time=time.time() - duration,
        client=str(request.remote),
        method=request.method,
        path=request.raw_path,
        range=request.headers.get("Range"),
        status=response.status,
        # With sendfile the writer never sees the file's bytes, so its counters hold only the
        # headers: a served file counts what it sent; for any other, the length it declared.
        bytes_sent=progress.sent if progress else response.content_length or 0,
        duration=duration,
        complete=progress.complete if progress else True,
        fault=fault_of(request),
        injected=bool(request.get(INJECTED_KEY, False)),
        # A request aiohttp refused before any middleware ran is numbered as it ends.
        seq=log.start() if seq is None else seq,
    )


def install(runner: Any, log: RequestLog) -> None:
    """Record every request a started aiohttp ``AppRunner`` answers from now on.

    The driver builds its AppRunner inside ``start()`` with aiohttp's default access log; each
    new connection's handler takes its access logger from the server's keyword arguments, and no
    connection is accepted before the coroutine that started the server yields.
    """
    runner.server._kwargs["access_log_class"] = access_logger_class(log)


_STATUS = re.compile(r"^[1-5](\d\d|xx)$")


def parse_statuses(text: str) -> tuple[str, ...]:
    """``"404,5xx"`` -> ``("404", "5xx")``; raises ValueError on anything else."""
    codes = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    bad = [code for code in codes if not _STATUS.match(code)]
    if bad or not codes:
        raise ValueError(", ".join(bad) or text)
    return codes


def status_matches(status: int, codes: Iterable[str]) -> bool:
    text = str(status)
    return any(code == text or (code.endswith("xx") and code[0] == text[0]) for code in codes)


def describe(entries: list[HttpRequest]) -> str:
    return "\n".join(entry.line() for entry in entries) if entries else "(no requests)"


def add_to_report(report: Any, servers: list[Any], fail_on: tuple[str, ...]) -> None:
    """Add each server's requests to a test's report; fail it on a status of ``--http-fail-on``."""
    lines = []
    for server in servers:
        try:
            entries = server.requests
        except RequestLogUnavailable as exc:
            lines.append(f"{server.label}: request log unavailable: {exc}")
            continue
        lines.append(f"{server.label}:\n{describe(entries)}")
        # A status the test injected (a fault's) is not the server failing.
        bad = [entry for entry in entries if not entry.injected and status_matches(entry.status, fail_on)]
        if bad and report.passed:
            report.outcome = "failed"
            report.longrepr = f"--http-fail-on {','.join(fail_on)}: {server.label} answered " + "; ".join(
                entry.line() for entry in bad
            )
    report.sections.append(("Captured HTTP requests", "\n".join(lines)))
