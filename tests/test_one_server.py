"""The loopback is the exporter's server run in this process (issue 25): every handle of a process
is a namespace of one RecordingHttpServer, which a port of the handle's own reaches."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import stat
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from http_helpers import status

from pytest_jumpstarter_http.loopback import LocalServer, LoopbackServer, PortsExhausted
from pytest_jumpstarter_http.values import PortRange


def test_the_handles_of_a_process_are_namespaces_of_its_one_server_each_on_a_port_of_its_own(
    http_server, http_server_factory
):
    other = http_server_factory()
    assert http_server.port != other.port
    assert http_server.client.get_port() == other.client.get_port()  # one server
    (http_server.root / "x").write_text("mine")
    (other.root / "x").write_text("theirs")
    assert urllib.request.urlopen(http_server.url + "/x", timeout=10).read() == b"mine"
    assert urllib.request.urlopen(other.url + "/x", timeout=10).read() == b"theirs"
    assert [entry.name for entry in http_server.requests] == ["x"]


def test_a_request_on_one_handles_port_never_reaches_another_handles_namespace(
    http_server, http_server_factory
):
    other = http_server_factory()
    (other.root / "x").write_text("theirs")
    theirs = other._url_path()  # /pytest-jumpstarter-http/ns/<token>: secret on loopback
    assert status(f"{http_server.url}{theirs}/x") == 404
    assert status(f"{http_server.url}/x/../..{theirs}/x") == 404
    assert other.requests == []
    # The server's own port reaches a namespace by its prefix, as an exporter's does.
    assert status(f"http://127.0.0.1:{other.client.get_port()}{theirs}/x") == 200
    assert [entry.name for entry in other.requests] == ["x"]


@pytest.mark.parametrize(
    ("asked", "location"),
    [
        ("/sub?v=1", "/sub/?v=1"),
        # "//sub/" would name the host "sub" to a browser: an open redirect.
        ("//sub", "/sub/"),
    ],
    ids=["query-kept", "on-this-server"],
)
def test_a_folder_asked_without_its_slash_is_redirected_to_the_url_the_device_used(
    http_server, asked, location
):
    (http_server.root / "sub").mkdir()
    (http_server.root / "sub" / "index.html").write_text("index")
    connection = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    try:
        connection.request("GET", asked)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Location")) == (301, location)


def test_a_handle_stops_cleanly_after_a_test_started_its_running_server_again(http_server_factory):
    handle = http_server_factory()
    (handle.root / "x").write_text("x")
    handle.client.start()  # the stock driver's start() drops the running runner and its sites
    assert status(handle.url + "/x") == 200
    handle.stop()
    assert handle.client.get_port() != 0


def test_a_replys_handler_is_forgotten_when_its_handle_stops(http_server_factory):
    handle = http_server_factory()
    reply = handle.respond("api", handler=lambda request: None)  # type: ignore[arg-type,return-value]
    assert reply.id in handle._recorder.handlers
    handle.stop()
    # The process's server API outlives every handle: a handler kept there would pile up.
    assert reply.id not in handle._recorder.handlers


def _fds_below(folder: Path) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the fd listdir() read them through
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [target for target in targets if target.startswith(str(folder))]


def test_a_local_server_whose_client_was_used_stops_with_its_connections_and_folders(tmp_path):
    root, own = tmp_path / "root", tmp_path / "server"
    root.mkdir()
    own.mkdir()
    (root / "x").write_text("x")
    server = LocalServer("127.0.0.1", own).start()
    handle = LoopbackServer(root, server=server).start()
    try:
        port = server.client.get_port()  # a Jumpstarter session on the server, closed at stop()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", f"{handle._url_path()}/x")
        assert connection.getresponse().read() == b"x"
    finally:
        handle.stop()
        server.stop()
    assert connection.sock is not None
    assert connection.sock.recv(1) == b""  # the server closed the kept-alive connection
    connection.close()
    assert _fds_below(tmp_path) == []


def test_a_standalone_handle_makes_its_servers_folder_only_while_it_runs(tmp_path, monkeypatch):
    temporary, root = tmp_path / "tmp", tmp_path / "root"
    temporary.mkdir()
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where gettempdir() points
    LoopbackServer(root)  # never started: nothing made
    assert list(temporary.iterdir()) == []
    with LoopbackServer(root).start() as handle:
        (folder,) = temporary.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert status(handle.url + "/absent") == 404
    assert list(temporary.iterdir()) == []
    assert [entry.status for entry in handle.requests] == [404]  # its log outlives the folder
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortsExhausted):
            LoopbackServer(root, port=PortRange(port, port)).start()
    assert list(temporary.iterdir()) == []
