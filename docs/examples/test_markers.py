import urllib.request

import pytest


# One server for every test that asks for it with these arguments; root is relative to this file.
@pytest.mark.http_server(scope="session", root="images")
def test_boot_config_from_the_repository(http_url):
    with urllib.request.urlopen(f"{http_url}/boot.cfg") as response:
        assert response.read().startswith(b"console=")


# Stays on this machine even inside `jmp shell`, e.g. to serve a file to the test itself.
@pytest.mark.http_loopback
def test_always_on_loopback(http_server):
    assert http_server.backend == "loopback"


# Needs a Jumpstarter exporter: skipped when none is reachable, unless --http-backend=exporter.
@pytest.mark.http_exporter(selector="board=rpi4")
def test_only_on_a_board(http_server):
    assert http_server.backend == "exporter"
