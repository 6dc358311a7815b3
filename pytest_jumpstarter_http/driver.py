"""A drop-in exporter driver: Jumpstarter's HttpServer, plus a log of the requests it answered.

Lab admins put it in an exporter config instead of the stock driver::

    export:
      http:
        type: pytest_jumpstarter_http.driver.RecordingHttpServer
        config: {root_dir: /var/lib/jumpstarter/http, host: 192.0.2.10, port: 8080}

and the test reports of pytest-jumpstarter-http then show what the device fetched. This module
runs on the exporter; the pytest plugin never imports it unless a client of it is built.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from jumpstarter.driver import export
from jumpstarter_driver_http.client import HttpServerClient
from jumpstarter_driver_http.driver import HttpServer
from pydantic.dataclasses import dataclass

from .requestlog import HttpRequest, RequestLog, install

#: Requests kept on the exporter; the oldest go first.
MAX_REQUESTS = 10_000


@dataclass(kw_only=True, config={"arbitrary_types_allowed": True})
class RecordingHttpServer(HttpServer):
    """HttpServer that records every request it answers (time, client, method, path, range, status)."""

    request_log: RequestLog = field(init=False, default_factory=lambda: RequestLog(MAX_REQUESTS))

    @classmethod
    def client(cls) -> str:
        return "pytest_jumpstarter_http.driver.RecordingHttpServerClient"

    @export
    async def start(self) -> None:
        await super().start()
        install(self.runner, self.request_log)

    @export
    def get_requests(self, start: int) -> tuple[int, list[dict[str, Any]]]:
        """The number of requests recorded so far, and those from number ``start`` on."""
        total = self.request_log.total  # numbers cross Jumpstarter's wire as floats
        return total, [entry.as_dict() for entry in self.request_log.since(int(start))]


class RecordingHttpServerClient(HttpServerClient):
    """Client of :class:`RecordingHttpServer`: an ``HttpServerClient`` that can read the request log."""

    def get_requests(self, start: int = 0) -> tuple[int, list[HttpRequest]]:
        total, entries = self.call("get_requests", start)
        return int(total), [HttpRequest.from_dict(entry) for entry in entries]
