import urllib.request

import pytest


# Loopback servers record requests; an exporter's stock HttpServer driver does not.
@pytest.mark.http_loopback
def test_the_device_fetched_the_kernel_once(http_server, served_dir):
    (served_dir / "kernel.img").write_bytes(b"kernel")
    with urllib.request.urlopen(http_server.url_for("kernel.img")) as response:  # the device
        response.read()
    request = http_server.assert_requested("kernel.img", status=200)
    assert (request.method, request.bytes_sent) == ("GET", 6)
    assert len(http_server.requests) == 1
