"""Files pushed to an exporter: each content crosses the wire once, then is copied on the exporter itself.

The exporter keeps every content the plugin sent under ``objects/<sha256>`` of its served root.
Putting a file at a served name is then a copy made by the exporter (``storage.copy``): across
tests, xdist workers and runs, a content is sent once per exporter for as long as it keeps it.

Every write and every copy goes to a short partial name outside the served names and is
renamed into place: a reader never sees half a file, a killed copy leaves nothing at a served
name, two pushes of one name never interleave (Jumpstarter's storage would mix their bytes),
and a name as long as the storage allows (255 bytes a part) leaves room for the partial's.
Partials go to the ``parts`` folder a Store is given, which belongs to its process alone and is
removed by its owner; without one, to ``objects/`` as ``.part-<token>-<host>``, which the next
process of this machine removes if the push that made it was killed (its lock is free).

Nothing on the exporter is trusted unchecked. What was sent is the content hashed here if the
local file is still the settled version that was hashed (``Digests.holds``: a write would have
changed its ctime), as a RecordingHttpServer hashes what arrives; else the exporter hashes it
(``storage.hash``) before the rename that publishes it as ``objects/<sha256>``: a local file
that changed while it was sent is refused, not stored under a hash it does not have. An object
is verified when a process first uses it, and every copy of it is verified before the rename
that serves it: a copy of an object changed since (poisoned, or rotten) is thrown away, the
object is sent again from the local file, and copied again. The one exception is a name the
stock driver stages: it is copied from the process's *spare*, a checked copy of the object in a
folder of the process alone that no URL names, so no test can rewrite it through what it was
served. Its hash proves the object too, as a faithful copy holds what its source held: the
exporter hashes a staged content at most once per process, not once per test nor twice at its
first, and not at all when it was just sent from a settled file.

Processes of this machine that want the same content take turns (``locks.held``): the second
finds the object there and sends nothing. A lock is only that optimisation: one held by a
stranger is gone without after ``timeout``, at the cost of a second push.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from . import locks
from .beneath import PROBE, EscapesRoot, open_beneath
from .client import write_from_fd
from .records import OBJECTS, PROGRESS_BYTES, HttpPublishError, name_problem

log = logging.getLogger("pytest_jumpstarter_http.store")

#: A file changed less than this long before it was hashed may change again unseen by its ctime.
_RACY_NS = 100_000_000
#: Tells this machine's partial pushes from another's, which this machine's locks know nothing of.
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
        key = _version(stat)
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

    def holds(self, fd: int, digest: str) -> bool:
        """Whether the open file ``fd`` is still the version hashed as ``digest``, which had settled
        then: every write since would have changed its ctime."""
        return self._known.get(_version(os.fstat(fd))) == digest


def _version(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class SourceChanged(RuntimeError):
    """A local file changed while it was sent, or an exporter object changed while it was copied."""


class Store:
    """What one process has put on one exporter's HttpServer storage, and how it puts more."""

    def __init__(
        self,
        http: Any,
        exporter: str,
        digests: Digests,
        timeout: float,
        progress: Callable[[str], None] | None,
        *,
        parts: str | None = None,
        spares: str | None = None,
    ) -> None:
        """``parts``: an exporter folder of this process alone for partial writes and copies
        (removed by its owner), which only a RecordingHttpServer gives: it receives objects
        itself (``push``). None puts them in ``objects/``, swept by the next process.
        ``spares``: an exporter folder of this process alone, which no URL names, for one checked
        copy of each content staged (the stock driver's, which serves a copy per staged name)."""
        self._http = http
        self._pushes = parts is not None
        self._storage = http.storage
        self._parts = parts
        self._lock_prefix = f"{http.uuid}:"
        self._exporter = exporter
        self._digests = digests
        #: ``--http-timeout``: how long a lock is waited for, and a device for a name it asked.
        self.timeout = timeout
        self._progress = progress
        #: What this process knows each served name holds: name -> sha256.
        self._placed: dict[str, str] = {}
        #: Objects this process sent, or found and checked once.
        self._objects: set[str] = set()
        self._spares_folder = spares
        #: The contents of which this process made a spare.
        self._spares: set[str] = set()
        self._sweep_partials()

    def put(self, fd: int, label: str, target: str, *, spare: bool = False) -> None:
        """Make the exporter serve the open local file ``fd`` (named ``label`` in messages) as ``target``.

        ``spare``: copy it from this process's spare of the content (a store given ``spares``),
        made once: a name each test stages anew costs a copy, not a copy and a hash."""
        digest = self._digests.of(fd)
        # Every target is below this process's folder, of a random name: only what it placed there
        # can hold anything, so asking the exporter would tell nothing new.
        if self._placed.get(target) == digest:
            return
        if spare and self._spares_folder is not None:
            self._copy_spare(fd, digest, label, target)
        else:
            self._ensure_object(fd, digest, label)
            self._replace(fd, digest, label, target)
        self._placed[target] = digest

    def sent(self, fd: int, label: str) -> str:
        """The sha256 of the open local file ``fd``, whose content the exporter holds as an object,
        verified once by this process: what a name can be served from by reference."""
        digest = self._digests.of(fd)
        self._ensure_object(fd, digest, label)
        return digest

    def put_object(self, digest: str, target: str) -> None:
        """Copy the object ``digest``, which this process sent or checked, to ``target`` on the
        exporter, checked before its rename as every copy is."""
        if not self._copy(f"{OBJECTS}/{digest}", digest, target):
            raise SourceChanged(
                f"object {OBJECTS}/{digest} on exporter {self._exporter!r} changed since it was checked; "
                f"{target} was not kept."
            )
        self._placed[target] = digest

    def _holds(self, path: str, digest: str) -> bool:
        """Whether ``path`` on the exporter holds the content ``digest``."""
        if self._pushes and path == f"{OBJECTS}/{digest}":  # one call of a RecordingHttpServer
            return bool(self._http.holds(digest))
        return bool(self._storage.exists(path)) and self._storage.hash(path, "sha256") == digest

    def _copy_spare(self, fd: int, digest: str, label: str, target: str) -> None:
        """Copy this process's spare of ``digest`` to ``target``, making the spare first.

        A spare is a copy of the object, hashed as every copy is, in a folder of this process
        alone that no URL names: no test can rewrite it through what it was served, so its
        copies are not hashed again. One lost from under the store is made again, once; any other
        failure (the target is a folder, the exporter went) is raised as it is."""
        spare = f"{self._spares_folder}/{digest}"
        for again in (False, True):
            if digest not in self._spares:
                self._make_spare(fd, digest, label, spare)
                self._spares.add(digest)
            try:
                with self._partial() as partial:
                    self._storage.copy(spare, partial)
                    self._storage.rename(partial, target)
                return
            except Exception:
                if again or self._storage.exists(spare):
                    raise
                log.warning("spare %s on %s was removed; made again", spare, self._exporter)
                self._spares.discard(digest)

    def _make_spare(self, fd: int, digest: str, label: str, spare: str) -> None:
        """Place a copy of the object ``digest`` at ``spare``, sending the object first if it is
        not there. The copy's hash proves the object too (a faithful copy holds what its source
        held), which a first use would hash apart: one hash per content and process, not two."""
        if digest in self._objects:  # checked already: a copy, hashed as every copy is
            self._replace(fd, digest, label, spare)
            return
        obj = f"{OBJECTS}/{digest}"
        with locks.held(self._lock_prefix + digest, self.timeout, purpose=f"push of {label}"):
            if self._storage.exists(obj):
                if self._copy(obj, digest, spare):
                    self._objects.add(digest)
                    return
                log.warning("object %s on %s did not hold its content; sending it again", obj, self._exporter)
            with self._partial() as sent, self._partial() as copy:
                self._write(fd, label, sent)
                self._storage.copy(sent, copy)
                # Unchanged since it was hashed, what was sent is that content; else the exporter checks.
                if not self._digests.holds(fd, digest) and self._storage.hash(copy, "sha256") != digest:
                    raise self._changed(label, digest)  # both partials are removed
                self._storage.rename(sent, obj)
                self._storage.rename(copy, spare)
        self._objects.add(digest)
        log.info("sent %s to %s as %s", label, self._exporter, obj)

    def forget(self, below: str) -> None:
        """Forget what this process placed at or below ``below`` (a name, or a folder ending in
        ``/``): it was removed from the exporter."""
        inside = below.endswith("/")
        for target in [each for each in self._placed if each == below or (inside and each.startswith(below))]:
            del self._placed[target]

    def drop_parts(self) -> None:
        """Remove the folder of partial writes, unless a partial is left in it: a process folder
        ``--http-keep`` keeps holds what the tests staged, not where it was written."""
        if self._parts is not None:
            with suppress(Exception):  # not empty, or never made
                self._storage.delete(self._parts + "/")

    def _ensure_object(self, fd: int, digest: str, label: str) -> None:
        if digest in self._objects:
            return
        obj = f"{OBJECTS}/{digest}"
        with locks.held(self._lock_prefix + digest, self.timeout, purpose=f"push of {label}"):
            if self._holds(obj, digest):
                self._objects.add(digest)
                return
            if self._storage.exists(obj):
                log.warning("object %s on %s did not hold its content; sending it again", obj, self._exporter)
            self._send(fd, digest, label, obj)
        self._objects.add(digest)
        log.info("sent %s to %s as %s", label, self._exporter, obj)

    def _send(self, fd: int, digest: str, label: str, obj: str) -> None:
        if self._pushes:  # a RecordingHttpServer hashes it as it arrives, and renames it itself
            with self._progress_lines(label, os.fstat(fd).st_size):
                arrived = self._http.push(digest, fd)
            if not arrived:
                raise self._changed(label, digest)
            return
        with self._partial() as partial:
            self._write(fd, label, partial)
            if self._digests.holds(fd, digest):  # unchanged since it was hashed: what was sent
                self._storage.rename(partial, obj)
            elif not self._publish(partial, digest, obj):
                raise self._changed(label, digest)

    def _write(self, fd: int, label: str, partial: str) -> None:
        with self._progress_lines(label, os.fstat(fd).st_size):
            write_from_fd(self._storage, partial, fd)

    def _changed(self, label: str, digest: str) -> SourceChanged:
        return SourceChanged(
            f"{label!r} changed while it was sent to exporter {self._exporter!r}: what arrived is "
            f"not the content hashed before (sha256 {digest}); stage it again once it is stable."
        )

    def _replace(self, fd: int, digest: str, label: str, target: str) -> None:
        """Copy the object ``digest`` to ``target`` on the exporter, replacing it whole; if the
        copy is not that content, send the object again from ``fd`` and copy once more."""
        obj = f"{OBJECTS}/{digest}"
        if self._copy(obj, digest, target):
            return
        log.warning("object %s on %s changed since it was checked; sending it again", obj, self._exporter)
        self._objects.discard(digest)
        self._ensure_object(fd, digest, label)  # checks the object again, and replaces it
        if not self._copy(obj, digest, target):
            raise SourceChanged(
                f"object {obj} on exporter {self._exporter!r} changed again while it was copied to "
                f"{target}: something on the exporter rewrites it; find what, then stage {label!r} again."
            )

    def _copy(self, source: str, digest: str, target: str) -> bool:
        with self._partial() as partial:
            self._storage.copy(source, partial)
            return self._publish(partial, digest, target)

    def _publish(self, partial: str, digest: str, target: str) -> bool:
        """Rename ``partial`` to ``target`` if it holds ``digest`` (whether it did); else remove it."""
        if self._storage.hash(partial, "sha256") != digest:
            self._storage.delete(partial)
            return False
        self._storage.rename(partial, target)
        return True

    @contextmanager
    def _partial(self) -> Iterator[str]:
        """A fresh exporter name to write to and rename from; removed if the block fails."""
        token = uuid.uuid4().hex[:12]
        lock = None
        if self._parts is not None:
            partial = f"{self._parts}/{token}"
        else:
            # _sweep_partials spares a partial whose lock is held: its writer is alive.
            lock = locks.try_hold(self._lock_prefix + token)
            partial = f"{OBJECTS}/.part-{token}-{_HOST_TAG}"
        try:
            yield partial
        except BaseException:
            with suppress(Exception):  # the exporter may be gone: the failure that matters is above
                self._storage.delete(partial)
            raise
        finally:
            if lock is not None:
                lock.close()

    @contextmanager
    def _progress_lines(self, label: str, size: int) -> Iterator[None]:
        say = self._progress if size >= PROGRESS_BYTES else None
        mib = size / (1 << 20)
        if say:
            say(f"jumpstarter-http: staging {label} ({mib:.1f} MiB) to {self._exporter} ...")
        began = time.monotonic()
        yield
        if say:
            took = max(time.monotonic() - began, 1e-6)
            say(f"jumpstarter-http: staged {label} in {took:.1f} s ({mib / took:.0f} MiB/s)")

    def _sweep_partials(self) -> None:
        """Remove what a push from this machine left when it was killed half-way (the stock
        driver's: a RecordingHttpServer's are in their owner's folder, which ends with it)."""
        if self._pushes or not self._storage.exists(f"{OBJECTS}/"):
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
                log.info("removed %s, left by a push that was killed", path)


#: What a file that is not a regular one is, for messages.
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def open_to_send(root: Path, name: str) -> int | None:
    """Open the regular file ``name`` below ``root`` for reading; return its descriptor.

    None for what is not there to send: nothing, a folder, a link leading out of ``root`` (the
    loopback server serves none of them either). ``HttpPublishError`` (its message: why) for what
    is there but cannot be sent: a FIFO or a socket, a file this user cannot read, a name the
    exporter cannot hold.
    """
    if problem := name_problem(name):
        raise HttpPublishError(problem)
    try:
        # Looked at first without opening it: opening a FIFO for reading waits for a writer.
        probe = open_beneath(root, name, PROBE)
    except (EscapesRoot, FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise HttpPublishError(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(probe).st_mode
        if stat.S_ISDIR(mode):
            return None
        if not stat.S_ISREG(mode):
            raise HttpPublishError(f"it is {_KINDS.get(stat.S_IFMT(mode), 'no regular file')}")
        # The very file probed: /proc reopens its inode, whatever happened to its name since.
        return os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise HttpPublishError("this user may not read it") from None
    finally:
        os.close(probe)
