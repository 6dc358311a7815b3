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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A crashed xdist worker stays a zombie, which kill() still finds, until the controller reaps
    # it at the end of the run: long after the last live worker has left.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


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
            state["users"] = [pid for pid in state.get("users", []) if _alive(pid)]
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
            if os.getpid() not in state["users"]:
                state["users"].append(os.getpid())

    def leave(self, http: Any | None) -> None:
        """Stop using the server; the last user stops it, if one of its users started it.

        ``http`` is None when the server cannot be reached any more: leave without stopping it.
        """
        with self._state() as state:
            state["users"] = [pid for pid in state["users"] if pid != os.getpid()]
            if not state["users"] and state["started"]:
                state["started"] = False
                if http is not None:
                    http.stop()
