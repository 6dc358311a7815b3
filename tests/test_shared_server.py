"""A RecordingHttpServer shared by runs answers a run's calls over the wire only inside that run's
own namespace, and serves the plugin's folders through namespaces only (issue 17, review).

The calls here are the driver's exported methods, as a client reaches them over Jumpstarter's
wire; the server is a real one on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from http_helpers import status

from pytest_jumpstarter_http.deviceapi import ReplySpec
from pytest_jumpstarter_http.loopback import LocalServer
from pytest_jumpstarter_http.namespaces import NamespaceError
from pytest_jumpstarter_http.records import RUNS, FaultSpec


@pytest.fixture
def server(tmp_path: Path):
    """The loopback's server, whose own folder is ``tmp_path``, as an exporter's with that root."""
    with LocalServer("127.0.0.1", tmp_path) as running:
        yield running


@pytest.fixture
def owner(server):
    return server.driver.namespaces.add_owner(f"{RUNS}/run-a", keep=False)


def test_a_fault_sent_without_a_namespace_is_refused(server):
    spec = FaultSpec("image.raw", status=503).under(("",))
    with pytest.raises(NamespaceError, match="no namespace None"):
        server.driver.inject_fault(spec.as_dict(), None)


def test_a_fault_aimed_below_another_namespace_is_refused(server, owner):
    mine = server.driver.open_namespace(owner.id, [f"{RUNS}/run-a"])
    theirs = server.driver.open_namespace(owner.id, [f"{RUNS}/run-a"])
    spec = FaultSpec("*", status=503).under((f"/pytest-jumpstarter-http/ns/{theirs}",))
    with pytest.raises(NamespaceError, match="is not below the namespace's URL"):
        server.driver.inject_fault(spec.as_dict(), mine)
    reply = ReplySpec("a.raw", status=500).under(f"/pytest-jumpstarter-http/ns/{theirs}")
    with pytest.raises(NamespaceError, match="is not below the namespace's URL"):
        server.driver.add_reply(reply.as_dict(), mine)


def test_a_fault_of_an_ended_namespace_is_refused(server, owner):
    ended = server.driver.open_namespace(owner.id, [f"{RUNS}/run-a"])
    server.driver.close_namespace(ended)
    spec = FaultSpec("a.raw", status=503).under((f"/pytest-jumpstarter-http/ns/{ended}",))
    with pytest.raises(NamespaceError, match="ended or never was"):
        server.driver.inject_fault(spec.as_dict(), ended)


@pytest.mark.parametrize("prefix", ["", "/", "/pytest-jumpstarter-http/", "/pytest-jumpstarter-http/ns/"])
def test_no_call_over_the_wire_reads_requests_outside_one_namespace(server, prefix):
    with pytest.raises(NamespaceError, match="below no namespace's URL"):
        server.driver.get_requests(0, prefix)
    with pytest.raises(NamespaceError, match="below no namespace's URL"):
        server.driver.get_in_flight(prefix)


@pytest.mark.parametrize(
    "path",
    [
        "pytest-jumpstarter-http/runs/run-a/staged.bin",
        "pytest-jumpstarter-http//runs/run-a/staged.bin",
        "pytest-jumpstarter-http/./objects/abc",
    ],
)
def test_the_plugins_folders_are_not_served_at_their_own_path(server, tmp_path, path):
    staged = tmp_path / "pytest-jumpstarter-http" / "runs" / "run-a" / "staged.bin"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"a run's file")
    (tmp_path / "pytest-jumpstarter-http" / "objects").mkdir()
    (tmp_path / "pytest-jumpstarter-http" / "objects" / "abc").write_bytes(b"content")
    (tmp_path / "beside.bin").write_bytes(b"served")
    url = f"http://127.0.0.1:{server.driver.get_port()}"
    assert status(f"{url}/beside.bin") == 200
    assert status(f"{url}/{path}") == 404
