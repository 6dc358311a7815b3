"""An OTA flow: the device polls a manifest, follows a redirect to the image, reports its progress
with a POST and uploads its log. curl plays the device here; on a board it is the OTA client."""

import hashlib
import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl plays the device")


def device(*args):
    return subprocess.run(["curl", "-fsS", *map(str, args)], capture_output=True, check=True, timeout=60)


# Replies need a server that can script them: loopback, or an exporter's RecordingHttpServer.
@pytest.mark.http_loopback
def test_the_device_updates_and_uploads_its_log(http_server, served_dir, tmp_path):
    (served_dir / "rootfs-v2.img").write_bytes(b"v2" * 4096)
    image = http_server.url_for("rootfs-v2.img")
    http_server.respond("ota/manifest.json", json={"version": 2, "image": http_server.url + "/ota/latest"})
    http_server.respond("ota/latest", status=302, headers={"Location": image})
    http_server.respond("ota/progress", method="POST", status=204)
    http_server.accept_uploads("logs/")

    # What the device does:
    manifest = json.loads(device(http_server.url + "/ota/manifest.json").stdout)
    device("-L", "-o", tmp_path / "rootfs.img", manifest["image"])
    device("--data-binary", "percent=100", http_server.url + "/ota/progress")
    (tmp_path / "update.log").write_text("update to v2: ok\n")
    device("-F", f"log=@{tmp_path / 'update.log'}", http_server.url + "/logs/run1")

    http_server.wait_for_request("logs/run1", status=201)
    http_server.assert_requested("ota/progress", status=204)
    (log,) = http_server.uploads
    assert log.name == "run1/update.log"
    assert log.read_bytes() == b"update to v2: ok\n"
    assert (
        hashlib.sha256((tmp_path / "rootfs.img").read_bytes()).hexdigest()
        == hashlib.sha256((served_dir / "rootfs-v2.img").read_bytes()).hexdigest()
    )
