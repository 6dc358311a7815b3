"""Files to an exporter: each content crosses the wire once, then is copied on the exporter itself.

The exporter keeps every content the plugin sent under ``objects/<sha256>`` of its served root.
Putting a file at a served name is then a copy made by the exporter (``storage.copy``): across
tests, xdist workers and runs, a content is sent once per exporter for as long as it keeps it.

Every write goes to a ``.part`` name and is renamed into place: a reader never sees half a file,
and two uploads of one name never interleave (Jumpstarter's storage would mix their bytes).
Processes of this machine that want the same content take turns (``locks.held``): the second
finds the object there and sends nothing. An upload killed half-way leaves a ``.part`` behind;
the next process that finds one made on this machine, whose lock is free, removes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import locks

log = logging.getLogger("pytest_jumpstarter_http.uploads")

#: Everything the plugin puts on an exporter lives below this folder of its served root.
TOP = "pytest-jumpstarter-http"
OBJECTS = f"{TOP}/objects"
#: Uploads this large get a progress line in the terminal.
PROGRESS_BYTES = 64 << 20
#: A file changed less than this long before it was hashed may change again unseen by its ctime.
_RACY_NS = 100_000_000
#: Tells this machine's partial uploads from another's, which this machine's locks know nothing of.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class Digests:
    """The sha256 of local files, computed once per version of a file.

    A version is known by device, inode, size, mtime and ctime: every write changes the ctime,
    which, unlike the mtime (``cp -p``, ``tar -x``, reproducible builds), cannot be set back.
    The kernel stamps it from a clock that moves in ticks of a few milliseconds, so a file
    changed that recently is hashed again next time rather than remembered (git's "racy" files).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[int, ...], str] = {}

    def of(self, fd: int) -> str:
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key in self._known:
            return self._known[key]
        sha = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            sha.update(chunk)
            offset += len(chunk)
        if time.time_ns() - stat.st_ctime_ns > _RACY_NS:
            self._known[key] = sha.hexdigest()
        return sha.hexdigest()


class Store:
    """What one process has put on one exporter's HttpServer storage, and how it puts more."""

    def __init__(
        self,
        http: Any,
        exporter: str,
        digests: Digests,
        timeout: float,
        progress: Callable[[str], None] | None,
    ) -> None:
        self._storage = http.storage
        self._lock_prefix = f"{http.uuid}:"
        self._exporter = exporter
        self._digests = digests
        self._timeout = timeout
        self._progress = progress
        #: What this process knows each served name holds: name -> sha256.
        self._placed: dict[str, str] = {}
        #: Objects this process sent, or found and checked once.
        self._objects: set[str] = set()
        self._sweep_partials()

    def put(self, fd: int, label: str, target: str) -> None:
        """Make the exporter serve the open local file ``fd`` (named ``label`` in messages) as ``target``."""
        digest = self._digests.of(fd)
        if self._placed.get(target) == digest or self._holds(target, digest):
            self._placed[target] = digest
            return
        self._ensure_object(fd, digest, label)
        self._replace(f"{OBJECTS}/{digest}", target)
        self._placed[target] = digest

    def _holds(self, path: str, digest: str) -> bool:
        """Whether ``path`` on the exporter holds the content ``digest`` (a mirror kept from a past run)."""
        return bool(self._storage.exists(path)) and self._storage.hash(path, "sha256") == digest

    def forget(self, folder: str) -> None:
        """Forget what this process placed below ``folder`` (it was removed from the exporter)."""
        for target in [target for target in self._placed if target.startswith(folder)]:
            del self._placed[target]

    def _ensure_object(self, fd: int, digest: str, label: str) -> None:
        if digest in self._objects:
            return
        obj = f"{OBJECTS}/{digest}"
        with locks.held(self._lock_prefix + digest, self._timeout * 10):
            if self._holds(obj, digest):
                self._objects.add(digest)
                return
            if self._storage.exists(obj):
                log.warning("object %s on %s did not hold its content; sending it again", obj, self._exporter)
            partial = f"{OBJECTS}/.part-{digest}-{_HOST_TAG}-{uuid.uuid4().hex[:8]}"
            with self._progress_lines(label, os.fstat(fd).st_size):
                self._storage.write_from_path(partial, f"/proc/self/fd/{fd}")
            self._storage.rename(partial, obj)
        self._objects.add(digest)
        log.info("sent %s to %s as %s", label, self._exporter, obj)

    def _replace(self, source: str, target: str) -> None:
        """Copy ``source`` to ``target`` on the exporter, replacing it whole."""
        partial = f"{target}.part-{_HOST_TAG}-{uuid.uuid4().hex[:8]}"
        self._storage.copy(source, partial)
        self._storage.rename(partial, target)

    @contextmanager
    def _progress_lines(self, label: str, size: int) -> Iterator[None]:
        say = self._progress if size >= PROGRESS_BYTES else None
        mib = size / (1 << 20)
        if say:
            say(f"jumpstarter-http: staging {label} ({mib:.1f} MiB) to {self._exporter} ...")
        began = time.monotonic()
        with _quiet_progress():
            yield
        if say:
            took = max(time.monotonic() - began, 1e-6)
            say(f"jumpstarter-http: staged {label} in {took:.1f} s ({mib / took:.0f} MiB/s)")

    def _sweep_partials(self) -> None:
        """Remove what an upload from this machine left when it was killed half-way."""
        if not self._storage.exists(f"{OBJECTS}/"):
            return
        for path in list(self._storage.list(f"{OBJECTS}/")):
            name = path.rsplit("/", 1)[-1]
            digest, _, host = name.removeprefix(".part-").partition("-")
            if not name.startswith(".part-") or not host.startswith(_HOST_TAG):
                continue
            lock = locks.try_hold(self._lock_prefix + digest)
            if lock is not None:  # nobody on this machine is sending it now
                with lock:
                    self._storage.delete(path)
                log.info("removed %s, left by an upload that was killed", path)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """The Jumpstarter client draws a rich progress bar per transfer unless TERM is dumb."""
    saved = os.environ.get("TERM")
    os.environ["TERM"] = "dumb"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TERM"]
        else:
            os.environ["TERM"] = saved
