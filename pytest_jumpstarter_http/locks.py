"""Locks shared by the processes of one machine, without a file: Linux abstract Unix sockets.

A lock file in a shared folder is a name another user can create first or plant a link at; an
abstract socket has no file. Binding its name is holding the lock, and the kernel lets go of it
when the process ends, so a killed worker never leaves a lock behind.

Any local user can bind a name first, though, and hold it for ever. So a lock is only an
optimisation (two processes that want one content send it once): a caller that cannot have it
in time goes on without it, and must be correct without it. A name held that long is
remembered as squatted, so that the process waits for it once, not at every use.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("pytest_jumpstarter_http.locks")

#: Keys this process could not hold in time: never waited for again.
_squatted: set[str] = set()


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


def _wait_for(key: str, timeout: float) -> socket.socket | None:
    deadline = time.monotonic() + timeout
    while (sock := try_hold(key)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return sock


@contextmanager
def held(key: str, timeout: float, *, purpose: str = "") -> Iterator[bool]:
    """Hold the lock ``key`` for the block if it can be had within ``timeout`` seconds; yield whether it is.

    ``purpose`` (``"upload of image.raw"``) names the lock in the warning logged when it cannot
    be had. A key that was not had in time is only tried once, without waiting, after that.
    """
    sock = try_hold(key) if key in _squatted else _wait_for(key, timeout)
    if sock is None:
        if key not in _squatted:
            _squatted.add(key)
            address = _address(key)[1:].decode()
            log.warning(
                "the lock for the %s was held by another process for over %g s (abstract socket @%s, "
                "its holder is shown by `ss -xlp`); going on without it for the rest of the run",
                purpose or repr(key),
                timeout,
                address,
            )
        yield False
        return
    with sock:
        yield True
