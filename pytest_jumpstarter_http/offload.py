"""Copy a large file body into its socket from worker threads, the server's loop only waiting.

On loopback ``sendfile`` is the CPU copying bytes, and a server is one event loop in one thread:
four downloads at once were copied on one core while nginx's workers used all of them (0.85 to
0.9 x nginx, bench ``large_file``). ``os.sendfile`` releases the GIL, so here each *turn* (at
most :data:`TURN` bytes, only as much as the socket takes without blocking) runs in the loop's
default executor, and the loop waits for the socket to be writable again. A slow client never
holds a thread: its turn ends as soon as its socket is full.

Each turn works on a duplicate of the socket's descriptor, made on the loop and closed by the
turn itself, so a connection closed meanwhile never lets its number be reused under the copy.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .records import Progress

__all__ = ["CHUNK", "TURN", "send_turn"]

#: Bytes one turn copies at most before the loop looks at the connection again.
TURN: Final = 16 << 20
#: Seconds after which a turn whose socket is full hands the wait to the loop: a slow client
#: holds a worker thread no longer than this at a time.
TURN_SECONDS: Final = 0.05
#: Bytes per ``sendfile`` call, here and on the loop: small enough to count progress and notice a
#: closed connection.
CHUNK: Final = 4 << 20


async def send_turn(sock: int, src: int, at: int, left: int, progress: Progress) -> tuple[int, bool]:
    """Copy up to ``left`` bytes of the file ``src`` from offset ``at`` into the socket ``sock``, in a
    thread, adding them to ``progress.sent`` as they go; if the socket filled up, wait until it takes
    data again (or fails: the next turn says how). The bytes copied, and whether it filled up.

    ``sock`` must be open when this is called, as a transport not closing holds it; nothing here
    uses that number afterwards.
    """
    loop = asyncio.get_running_loop()
    # The loop's own to watch, as asyncio lets no one else watch a transport's descriptor.
    watched = os.dup(sock)
    try:
        sent, full = await _start(sock, src, at, min(left, TURN), progress)
        if full:
            await _writable(loop, watched)
        return sent, full
    finally:
        os.close(watched)


def _start(sock: int, src: int, at: int, count: int, progress: Progress) -> asyncio.Future[tuple[int, bool]]:
    """The turn, handed to a thread with a duplicate of ``sock`` that the thread closes."""
    turn = os.dup(sock)
    try:
        return asyncio.get_running_loop().run_in_executor(None, _copy, turn, src, at, count, progress)
    except BaseException:
        os.close(turn)
        raise


def _copy(sock: int, src: int, at: int, count: int, progress: Progress) -> tuple[int, bool]:
    """A turn, in a worker thread: it owns ``sock`` (a duplicate) and closes it.

    A socket that fills up is waited for here until the turn's time is up: handing the wait to
    the loop and the copy back to a thread costs two more wake-ups, which a busy machine makes
    slow (0.84 against 0.92 x nginx for one download with a core taken by another process).
    """
    done = 0
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    deadline = time.monotonic() + TURN_SECONDS
    try:
        while done < count:
            try:
                # A call at most a chunk long: ``progress`` counts what went, not what will.
                sent = os.sendfile(sock, src, at + done, min(CHUNK, count - done))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(math.ceil(left * 1000)):
                    return done, True
                continue
            if not sent:  # the file shrank under us
                break
            done += sent
            progress.sent += sent
        return done, False
    finally:
        os.close(sock)


async def _writable(loop: asyncio.AbstractEventLoop, sock: int) -> None:
    ready = loop.create_future()
    loop.add_writer(sock, _settle, ready)
    try:
        await ready
    finally:
        loop.remove_writer(sock)


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
