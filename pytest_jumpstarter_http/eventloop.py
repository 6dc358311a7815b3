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
    import asyncio

    from anyio.from_thread import BlockingPortal

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop with an anyio blocking portal, on a daemon thread of its own, started on first use.

    Counted by its users (pytest configs, pytester nesting runs in one process, and running
    servers), and stopped when the last one leaves. A daemon thread, unlike anyio's own portal
    thread, lets a script that used a ``LoopbackServer`` without pytest exit. Jumpstarter's
    sessions take the portal; the plugin's own calls go straight to the loop, which costs a
    third of a portal call on the per-test path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._users = 0

    def portal(self) -> BlockingPortal:
        return self._started()[0]

    def loop(self) -> asyncio.AbstractEventLoop:
        return self._started()[1]

    def _started(self) -> tuple[BlockingPortal, asyncio.AbstractEventLoop]:
        with self._lock:
            if self._portal is None or self._loop is None:
                ready: queue.Queue[tuple[BlockingPortal, asyncio.AbstractEventLoop]] = queue.Queue()
                self._thread = threading.Thread(
                    target=_serve_portal, args=(ready,), name="pytest-jumpstarter-http loop", daemon=True
                )
                self._thread.start()
                self._portal, self._loop = ready.get()
            return self._portal, self._loop

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._portal is None or self._thread is None:
                return
            portal, thread = self._portal, self._thread
            self._portal = self._thread = self._loop = None
        portal.call(portal.stop)
        thread.join()


def _serve_portal(ready: queue.Queue[tuple[BlockingPortal, asyncio.AbstractEventLoop]]) -> None:
    import asyncio

    import anyio
    from anyio.from_thread import BlockingPortal

    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.put((portal, asyncio.get_running_loop()))
            await portal.sleep_until_stopped()

    anyio.run(main, backend="asyncio")


_thread = _LoopThread()
portal = _thread.portal
acquire = _thread.acquire
release = _thread.release


def call(func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
    """Run the coroutine function on the loop thread and wait for it, at most ``timeout`` seconds."""
    import asyncio  # not at module level: every pytest run imports this module

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await func(*args)

    return asyncio.run_coroutine_threadsafe(bounded(), _thread.loop()).result()
