"""Locks shared by the processes of one machine, without a file: Linux abstract Unix sockets.

A lock file in a shared folder is a name another user can create first or plant a link at; an
abstract socket has no file. Binding its name is holding the lock, and the kernel lets go of it
when the process ends, so a killed worker never leaves a lock behind.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _address(key: str) -> bytes:
    return b"\0pytest-jumpstarter-http/" + hashlib.sha256(key.encode()).hexdigest()[:40].encode()


def try_hold(key: str) -> socket.socket | None:
    """The lock ``key`` if it is free now (close the socket to let go of it), else None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_address(key))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        return None
    return sock


@contextmanager
def held(key: str, timeout: float) -> Iterator[None]:
    """Hold the lock ``key`` for the block; wait for it at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (sock := try_hold(key)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process held the lock for {key!r} longer than {timeout:g} s")
        time.sleep(0.01)
    with sock:
        yield
