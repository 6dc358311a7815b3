"""Who owns what on a shared server: owners (one per connected run) and their URL namespaces.

An exporter's ``RecordingHttpServer`` is shared by every run, xdist worker and host that reaches
it. Each of them *holds* it through a stream of its own (``RecordingHttpServer.own``) and is an
:class:`Owner` for as long as that stream lasts: Jumpstarter ends the stream when the run's
connection ends, however it ends (a clean exit, SIGKILL, a lost lease), and everything the owner
set on the server goes with it: its namespaces, their faults, replies, uploads and credentials,
its HTTPS site, and its folder below the root.

A namespace is one handle's own URL prefix, ``/pytest-jumpstarter-http/ns/<token>/``, that shows
some folders, the first folder holding a name winning: on an exporter, folders below the root
its owner sent there; in the loopback's server, the test process's own local folders, which a
port of the namespace's own reaches (see ``RecordingHttpServer.serve_namespace``). Two handles
serving the same content still have two prefixes, so each one's request log, faults and replies
are its own. The plugin's folders are served through namespaces only, never at their own path.

This module runs in the server and never imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .beneath import open_folders
from .records import NS, RUNS, TOP, check_name, normalized

log = logging.getLogger("pytest_jumpstarter_http.namespaces")

#: Where a file may be: a folder the server opens once, and a path below it.
Place = tuple[Path, str]


class NamespaceError(ValueError):
    """A request to open or own something the server cannot give (a bad folder, an unknown owner)."""


@dataclass
class Owner:
    """One connected run: its folder below the root, and whether to keep that folder when it ends."""

    #: Its id, which its calls give: a secret of the run's.
    id: str
    folder: str
    keep: bool
    namespaces: set[str] = field(default_factory=set)
    #: What its stream (``RecordingHttpServer.own``) hands the run: the names its namespaces
    #: lack that a device asked for (``{"namespace", "name"}``), which it sends if it has them,
    #: and the requests its handlers answer (``{"namespace", "call", "reply", "request"}``).
    wants: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class Namespaces:
    """The owners of one server and their namespaces; changed from any thread, read on the server's loop."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)
        self._lock = threading.Lock()
        self._owners: dict[str, Owner] = {}
        #: Namespace token -> (owner id, the folders it shows, the first to hold a name wins), each
        #: as a place: a folder opened once, and a path below it.
        self._shown: dict[str, tuple[str, tuple[Place, ...]]] = {}
        #: Namespace token -> its names served by reference: name -> the place of a file (an object).
        self._linked: dict[str, dict[str, Place]] = {}
        #: Namespace token -> seconds a request waits for a name its owner is asked for (a
        #: namespace that shows the owner's local folder); absent: it never asks.
        self._asks: dict[str, float] = {}
        #: What the owners were asked and did not answer yet: (namespace, a name it lacks) ->
        #: whether it came, (namespace, ``call:<id>``) -> a handler's answer.
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}

    def add_owner(self, folder: str, *, keep: bool) -> Owner:
        """A new owner of ``folder`` (below ``pytest-jumpstarter-http/runs/``)."""
        folder = _owned_folder(folder)
        owner = Owner(secrets.token_hex(16), folder, keep)
        with self._lock:
            self._owners[owner.id] = owner
        return owner

    def end_owner(self, owner: Owner) -> list[str]:
        """Forget ``owner`` and its namespaces; return the namespaces (its folder: :meth:`remove_folder`)."""
        with self._lock:
            self._owners.pop(owner.id, None)
            ended = sorted(owner.namespaces)
            for token in ended:
                self._forget(token)
        return ended

    def _forget(self, token: str) -> None:
        """Forget the namespace ``token`` (the lock held); a request waiting for a name of it goes on."""
        self._shown.pop(token, None)
        self._linked.pop(token, None)
        self._asks.pop(token, None)
        for key in [key for key in self._pending if key[0] == token]:
            future = self._pending.pop(key)
            future.get_loop().call_soon_threadsafe(_fail, future, NamespaceError(f"namespace {token} ended"))

    def remove_folder(self, owner: Owner) -> None:
        """Remove an ended owner's folder, unless it keeps it: a disk's work, for a worker thread."""
        if not owner.keep:
            _remove_beneath(self._root, owner.folder)

    def owner(self, owner_id: str) -> Owner:
        """The owner ``owner_id``; a ``NamespaceError`` if it ended or never was."""
        with self._lock:
            owner = self._owners.get(owner_id)
        if owner is None:
            raise NamespaceError(f"no owner {owner_id!r} holds this server; it ended or never was")
        return owner

    def open_of(self, owner_id: str) -> list[str]:
        """The namespaces the owner ``owner_id`` has open (none if it is no owner now)."""
        with self._lock:
            owner = self._owners.get(owner_id)
            return [] if owner is None else sorted(owner.namespaces)

    def open(self, owner_id: str, folders: list[str], asks: float = 0.0) -> str:
        """A new namespace of the owner ``owner_id`` that shows ``folders`` (its own, below the
        root); its token.

        ``asks``: seconds a request for a name it lacks waits while its owner is asked for that
        name (the owner serves a local folder through it); 0: it never asks.
        """
        return self._open(
            owner_id, lambda owner: [(self._root, _inside(owner.folder, folder)) for folder in folders], asks
        )

    def open_local(self, owner_id: str, folders: list[Path]) -> str:
        """A new namespace of the owner ``owner_id`` that shows ``folders``, folders of the server's
        own process (a loopback's roots); its token. Never over the wire: a caller there names
        folders below the root only."""
        return self._open(owner_id, lambda owner: [(Path(folder), "") for folder in folders])

    def _open(self, owner_id: str, places: Callable[[Owner], list[Place]], asks: float = 0.0) -> str:
        with self._lock:
            owner = self._owners.get(owner_id)
            if owner is None:
                raise NamespaceError(f"no owner {owner_id!r} holds this server; it ended or never was")
            shown = tuple(places(owner))
            # 64 random bits: no one guesses another's URL, and a URL stays short.
            token = secrets.token_hex(8)
            self._shown[token] = (owner.id, shown)
            owner.namespaces.add(token)
            if asks > 0:
                self._asks[token] = asks
        return token

    def close(self, token: str) -> bool:
        """End the namespace ``token``; False if there was none."""
        with self._lock:
            entry = self._shown.get(token)
            self._forget(token)
            if entry is None:
                return False
            owner = self._owners.get(entry[0])
            if owner is not None:
                owner.namespaces.discard(token)
        return True

    def show(self, token: str, folder: Path) -> None:
        """Show the local ``folder`` too in the namespace ``token`` (of :meth:`open_local`), after
        its folders: a loopback's folder of staged files, made when a test first stages one."""
        with self._lock:
            owner_id, shown = self._shown[token]
            self._shown[token] = (owner_id, (*shown, (Path(folder), "")))

    def link(self, token: str, name: str, place: str) -> None:
        """Serve ``place`` (a path below the root the server made, an object) as ``name`` in the
        namespace ``token``, before its folders: a name staged by reference, nothing copied."""
        with self._lock:
            if token not in self._shown:
                raise NamespaceError(f"no namespace {token!r} on this server; it ended or never was")
            self._linked.setdefault(token, {})[name] = (self._root, place)

    async def ask(self, url_name: str) -> bool:
        """Ask the owner of the namespace of ``url_name`` for the name it lacks, and wait (on the
        server's loop) until the owner sent it, said it has none, ended, or took too long; whether
        the name is there now. Requests for one name wait for one answer."""
        asked = self._asking(url_name)
        if asked is None:
            return False
        key, future, seconds = asked
        try:
            return bool(await asyncio.wait_for(asyncio.shield(future), seconds))
        except TimeoutError:
            log.warning("the owner of namespace %s did not send %r within %g s", *key, seconds)
            return False
        except NamespaceError:  # it ended meanwhile
            return False
        finally:
            with self._lock:
                if future.done() and self._pending.get(key) is future:
                    del self._pending[key]

    def _asking(self, url_name: str) -> tuple[tuple[str, str], asyncio.Future[bool], float] | None:
        """The question for ``url_name``'s owner (put to it unless it is already), and how long
        to wait for the answer; None for a name that is asked of no one."""
        split = _split(url_name)
        if split is None or not split[1]:
            return None
        key = (split[0], "/".join(split[1]))
        with self._lock:
            owner = self._owner_of(key[0])
            seconds = self._asks.get(key[0], 0.0)
            if owner is None or seconds <= 0:
                return None
            future = self._pending.get(key)
            if future is None:
                future = self._ask(owner, key, {"namespace": key[0], "name": key[1]})
        return key, future, seconds

    def _owner_of(self, token: str) -> Owner | None:
        """The owner of the namespace ``token`` (the lock held); None for an ended namespace."""
        entry = self._shown.get(token)
        return None if entry is None else self._owners.get(entry[0])

    def _ask(self, owner: Owner, key: tuple[str, str], want: dict[str, Any]) -> asyncio.Future[Any]:
        """Hand ``want`` to ``owner``'s stream; the future its answer settles (the lock held)."""
        future = self._pending[key] = asyncio.get_running_loop().create_future()
        owner.wants.put_nowait(want)
        return future

    def settle(self, token: str, what: str, answer: Any) -> None:
        """The owner of the namespace ``token`` answered ``what`` it was asked (a name: whether it
        sent it; ``call:<id>``: its handler's answer): wake who waits. Called from any thread:
        Jumpstarter runs an exported call that is no coroutine in a worker thread."""
        with self._lock:
            future = self._pending.pop((token, what), None)
        if future is not None:
            future.get_loop().call_soon_threadsafe(_settled, future, answer)

    async def call(self, token: str, reply: str, request: dict[str, Any]) -> dict[str, Any]:
        """Hand ``request`` to the owner of the namespace ``token``, whose handler of ``reply``
        answers it in the test's process, and wait (on the server's loop) for the answer (a
        ``NamespaceError`` if the owner ends first)."""
        call = secrets.token_hex(8)
        key = (token, f"call:{call}")
        with self._lock:
            owner = self._owner_of(token)
            if owner is None:
                raise NamespaceError(f"no namespace {token!r} on this server; it ended or never was")
            future = self._ask(
                owner, key, {"namespace": token, "call": call, "reply": reply, "request": request}
            )
        try:
            answer: dict[str, Any] = await future
            return answer
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def alive(self, token: str) -> bool:
        """Whether the namespace ``token`` is open."""
        with self._lock:
            return token in self._shown

    def folder_of(self, token: str) -> str:
        """The folder (below the root) of the owner of the namespace ``token``."""
        with self._lock:
            owner = self._owner_of(token)
        if owner is None:
            raise NamespaceError(f"no namespace {token!r} on this server; it ended or never was")
        return owner.folder

    def resolve(self, name: str) -> list[Place] | None:
        """Where the URL name ``name`` may be: None for a name outside any namespace, an empty list
        for one that no namespace shows (an ended one, or one whose ``..`` leads out of it).

        The plugin's own folders are seen through namespaces only: a run's staged files and a
        device's uploads are not served at their folder's path, past the namespace's credentials
        and request log, to whoever guesses it.
        """
        split = _split(name)
        if split is None:
            top = normalized(name)
            return [] if top == TOP or top.startswith(TOP + "/") else None
        token, parts = split
        rest = "/".join(parts or [])
        with self._lock:
            entry = self._shown.get(token)
            linked = self._linked.get(token, {}).get(rest)
        if entry is None or not parts:
            return []
        places = [(base, f"{folder}/{rest}" if folder else rest) for base, folder in entry[1]]
        return places if linked is None else [linked, *places]


