"""pytest fixtures that serve files to a device under test through Jumpstarter's HttpServer driver."""

from .handle import HttpServerHandle
from .loopback import LoopbackServer
from .runtime import HttpServerFactory

__all__ = ["HttpServerFactory", "HttpServerHandle", "LoopbackServer"]
