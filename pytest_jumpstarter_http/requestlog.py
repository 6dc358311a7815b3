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

    Entries are numbered from 0 for the server's whole life; past ``limit`` the oldest go.
    A file download is in ``in_flight()`` from its response's start until its body is sent or cut; its
    entry follows.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._entries: deque[HttpRequest] = deque(maxlen=limit)
        self.total = 0
        self._lock = threading.Lock()
        self._running: dict[int, Progress] = {}

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
            self.total += 1

    def since(self, start: int) -> list[HttpRequest]:
        """The entries numbered ``start`` and later that are still kept."""
        with self._lock:
            first = self.total - len(self._entries)
            return list(self._entries)[max(0, start - first) :]


def access_logger_class(log: RequestLog) -> type:
    """An aiohttp access logger that records into ``log``: it sees each response once it is sent."""
    from aiohttp.abc import AbstractAccessLogger

    class Recorder(AbstractAccessLogger):
        def log(self, request: Any, response: Any, duration: float) -> None:
            log.add(record(request, response, duration))

        @property
        def enabled(self) -> bool:
            return True

    return Recorder


def record(request: Any, response: Any, duration: float) -> HttpRequest:
    from .faults import fault_of

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
        bad = [entry for entry in entries if status_matches(entry.status, fail_on)]
        if bad and report.passed:
            report.outcome = "failed"
            report.longrepr = f"--http-fail-on {','.join(fail_on)}: {server.label} answered " + "; ".join(
                entry.line() for entry in bad
            )
    report.sections.append(("Captured HTTP requests", "\n".join(lines)))
