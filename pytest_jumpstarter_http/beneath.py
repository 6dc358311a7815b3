"""Open a name below a root folder, never outside it, even while the tree changes underneath.

A check by name followed by an open by name (what aiohttp's static route does) leaves a window
in which a folder can be swapped for a link to anywhere. Here the name is looked up once, by
the kernel or component by component from descriptors we hold, so what is checked is what is
opened.

Two ways, the same answers for every name:

- Linux 5.6+: ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS``, one system call.
  Links that stay beneath are followed; anything leaving the root fails with ``EXDEV``.
- Elsewhere (no ``openat2``, or a seccomp filter refusing it), and to decide each ``EXDEV``:
  a walk that opens one component at a time with ``O_NOFOLLOW`` from the folder opened before
  it, reads each link itself and follows it only inside the root. The kernel's ``EXDEV`` also
  covers an absolute link such as ``/srv/root/a`` that names a place inside the root; aiohttp
  serves those, so the walk serves them too.

Deliberately stricter than aiohttp's ``Path.resolve()``: a link whose target passes outside the
root on its way (``../root/x`` from the root's top, ``/elsewhere/link-to-root/x``) is an escape,
even if it would end up inside again; following it would look names up outside the root.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

__all__ = ["PROBE", "EscapesRoot", "OpenFolder", "open_beneath"]

#: ``openat2`` is 437 in the generic system call table, which x86_64 and aarch64 share for it.
_OPENAT2: Final = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_BENEATH: Final = 0x08
#: Links followed in one lookup before giving up, as the kernel's MAXSYMLINKS.
_MAX_LINKS: Final = 40
#: A folder or a name opened only to be looked at: no side effect even on a FIFO or a device.
PROBE: Final = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))


class _Settings:
    #: Whether to try ``openat2`` at all; cleared for good on the first ENOSYS/EPERM. Tests set
    #: it to False to run the walk everywhere.
    openat2: bool = sys.platform == "linux" and _OPENAT2 is not None


settings = _Settings()


class EscapesRoot(OSError):
    """The name leads outside the root (through ``..`` or a link)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class OpenFolder:
    """A root folder held open: its descriptor and the real path absolute links are compared to.

    Open it once per server and ``close()`` it when the server stops; a context manager too.
    Closing waits for lookups under way (the descriptor's number must not be reused under them).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, PROBE | os.O_DIRECTORY | os.O_CLOEXEC)
        self.real = _real_path(self.fd, path)
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @contextmanager
    def held(self) -> Iterator[int]:
        """The descriptor, kept open until the block ends even if ``close()`` is called meanwhile."""
        with self._lock:
            if self._closing:
                raise OSError(errno.EBADF, f"the root {self.real!r} was closed")
            self._users += 1
        try:
            yield self.fd
        finally:
            with self._lock:
                self._users -= 1
                last = self._closing and not self._users
            if last:
                os.close(self.fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            now = not self._users
        if now:
            os.close(self.fd)

    def __enter__(self) -> OpenFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenFolder({self.real!r}, fd={self.fd})"


def _real_path(fd: int, path: str | os.PathLike[str]) -> str:
    """The real path of the folder open as ``fd`` (opened by ``path``): what the kernel says it
    is, one ``readlink``, where it can say; else ``realpath``, a ``stat`` per part of ``path``."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = ""
    return real if real.startswith("/") and not real.endswith(" (deleted)") else os.path.realpath(path)


def open_folders(fd: int, parts: list[str], *, create: bool = False) -> int:
    """A new descriptor of the folder ``parts`` below the folder ``fd``, through no link at all,
    not even one that stays below it (``ELOOP`` or ``ENOTDIR`` where one is); made if ``create``."""
    here = os.dup(fd)
    try:
        for part in filter(None, parts):
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=here)
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
            os.close(here)
            here = below
    except BaseException:
        os.close(here)
        raise
    return here


def open_beneath(
    root: OpenFolder | int | str | os.PathLike[str], relpath: str, flags: int = os.O_RDONLY
) -> int:
    """Open ``relpath`` below ``root`` with ``flags``; return the new descriptor (close-on-exec).

    ``relpath`` is always below the root, even with a leading "/"; empty and "." components
    are dropped, as ``pathlib`` does. ``root`` is an :class:`OpenFolder`, a folder's path, or a descriptor
    of a folder (then an absolute link is an escape, its real path being unknown). Raises
    :class:`EscapesRoot` for a name that leaves the root and the usual ``OSError``
    (``FileNotFoundError``, ``NotADirectoryError``, ``ELOOP``...) otherwise. Pass ``PROBE``
    (``O_PATH`` on Linux) to open a FIFO or a device without effect.
    """
    if isinstance(root, OpenFolder):
        with root.held() as fd:
            return _open(fd, root.real, relpath, flags)
    if isinstance(root, int):
        return _open(root, None, relpath, flags)
    with OpenFolder(root) as held, held.held() as fd:
        return _open(fd, held.real, relpath, flags)


