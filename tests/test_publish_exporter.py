"""Issue 17: one odd entry in ``--http-root`` never breaks an exporter run.

A FIFO hung the run, a socket errored every test, a Latin-1 name raised UnicodeEncodeError, and
a name the exporter's storage alters was published under another name. Now each is left out with
one warning, in one line, naming them, and the rest of the root is served as on loopback; a
name asked for alone (``url_for``) that cannot be sent is a clear error.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from jumpstarter_helpers import StandaloneExporter, http_driver, jmp_shell, write_exporter_config
from subprocess_runs import JUnit, python_pytest, run

LONG = "x" * 251 + ".img"
LATIN1 = os.fsdecode(b"caf\xe9.img")

ODD_ROOT = f"""
import urllib.error, urllib.request

import pytest

from pytest_jumpstarter_http.records import HttpPublishError


def status_and_body(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_the_rest_of_the_root_is_served(http_url):
    assert status_and_body(http_url + "/image.raw") == (200, b"image")
    assert status_and_body(http_url + "/{LONG}") == (200, b"long")
    assert status_and_body(http_url + "/trailing.img%20")[0] == 404
    assert status_and_body(http_url + "/fifo")[0] == 404


def test_a_fifo_asked_for_by_name_is_a_clear_error(http_server):
    with pytest.raises(HttpPublishError) as info:
        http_server.url_for("fifo")
    assert str(info.value).endswith("/fifo' cannot be sent to exporter " + repr(http_server.connection.name)
        + ": it is a FIFO; serve a regular file this user can read.")
"""


def odd_root(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    images = folder / "images"
    images.mkdir()
    (images / "image.raw").write_bytes(b"image")
    (images / LONG).write_bytes(b"long")
    (images / "trailing.img ").write_bytes(b"an imposter")
    (images / LATIN1).write_bytes(b"latin-1")
    os.mkfifo(images / "fifo")
    monkeypatch.chdir(images)  # a socket's path must be short: bind it by a relative one
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
    return images


def test_odd_entries_of_the_root_are_left_out_with_one_warning_and_the_rest_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = odd_root(tmp_path, monkeypatch)
    (tmp_path / "test_odd_root.py").write_text(ODD_ROOT)
    www = tmp_path / "www"
    config = write_exporter_config(tmp_path / "odd.yaml", {"http": http_driver(www)})
    done = jmp_shell(
        config,
        python_pytest("test_odd_root.py", f"--http-root={images}", junit=tmp_path / "odd.xml"),
        cwd=tmp_path,
        timeout=120,
    )
    junit = JUnit(tmp_path / "odd.xml", done.stdout)
    junit.assert_passed(
        "test_the_rest_of_the_root_is_served", "test_a_fifo_asked_for_by_name_is_a_clear_error"
    )
    [line] = [line for line in done.stdout.splitlines() if "HttpPublishWarning" in line]
    assert f"HttpPublishWarning: not sent from {str(images)!r} to exporter " in line
    for entry in (
        f"{LATIN1!r} (it is not valid UTF-8 (a file name in another encoding))",
        "'fifo' (it is a FIFO)",
        "'sock' (it is a socket)",
        "'trailing.img ' (a part begins or ends with whitespace, which an exporter's storage strips)",
    ):
        assert entry in line, line
    assert not [path for path in www.rglob("*") if "imposter" in path.name or path.name == "trailing.img"]


UNREADABLE = """
import urllib.request


def test_the_readable_file_is_served(http_url):
    with urllib.request.urlopen(http_url + "/image.raw", timeout=30) as response:
        assert response.read() == b"image"
"""

#: Runs a command as the user nobody (uid and gid 65534), with no supplementary groups.
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_file_this_user_cannot_read_is_left_out_with_a_warning(
    standalone_exporter: Callable[[Path], StandaloneExporter], tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("a file its user cannot read takes a second user: root and setpriv")
    exporter = standalone_exporter(
        write_exporter_config(tmp_path / "x.yaml", {"http": http_driver(tmp_path / "www")})
    )
    # Outside root's private temp folder, which nobody could not enter.
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        images = shared / "images"
        images.mkdir()
        (images / "image.raw").write_bytes(b"image")
        (images / "secret.img").write_bytes(b"root's")
        (images / "secret.img").chmod(0o600)
        home = shared / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        (home / "test_unreadable.py").write_text(UNREADABLE)
        done = run(
            [*NOBODY, *python_pytest(f"--http-root={images}", junit=home / "report.xml")],
            cwd=home,
            env=exporter.env(TMPDIR=str(home), HOME=str(home), PYTHONDONTWRITEBYTECODE="1"),
            timeout=120,
        )
        JUnit(home / "report.xml", done.stdout).assert_passed("test_the_readable_file_is_served")
        [line] = [line for line in done.stdout.splitlines() if "HttpPublishWarning" in line]
        assert "so answering 404 there: 'secret.img' (this user may not read it)." in line, line
    finally:
        shutil.rmtree(shared)
