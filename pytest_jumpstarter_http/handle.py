"""The handle every ``http_server`` fixture yields, whatever the backend."""

from __future__ import annotations

import ipaddress
import os
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from .names import check_name, url_path

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


def format_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 literals in brackets and no trailing slash."""
    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host.split("%")[0]).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}"


class HttpServerHandle(ABC):
    """A running HTTP server serving files to the device under test.

    Yielded by the ``http_server`` fixture and made by ``http_server_factory``; annotate with
    it: ``def test_flash(http_server: HttpServerHandle)``.
    """

    backend: Literal["loopback", "exporter"]
    #: The bound address (an exporter's server reports its own).
    host: str
    #: The bound port.
    port: int
    #: The server's base URL as the device under test sees it, with no trailing slash.
    url: str
    #: The local directory served (on an exporter: the local staging directory), or None.
    root: Path | None

    @property
    @abstractmethod
    def client(self) -> Any:
        """The Jumpstarter ``HttpServerClient`` that drives this server."""

    def url_for(self, name: str) -> str:
        """The percent-encoded URL of ``name`` (a path relative to the root), published first."""
        self.publish(check_name(name, where="url_for() name"))
        return self.url + url_path(name)

    @abstractmethod
    def stage(self, src: str | os.PathLike[str], name: str | None = None) -> str:
        """Make the local file ``src`` available as ``name`` (default: its file name); return its URL."""

    @abstractmethod
    def publish(self, name: str | None = None) -> None:
        """Make what is new or changed in ``root`` (or just ``name``) available to the device."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server (if this handle started it) and remove what it created."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.url} root={self.root}>"
