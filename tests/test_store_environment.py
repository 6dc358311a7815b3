"""Issue 25: a push to an exporter, or a read of an upload, changes no environment variable and draws
no progress bar.

Jumpstarter's client wraps every stream it sends in a rich progress bar, unless TERM is dumb. A
push used to set TERM to dumb for the whole process while it ran, under the feet of the test's
other threads and of xdist. ``Store`` is driven against a real HttpServer driver's client, the
loopback backend's own (a Jumpstarter session in this process), on both of its ways to send a
file: a push to a RecordingHttpServer, and a write to the stock driver's storage.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_jumpstarter_http.loopback import LocalServer
from pytest_jumpstarter_http.store import Digests, Store

DATA = b"image " * 100_000
#: A RecordingHttpServer is pushed to when the store has a parts folder; without, the storage is written.
PARTS = "pytest-jumpstarter-http/runs/run/gw0/.parts"


class WritesRecorded(dict[str, str]):
    """A copy of ``os.environ`` that records the name of every variable set or removed in it."""

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.written: list[str] = []

    def __setitem__(self, key: str, value: str) -> None:
        self.written.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.written.append(key)
        super().__delitem__(key)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[object]:
    (tmp_path / "exporter").mkdir()
    with LocalServer("127.0.0.1", tmp_path / "exporter") as server:
        yield server.client


@pytest.mark.parametrize("parts", [PARTS, None], ids=["push", "storage write"])
def test_a_push_sets_no_environment_variable_and_draws_no_progress_bar(
    http, tmp_path, parts, monkeypatch, capfd
):
    (tmp_path / "image.raw").write_bytes(DATA)
    fd = os.open(tmp_path / "image.raw", os.O_RDONLY)
    monkeypatch.setenv("TERM", "xterm-256color")  # a terminal Jumpstarter's client draws progress bars on
    environ = WritesRecorded(dict(os.environ))
    monkeypatch.setattr(os, "environ", environ)
    try:
        Store(http, "exporter", Digests(), 30, None, parts=parts).put(fd, "image.raw", "served/image.raw")
    finally:
        os.close(fd)
    gc.collect()  # a rich progress bar prints its last frame when it is collected
    out, err = capfd.readouterr()
    assert environ.written == []
    assert "transfer" not in out + err
    assert (tmp_path / "exporter/served/image.raw").read_bytes() == DATA


def test_reading_an_upload_sets_no_environment_variable_and_draws_no_progress_bar(
    http, tmp_path, monkeypatch, capfd
):
    (tmp_path / "exporter" / "boot.log").write_bytes(DATA)
    monkeypatch.setenv("TERM", "xterm-256color")
    environ = WritesRecorded(dict(os.environ))
    monkeypatch.setattr(os, "environ", environ)
    assert http.read_upload({"stored": "boot.log"}) == DATA
    gc.collect()
    out, err = capfd.readouterr()
    assert environ.written == []
    assert "transfer" not in out + err
