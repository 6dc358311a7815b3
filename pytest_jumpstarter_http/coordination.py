"""Sharing one exporter's HttpServer between processes (xdist workers, concurrent runs) safely.

Every connection to one exporter session drives the same driver instance: ``start()`` restarts
a running server under everyone's downloads and ``stop()`` stops it for all. So the processes on
this machine that use one server agree, under a file lock, on three things: the first one starts
it only if it is not running, nobody restarts it, and the last one to leave stops it only if one
of them started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_DIR = Path(tempfile.gettempdir()) / "pytest-jumpstarter-http"


def _identity(pid: int) -> str | None:
    """``pid:start-time`` of a live process, or None once it is gone.

    The start time tells a user from a later process that got its pid back. A crashed xdist
    worker stays a zombie, which kill() still finds, until the controller reaps it at the end of
    the run, long after the last live worker has left: a zombie counts as gone.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here: trust the pid alone
        return str(pid) if _exists(pid) else None
    if fields[0] in ("Z", "X"):
        return None
    return f"{pid}:{fields[19]}"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _alive(user: str) -> bool:
    return _identity(int(str(user).partition(":")[0])) == str(user)


class SharedServer:
    """The agreement about one exporter's HttpServer, kept in a small JSON file."""

    def __init__(self, where: str, driver_uuid: str) -> None:
        key = hashlib.sha256(f"{where}\0{driver_uuid}".encode()).hexdigest()[:24]
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.path = STATE_DIR / f"{key}.json"

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                state = {}
            # A worker that crashed never left: forget it, so the last live one can stop the server.
            state["users"] = [user for user in state.get("users", []) if _alive(user)]
            state.setdefault("started", False)
            try:
                yield state
            finally:
                # Even when starting or stopping failed: who is still using the server is known.
                self.path.write_text(json.dumps(state))

    def join(self, http: Any) -> None:
        """Use the server; start it only when it is not running."""
        with self._state() as state:
            if http.get_port() == 0:
                http.start()
                state["started"] = True
            elif not state["users"]:
                state["started"] = False  # it ran before any of us came
            me = _identity(os.getpid())
            if me not in state["users"]:
                state["users"].append(me)

    def leave(self, http: Any | None) -> None:
        """Stop using the server; the last user stops it, if one of its users started it.

        ``http`` is None when the server cannot be reached any more: leave without stopping it.
        """
        with self._state() as state:
            me = _identity(os.getpid())
            state["users"] = [user for user in state["users"] if user != me]
            if not state["users"] and state["started"]:
                state["started"] = False
                if http is not None:
                    http.stop()
