"""UEFI HTTP boot: the firmware follows a 302 to the boot image and picks its type from
``Content-Type: application/efi``. curl plays the firmware here."""

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl plays the firmware")


# Replies need a server that can script them: loopback, or an exporter's RecordingHttpServer.
@pytest.mark.http_loopback
def test_the_firmware_gets_an_efi_image(http_server, served_dir, tmp_path):
    (served_dir / "EFI").mkdir()
    (served_dir / "EFI" / "bootaa64.efi").write_bytes(b"MZ" + bytes(1022))
    image = http_server.url_for("EFI/bootaa64.efi")
    http_server.respond("boot", status=302, headers={"Location": image})
    http_server.respond("EFI/bootaa64.efi", headers={"Content-Type": "application/efi"})

    firmware = subprocess.run(
        ["curl", "-fsSL", "-o", tmp_path / "boot.efi", "-w", "%{content_type}", http_server.url + "/boot"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert firmware.stdout == "application/efi"
    assert (tmp_path / "boot.efi").read_bytes()[:2] == b"MZ"
    assert [(r.name, r.status) for r in http_server.requests] == [("boot", 302), ("EFI/bootaa64.efi", 200)]
