"""pytest fixtures that serve files to a device under test through Jumpstarter's HttpServer driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .deviceapi import HttpResponse, Reply, Upload
    from .handle import HttpServerHandle
    from .loopback import LoopbackServer
    from .records import Fault, HttpRequest
    from .runtime import HttpServerFactory

__all__ = [
    "Fault",
    "HttpRequest",
    "HttpResponse",
    "HttpServerFactory",
    "HttpServerHandle",
    "LoopbackServer",
    "Reply",
    "Upload",
]

_HOMES = {
    "Fault": "records",
    "HttpRequest": "records",
    "HttpResponse": "deviceapi",
    "Reply": "deviceapi",
    "Upload": "deviceapi",
    "HttpServerHandle": "handle",
    "LoopbackServer": "loopback",
    "HttpServerFactory": "runtime",
}


def __getattr__(name: str) -> Any:
    # pytest imports the plugin in every run of an environment that has it installed; import the
    # exported classes (and what they pull in) only when someone asks for them.
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list[str]:
    # PEP 562: the lazy exports are no module attributes until first use, so name them here for
    # dir() and tab completion, without importing them; the typing helpers above are not the API.
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
