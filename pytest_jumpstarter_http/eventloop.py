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


class _LoopThread:
    """anyio's blocking portal on a thread of its own, started on first use.

    Counted by its users (one per pytest config; pytester nests runs in one process), and
    stopped when the last one leaves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._users = 0

    def portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                from anyio.from_thread import start_blocking_portal

                self._context = start_blocking_portal(backend="asyncio")
                self._portal = self._context.__enter__()
            return self._portal

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._context is None:
                return
            context, self._context, self._portal = self._context, None, None
        context.__exit__(None, None, None)


_thread = _LoopThread()
portal = _thread.portal
acquire = _thread.acquire
release = _thread.release


def call(func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
    """Run the coroutine function on the loop thread and wait for it, at most ``timeout`` seconds."""
    if timeout is None:
        return portal().call(func, *args)

    async def bounded() -> T:
        import anyio

        with anyio.fail_after(timeout):
            return await func(*args)

    return portal().call(bounded)
