"""An update in three steps, in order: the manifest, then the image, then the report. A device that
skips a step gets a 500 at once, and the test fails with both sequences."""

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl plays the device")


# Replies need a server that can script them: loopback, or an exporter's RecordingHttpServer.
@pytest.mark.http_loopback
def test_the_device_updates_in_order(http_server, served_dir, tmp_path):
    (served_dir / "image.raw").write_bytes(b"image v2")
    http_server.respond("manifest.json", json={"version": 2, "image": "image.raw"}, ordered=True)
    http_server.respond("image.raw", ordered=True)  # the file itself, in its turn
    http_server.respond("report", method="POST", status=204, ordered=True)

    device = subprocess.Popen(  # the device, updating on its own
        [
            "sh",
            "-c",
            f"curl -fsS {http_server.url}/manifest.json && curl -fsS -o {tmp_path}/image.raw "
            f"{http_server.url}/image.raw && curl -fsS -X POST -d ok {http_server.url}/report",
        ],
        stdout=subprocess.DEVNULL,
    )

    http_server.wait_for_requests(timeout=60)  # every step answered
    assert device.wait(timeout=60) == 0
    http_server.assert_requested("image.raw", count=1, status=200)
    http_server.check()  # nothing unexpected, nothing left over