def _open(root_fd: int, real: str | None, relpath: str, flags: int) -> int:
    flags |= os.O_CLOEXEC
    if "\0" in relpath:
        raise ValueError(f"open_beneath(): {relpath!r} holds a NUL character, which no file name can.")
    relpath = "/".join(_parts(relpath))  # "a//b/./c/" means a/b/c, as for pathlib and aiohttp
    if settings.openat2:
        fd = _openat2(root_fd, relpath, flags)
        if fd is not None:
            return fd
    return _walk(root_fd, real, relpath, flags)


def _openat2(root_fd: int, relpath: str, flags: int) -> int | None:
    """The kernel's lookup; None when the walk must decide (no openat2, or ``EXDEV``)."""
    assert _OPENAT2 is not None
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    path = os.fsencode(relpath or ".")
    for _ in range(3):
        fd = _libc().syscall(
            ctypes.c_long(_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # a rename raced a ".." lookup; the kernel asks to retry
            continue
        if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG):  # no openat2 here, or seccomp refuses it
            settings.openat2 = False
            return None
        if err == errno.EXDEV:  # leaves the root, or an absolute link that may stay inside
            return None
        raise OSError(err, os.strerror(err), relpath)
    return None


def _walk(root_fd: int, real: str | None, relpath: str, flags: int) -> int:
    """The portable lookup: one component at a time, every link read and checked by us."""
    walk = _Walk(root_fd, real, relpath)
    try:
        while walk.todo:
            name = walk.todo.pop()
            if name == "..":
                walk.up()
                continue
            last = not walk.todo
            fd = _open_one(name, walk.here, flags if last else PROBE, relpath, keep_link=last)
            if fd is None:
                walk.follow(name)
            elif last:
                return fd
            else:
                walk.folders.append(fd)
        # The name was the root itself, or ended in "..": reopen the folder we stand in.
        return os.open(".", flags, dir_fd=walk.here)
    finally:
        walk.close()


class _Walk:
    """Where one portable lookup stands: the components still to open (a stack, the next one
    last), the folders it holds open below the root (deepest last), and the links it followed."""

    def __init__(self, root_fd: int, real: str | None, relpath: str) -> None:
        self.root_fd, self.real, self.relpath = root_fd, real, relpath
        self.todo = list(reversed(_parts(relpath)))
        self.folders: list[int] = []
        self.links = 0

    @property
    def here(self) -> int:
        """The folder the next component is looked up in."""
        return self.folders[-1] if self.folders else self.root_fd

    def up(self) -> None:
        """Go up for a ``..``: never above the root."""
        if not self.folders:
            raise EscapesRoot(errno.EXDEV, "leads outside the root through ..", self.relpath)
        os.close(self.folders.pop())

    def follow(self, name: str) -> None:
        """Put the target of the link ``name`` in place of it; an absolute one starts from the root."""
        try:
            target = os.readlink(name, dir_fd=self.here)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.todo.append(name)  # no longer a link: look at it again
            return
        self.links += 1
        if self.links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), self.relpath)
        if target.startswith("/"):
            target = _inside(target, self.real, self.relpath)
            self.close()
        self.todo.extend(reversed(_parts(target)))

    def close(self) -> None:
        while self.folders:
            os.close(self.folders.pop())


def _open_one(name: str, here: int, flags: int, relpath: str, *, keep_link: bool) -> int | None:
    """Open one component without following it: its descriptor, or None for a link to follow.

    A folder on the way must be a folder. With ``O_NOFOLLOW`` among the caller's flags, the
    last component is opened as it is, like the kernel does.
    """
    nofollow = keep_link and bool(flags & os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=here)
    except OSError as exc:
        if nofollow or exc.errno not in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's O_NOFOLLOW
            raise
        return None
    mode = os.fstat(fd).st_mode
    if stat.S_ISLNK(mode) and not nofollow:  # O_PATH | O_NOFOLLOW opens a link itself
        os.close(fd)
        return None
    if not keep_link and not stat.S_ISDIR(mode):
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), relpath)
    return fd


def _inside(target: str, real: str | None, relpath: str) -> str:
    """An absolute link's target as a path below the root, or EscapesRoot."""
    prefix = (real or "").rstrip("/") + "/"
    if real is None or not (target == real or target.startswith(prefix)):
        raise EscapesRoot(errno.EXDEV, f"a link leads outside the root to {target!r}", relpath)
    return target[len(prefix) :]


def _parts(path: str) -> list[str]:
    """Components as the kernel and pathlib see them: empty ones and "." dropped."""
    return [part for part in path.split("/") if part not in ("", ".")]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc
