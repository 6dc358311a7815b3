"""One event-loop thread per process, where every loopback server runs.

Starting and stopping the driver's aiohttp server on a loop that lives for the whole process
costs well under a millisecond; a Jumpstarter session per server would cost far more.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

T = TypeVar("T")


class _LoopThread:
    """An anyio blocking portal on a daemon thread of its own, started on first use.

    Counted by its users (one per pytest config; pytester nests runs in one process), and
    stopped when the last one leaves. A daemon thread, unlike anyio's own portal thread, lets a
    script that used a ``LoopbackServer`` without pytest exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._users = 0

    def portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready: queue.Queue[BlockingPortal] = queue.Queue()
                self._thread = threading.Thread(
                    target=_serve_portal, args=(ready,), name="pytest-jumpstarter-http loop", daemon=True
                )
                self._thread.start()
                self._portal = ready.get()
            return self._portal

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._portal is None or self._thread is None:
                return
            portal, thread, self._portal, self._thread = self._portal, self._thread, None, None
        portal.call(portal.stop)
        thread.join()


def _serve_portal(ready: queue.Queue[BlockingPortal]) -> None:
    import anyio
    from anyio.from_thread import BlockingPortal

    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.put(portal)
            await portal.sleep_until_stopped()

    anyio.run(main, backend="asyncio")


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
