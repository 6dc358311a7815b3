"""A server that is busy twice: 503 for the first two requests, then the file. Does the device
retry, and how often?"""

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl plays the device")


# Replies need a server that can script them: loopback, or an exporter's RecordingHttpServer.
@pytest.mark.http_loopback
def test_the_device_retries_until_the_server_serves(http_server, served_dir, tmp_path):
    (served_dir / "firmware.bin").write_bytes(b"fw")
    url = http_server.url_for("firmware.bin")
    busy = http_server.respond("firmware.bin", status=503, headers={"Retry-After": "1"}, times=2)

    subprocess.run(
        ["curl", "-fsS", "--retry", "3", "-o", tmp_path / "firmware.bin", url], check=True, timeout=60
    )

    assert busy.hits == 2
    assert [r.status for r in http_server.requests] == [503, 503, 200]
    assert (tmp_path / "firmware.bin").read_bytes() == b"fw"
