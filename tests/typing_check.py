"""Checked by mypy, not run: the public API used the way users write it."""

import urllib.request
from pathlib import Path

import pytest

from pytest_jumpstarter_http import HttpRequest, HttpServerFactory, HttpServerHandle, LoopbackServer


def test_flash(http_url: str) -> None:
    url: str = f"{http_url}/image.raw"
    assert url


def test_handle(http_server: HttpServerHandle, served_dir: Path, tmp_path: Path) -> None:
    (served_dir / "a").write_bytes(b"a")
    url: str = http_server.url_for("a")
    staged: str = http_server.stage(tmp_path / "b", name="dir/b")
    http_server.publish()
    port: int = http_server.port
    root: Path | None = http_server.root
    backend: str = http_server.backend
    assert all((url, staged, port, root, backend, http_server.client))


def test_request_log(http_server: HttpServerHandle) -> None:
    request = http_server.assert_requested("kernel.img", status=200)
    method: str = request.method
    sent: int = request.bytes_sent
    not_found = http_server.assert_requested("missing.img", status="4xx")
    statuses: list[int] = [entry.status for entry in http_server.requests]
    assert method == "GET"
    assert sent >= 0
    assert not_found.path
    assert all(statuses)


def test_strict(http_server: HttpServerHandle) -> None:
    twice = http_server.assert_requested("kernel.img", count=2)
    never = http_server.assert_requested("typo.img", count=0)
    first = http_server.respond("manifest.json", json={"v": 1}, ordered=True)
    kernel, initrd = http_server.wait_for_requests("kernel.img", "initrd.img", timeout=5.0)
    everything: list[HttpRequest] = http_server.wait_for_requests()
    http_server.check()
    assert twice is None or twice.status == 200
    assert never is None
    assert first.spec.ordered
    assert kernel.name != initrd.name
    assert everything


async def test_strict_async(http_server: HttpServerHandle) -> None:
    requests: list[HttpRequest] = await http_server.wait_for_requests_async("a", "b")
    assert requests


def test_factory(http_server_factory: HttpServerFactory, tmp_path: Path) -> None:
    server: HttpServerHandle = http_server_factory(tmp_path)
    other = http_server_factory(backend="loopback")
    leased = http_server_factory(backend="exporter", selector="board=rpi4", driver="flasher.http")
    assert server.url != other.url != leased.url


def standalone(root: Path) -> bytes:
    with (
        LoopbackServer(root, host="127.0.0.1").start() as server,
        urllib.request.urlopen(server.url_for("image.raw")) as response,
    ):
        body: bytes = response.read()
        return body


@pytest.mark.http_server(scope="session", root="images")
def test_marked(http_url: str) -> None:
    assert http_url


@pytest.mark.http_loopback
@pytest.mark.http_exporter(selector="board=rpi4", driver="http")
def test_backend_markers(http_server: HttpServerHandle) -> None:
    assert http_server.url


@pytest.mark.http_server(tls="mutual")
def test_https(http_server: HttpServerHandle, http_server_factory: HttpServerFactory) -> None:
    ca: Path | None = http_server.ca_cert
    client: Path | None = http_server.client_cert
    plain = http_server_factory(tls=False)
    secure = http_server_factory(tls=True)
    mutual = http_server_factory(tls="mutual")
    assert ca
    assert client
    assert plain.scheme == "http"
    assert secure.scheme == mutual.scheme == "https"
