"""The loopback is the exporter's server run in this process (issue 25): every handle of a process
is a namespace of one RecordingHttpServer, which a port of the handle's own reaches."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from http_helpers import status


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


def test_a_folder_asked_without_its_slash_is_redirected_to_the_url_the_device_used(http_server):
    (http_server.root / "sub").mkdir()
    (http_server.root / "sub" / "index.html").write_text("index")
    connection = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    try:
        connection.request("GET", "/sub?v=1")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Location")) == (301, "/sub/?v=1")
