"""One event-loop thread per process, where every loopback server runs.

Starting and stopping the driver's aiohttp server on a loop that lives for the whole process
costs well under a millisecond; a Jumpstarter session per server would cost far more.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_context: AbstractContextManager[BlockingPortal] | None = None


def portal() -> BlockingPortal:
    """The process's blocking portal, started on first use."""
    global _portal, _context
    with _lock:
        if _portal is None:
            from anyio.from_thread import start_blocking_portal

            _context = start_blocking_portal(backend="asyncio")
            _portal = _context.__enter__()
        return _portal


def call(func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
    """Run the coroutine function on the loop thread and wait for it, at most ``timeout`` seconds."""
    if timeout is None:
        return portal().call(func, *args)

    async def bounded() -> T:
        import anyio

        with anyio.fail_after(timeout):
            return await func(*args)

    return portal().call(bounded)


def shutdown() -> None:
    """Stop the loop thread; the next :func:`portal` call starts a new one."""
    global _portal, _context
    with _lock:
        if _context is not None:
            context, _context, _portal = _context, None, None
            context.__exit__(None, None, None)