def _split(name: str) -> tuple[str, list[str] | None] | None:
    """The namespace token of a URL name below ``NS/``, and the parts of the name in it, its dot
    segments resolved inside the namespace; None for parts that lead out of it (a 404, where a
    client would have resolved ``/../x`` to ``/x``)."""
    if not name.startswith(NS + "/"):
        return None
    token, _, rest = name[len(NS) + 1 :].partition("/")
    parts: list[str] = []
    for part in rest.split("/"):
        if part == "..":
            if not parts:
                return token, None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return token, parts


def _settled(future: asyncio.Future[Any], answer: Any) -> None:
    if not future.done():
        future.set_result(answer)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _owned_folder(folder: str) -> str:
    folder = check_name(str(folder), where="owner folder")
    if not folder.startswith(RUNS + "/") or folder.count("/") != RUNS.count("/") + 1:
        raise NamespaceError(f"owner folder {folder!r} is not a folder of {RUNS!r}; give {RUNS}/NAME")
    return folder


def _inside(owned: str, folder: str) -> str:
    folder = check_name(str(folder), where="namespace folder")
    if folder != owned and not folder.startswith(owned + "/"):
        raise NamespaceError(f"namespace folder {folder!r} is not inside its owner's folder {owned!r}")
    return folder


def _remove_beneath(root: Path, folder: str) -> None:
    """Remove ``folder`` below ``root`` and, once empty, its parent; through no link at all, not
    even one that stays below the root (it could lead to another run's folder, or the objects)."""
    parent, _, name = folder.rpartition("/")
    try:
        fd = _open_folder(root, parent)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove %s below %s: %s", folder, root, exc)
        return
    try:
        # With dir_fd, rmtree works from descriptors and never follows a link it meets.
        shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
    finally:
        os.close(fd)
    # The runs folder itself goes once the last owner's folder is gone.
    with contextlib.suppress(OSError):
        _rmdir_if_empty(root, parent)


def _rmdir_if_empty(root: Path, folder: str) -> None:
    parent, _, name = folder.rpartition("/")
    fd = _open_folder(root, parent)
    try:
        os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)


def _open_folder(root: Path, folder: str) -> int:
    """``folder`` (a path the server made, below ``root``) opened through no link at all."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_folders(top, folder.split("/"))
    finally:
        os.close(top)
