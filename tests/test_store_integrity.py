"""Issue 17: the exporter object store publishes only verified content, and never a partial at a served name.

``Store`` is driven against a real HttpServer driver's client: the loopback backend's own
(``LocalServer.client``, a Jumpstarter session in this process), whose storage is a folder
here, so that a test can change an object or the source under the store's feet as a stranger
on the exporter would, and see every name the store ever writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jumpstarter.client.core import DriverError

from pytest_jumpstarter_http import locks
from pytest_jumpstarter_http.loopback import LocalServer
from pytest_jumpstarter_http.store import OBJECTS, Digests, SourceChanged, Store

PARTS = "pytest-jumpstarter-http/runs/run/gw0/.parts"
SPARES = "pytest-jumpstarter-http/runs/run/gw0/.spares"
BIG = 64 << 20


@pytest.fixture
def exporter_root(tmp_path: Path) -> Path:
    root = tmp_path / "exporter"
    root.mkdir()
    return root


@pytest.fixture
def http(exporter_root: Path) -> Iterator[object]:
    """A real HttpServer driver client whose storage is ``exporter_root``."""
    with LocalServer("127.0.0.1", exporter_root) as server:
        yield server.client


def store(http: object, *, parts: str | None = PARTS, timeout: float = 30) -> Store:
    return Store(http, "test exporter", Digests(), timeout, None, parts=parts)


def source(tmp_path: Path, data: bytes, name: str = "image.raw") -> int:
    path = tmp_path / name
    path.write_bytes(data)
    os.utime(path, ns=(0, 0))
    return os.open(path, os.O_RDONLY)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir())


def settle() -> None:
    """Wait until a file written now has settled: ``Digests`` remembers its hash, and a write
    since would show in its ctime."""
    time.sleep(0.15)


@pytest.mark.parametrize("settled", [False, True], ids=["fresh", "settled"])
@pytest.mark.parametrize("driver", ["recording", "stock"])
def test_a_file_rewritten_while_it_is_sent_is_refused_and_published_nowhere(
    http, exporter_root, tmp_path, driver, settled
):
    original = b"A" * BIG
    fd = source(tmp_path, original)
    if settled:  # the store trusts what it sent unhashed only if the file stayed this version
        settle()
    # Where a partial write of it shows: the process's parts folder, or objects/ where a
    # RecordingHttpServer receives a push itself.
    places = [exporter_root / PARTS, exporter_root / OBJECTS]

    def sending() -> bool:
        with contextlib.suppress(OSError):  # a partial may be renamed or removed as it is looked at
            return any(path.stat().st_size for place in places if place.is_dir() for path in place.iterdir())
        return False

    def rewrite_once_sending_began() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sending():
                with (tmp_path / "image.raw").open("r+b") as rewritten:
                    os.pwrite(rewritten.fileno(), b"B" * (8 << 20), BIG - (8 << 20))
                return
            time.sleep(0.0005)

    rewriter = threading.Thread(target=rewrite_once_sending_began)
    rewriter.start()
    try:
        # Pushed, the server hashing it as it arrives; or written, copied to the process's spare
        # and the copy hashed (the stock driver).
        spares = None if driver == "recording" else SPARES
        uploads = Store(
            http, "test exporter", Digests(), 30, None, parts=PARTS if spares is None else None, spares=spares
        )
        with pytest.raises(SourceChanged) as info:
            uploads.put(fd, "image.raw", "served/image.raw", spare=True)
    finally:
        rewriter.join()
        os.close(fd)
    assert str(info.value) == (
        "'image.raw' changed while it was sent to exporter 'test exporter': what arrived is not the "
        f"content hashed before (sha256 {sha(original)}); stage it again once it is stable."
    )
    assert files(exporter_root) == []


def test_an_object_changed_after_its_first_use_is_sent_again_before_a_copy_is_served(
    http, exporter_root, tmp_path
):
    fd = source(tmp_path, b"the real image")
    uploads = store(http)
    uploads.put(fd, "image.raw", "first/image.raw")
    obj = exporter_root / OBJECTS / sha(b"the real image")
    obj.write_bytes(b"EVILEVIL")  # a stranger on the exporter
    uploads.put(fd, "image.raw", "second/image.raw")
    os.close(fd)
    assert (exporter_root / "second/image.raw").read_bytes() == b"the real image"
    assert obj.read_bytes() == b"the real image"
    assert not (exporter_root / PARTS).exists() or files(exporter_root / PARTS) == []


@pytest.mark.parametrize("parts", [PARTS, None], ids=["parts folder", "objects folder"])
def test_a_served_name_of_255_bytes_is_put(http, exporter_root, tmp_path, parts):
    fd = source(tmp_path, b"long")
    name = "x" * 251 + ".img"
    store(http, parts=parts).put(fd, "image.raw", f"served/{name}")
    os.close(fd)
    assert (exporter_root / "served" / name).read_bytes() == b"long"
    assert os.listdir(exporter_root / "served") == [name]


def test_a_partial_copy_never_appears_at_a_served_name(http, exporter_root, tmp_path):
    fd = source(tmp_path, b"C" * BIG)
    uploads = store(http)
    uploads.put(fd, "image.raw", "first/image.raw")
    served = exporter_root / "second"
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if served.is_dir():
                seen.update(os.listdir(served))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        uploads.put(fd, "image.raw", "second/image.raw")
    finally:
        done.set()
        watcher.join()
        os.close(fd)
    assert seen <= {"image.raw"}
    assert os.listdir(served) == ["image.raw"]


def test_a_squatted_content_lock_delays_an_upload_by_its_timeout_only(http, tmp_path):
    data = b"squatted " + os.urandom(16)
    fd = source(tmp_path, data)
    squatter = locks.try_hold(f"{http.uuid}:{sha(data)}")  # type: ignore[attr-defined]
    assert squatter is not None
    began = time.monotonic()
    try:
        store(http, timeout=0.5).put(fd, "image.raw", "served/image.raw")
    finally:
        squatter.close()
        os.close(fd)
    assert time.monotonic() - began < 4


def test_a_killed_upload_s_partial_in_objects_is_removed_by_the_next_store(http, exporter_root):
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    objects = exporter_root / OBJECTS
    objects.mkdir(parents=True)
    (objects / f".part-0123456789ab-{host}").write_bytes(b"half")
    store(http, parts=None)
    assert os.listdir(objects) == []


# --- spares: the stock driver's staged names, copied from one checked copy per process ---------


def driver_calls(monkeypatch: pytest.MonkeyPatch, storage: object) -> list[str]:
    """The driver calls Jumpstarter's storage client makes from now on, by name (not the plugin's)."""
    calls: list[str] = []
    real = storage.call  # type: ignore[attr-defined]

    def call(method: str, *args: object) -> object:
        calls.append(method)
        return real(method, *args)

    monkeypatch.setattr(storage, "call", call)
    return calls


def test_a_name_staged_again_is_a_copy_of_the_spare_which_no_rewrite_of_a_served_copy_reaches(
    http, exporter_root, tmp_path, monkeypatch
):
    data = b"spare me" * 1000
    fd = source(tmp_path, data)
    stock = Store(http, "test exporter", Digests(), 30, None, spares=SPARES)
    stock.put(fd, "image.raw", "h1/image.raw", spare=True)
    assert (exporter_root / SPARES / sha(data)).read_bytes() == data
    (exporter_root / "h1/image.raw").write_bytes(b"CORRUPT!" * 1000)  # the test rewrote its copy
    calls = driver_calls(monkeypatch, http.storage)
    stock.put(fd, "image.raw", "h2/image.raw", spare=True)
    assert (exporter_root / "h2/image.raw").read_bytes() == data
    assert calls == ["copy", "rename"]  # verified once per process: no hash, no send
    os.close(fd)


def test_a_spare_proves_its_object_with_one_hash_whether_sent_or_found(
    http, exporter_root, tmp_path, monkeypatch
):
    data = b"hash me once" * 1000
    fd = source(tmp_path, data)
    calls = driver_calls(monkeypatch, http.storage)
    Store(http, "test exporter", Digests(), 30, None, spares=SPARES).put(fd, "x", "h1/x", spare=True)
    assert calls.count("hash") == 1
    assert "file_write" in calls
    calls.clear()  # the next process: the object is there, a copy of it checks both
    Store(http, "test exporter", Digests(), 30, None, spares=SPARES + "2").put(fd, "x", "h2/x", spare=True)
    assert calls.count("hash") == 1
    assert "file_write" not in calls
    assert (exporter_root / OBJECTS / sha(data)).read_bytes() == data
    assert (exporter_root / "h2/x").read_bytes() == data
    os.close(fd)


@pytest.mark.parametrize("spare", [True, False], ids=["staged", "published"])
def test_a_settled_file_sent_unchanged_is_not_hashed_again_by_the_exporter(
    http, exporter_root, tmp_path, monkeypatch, spare
):
    data = b"sent once, hashed here" * 1000
    fd = source(tmp_path, data)
    settle()
    calls = driver_calls(monkeypatch, http.storage)
    Store(http, "test exporter", Digests(), 30, None, spares=SPARES).put(fd, "x", "h1/x", spare=spare)
    # What was sent is the version hashed here; a copy of the object is still checked before it is
    # served, unless it is the spare's (a copy of what was sent).
    assert calls.count("hash") == (0 if spare else 1)
    assert "file_write" in calls
    assert (exporter_root / OBJECTS / sha(data)).read_bytes() == data
    assert (exporter_root / "h1/x").read_bytes() == data
    os.close(fd)


def test_a_spare_lost_from_under_the_store_is_made_again(http, exporter_root, tmp_path):
    data = b"spare me" * 1000
    fd = source(tmp_path, data)
    stock = Store(http, "test exporter", Digests(), 30, None, spares=SPARES)
    stock.put(fd, "image.raw", "h1/image.raw", spare=True)
    (exporter_root / SPARES / sha(data)).unlink()
    stock.put(fd, "image.raw", "h2/image.raw", spare=True)
    assert (exporter_root / "h2/image.raw").read_bytes() == data
    assert (exporter_root / SPARES / sha(data)).read_bytes() == data
    os.close(fd)


def test_a_spare_that_cannot_be_copied_to_its_target_is_not_made_again(
    http, exporter_root, tmp_path, monkeypatch
):
    fd = source(tmp_path, b"a file where a folder is")
    stock = Store(http, "test exporter", Digests(), 30, None, spares=SPARES)
    stock.put(fd, "b", "h1/a/b", spare=True)
    calls = driver_calls(monkeypatch, http.storage)
    with pytest.raises(DriverError, match="is a directory"):
        stock.put(fd, "a", "h1/a", spare=True)
    assert "hash" not in calls  # the spare was fine: not copied and hashed again
    assert (exporter_root / "h1/a/b").read_bytes() == b"a file where a folder is"
    os.close(fd)


def test_forgetting_a_name_forgets_no_other_name_it_starts(http, exporter_root, tmp_path):
    fd = source(tmp_path, b"served twice")
    stock = Store(http, "test exporter", Digests(), 30, None, spares=SPARES)
    stock.put(fd, "image", "mirror/image")
    stock.put(fd, "image.raw", "mirror/image.raw")
    placed = (exporter_root / "mirror/image.raw").stat().st_ino
    stock.forget("mirror/image")
    stock.put(fd, "image.raw", "mirror/image.raw")  # still known: nothing copied again
    assert (exporter_root / "mirror/image.raw").stat().st_ino == placed
    os.close(fd)
